"""Publish position estimates to the autopilot at a steady rate, independent of the camera.

Each message is a fresh estimate at its send time (the navigator's filter, propagated), never a
stale fix re-sent as new. Publishing stops as soon as the newest accepted measurement is older
than `max_age_s`: the autopilot then times the source out (ArduPilot after 4 s) instead of
fusing a dead-reckoned guess.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from typing import Callable, Optional

from skyfix.contracts import Fix
from skyfix.errors import SkyfixError
from skyfix.firmware_bridge import messages
from skyfix.geo import LocalFrame

log = logging.getLogger("skyfix.publish")

PROTOCOLS = ("ardupilot", "ardupilot-extnav", "px4")


class FixPublisher:
    """A thread calling `estimate(now_mono_s) -> (Fix, measurement_age_s) | None` at rate_hz."""

    def __init__(self, bridge, estimate: Callable[[float], Optional[tuple]], protocol: str = "ardupilot",
                 rate_hz: float = 10.0, max_age_s: float = 1.5, vert_accuracy_m: float = 5.0,
                 on_sent: Optional[Callable[[Fix, float], None]] = None, send_velocity: bool = False,
                 send_heading: bool = False, max_speed_accuracy_m_s: float = 1.0, px4_sensor_id: int = 1):
        if protocol not in PROTOCOLS:
            raise SkyfixError(f"protocol must be one of {PROTOCOLS}, got '{protocol}'")
        if not 0 < rate_hz <= 50:
            raise SkyfixError(f"publish rate {rate_hz} Hz out of range (ArduPilot needs >= 5 Hz)")
        self.bridge, self.estimate, self.protocol = bridge, estimate, protocol
        self.rate_hz, self.max_age_s, self.vert_accuracy_m = rate_hz, max_age_s, vert_accuracy_m
        self.on_sent = on_sent  # e.g. a simulator scoring what was sent against the truth
        self.send_velocity, self.send_heading = send_velocity, send_heading
        self.max_speed_accuracy_m_s = max_speed_accuracy_m_s
        if not 1 <= px4_sensor_id <= 255:
            raise SkyfixError(f"bridge.px4_sensor_id must be 1-255 (EKF2_AGPn_ID), got {px4_sensor_id}")
        self.px4_sensor_id = px4_sensor_id
        self.sent = 0
        self.withheld = 0
        self.withheld_no_origin = 0  # ExternalNav: held back until the EKF origin is known
        self.withheld_speed = 0  # of withheld: a velocity claim the autopilot could not use
        self.send_ms: deque = deque(maxlen=10_000)  # encode + send time of recent messages
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def build(self, mav, fix: Fix, now_mono_s: float):
        """Encode one estimate for the configured autopilot."""
        unix_us = self.bridge.telemetry.unix_us(now_mono_s)
        if self.protocol == "ardupilot":
            return messages.gps_input(mav, fix, unix_us, self.vert_accuracy_m)
        if self.protocol == "ardupilot-extnav":
            return self._extnav(mav, fix, now_mono_s)
        processing_us = int(now_mono_s * 1e6) - fix.t_capture_us
        return messages.global_position_sensor(
            mav, fix, unix_us, processing_us, self.vert_accuracy_m,
            self.bridge.target_system, self.bridge.target_component, self.px4_sensor_id)

    def _extnav(self, mav, fix: Fix, now_mono_s: float):
        """VISION_POSITION_ESTIMATE relative to the EKF origin, stamped with the FC's boot time,
        with the autopilot's own attitude now (ExternalNav needs angles; it does not use them
        for the yaw unless EK3_SRCn_YAW says so)."""
        tel = self.bridge.telemetry
        att = tel.at(now_mono_s, max_age_s=1.0)
        attitude = (att.roll_rad or 0.0, att.pitch_rad or 0.0, att.yaw_rad or 0.0)
        return messages.vision_position_estimate(mav, fix, LocalFrame(*tel.ekf_origin), att.t_boot_us, attitude)

    def publish_once(self, now_mono_s: float) -> bool:
        est = self.estimate(now_mono_s)
        if est is None or est[1] > self.max_age_s:
            self.withheld += 1
            return False
        if self.protocol == "ardupilot-extnav" and self.bridge.telemetry.ekf_origin is None:
            self.withheld += 1
            self.withheld_no_origin += 1
            return False
        fix = self._outgoing(est[0])
        if (self.send_velocity and self.protocol == "ardupilot"
                and not (fix.speed_accuracy_m_s is not None and fix.speed_accuracy_m_s <= self.max_speed_accuracy_m_s)):
            # Sent, ArduPilot's EKF3 would latch its GPS check failed for seconds (BridgeConfig).
            self.withheld += 1
            self.withheld_speed += 1
            return False
        t0 = time.perf_counter()
        ok = self.bridge.send(lambda mav: self.build(mav, fix, now_mono_s))
        if ok:
            self.sent += 1
            self.send_ms.append((time.perf_counter() - t0) * 1e3)
            if self.on_sent is not None:
                self.on_sent(fix, now_mono_s)
        return ok

    def _outgoing(self, fix: Fix) -> Fix:
        """The fix as sent: without the fields this link is configured not to claim."""
        if not self.send_velocity:
            fix = dataclasses.replace(fix, vel_north_m_s=None, vel_east_m_s=None, speed_accuracy_m_s=None)
        if not self.send_heading:
            fix = dataclasses.replace(fix, yaw_rad=None)
        return fix

    @classmethod
    def from_config(cls, bridge, estimate, cfg, **kwargs) -> "FixPublisher":
        """From a BridgeConfig (protocol, rate, age limit, accuracy, velocity and heading)."""
        return cls(bridge, estimate, cfg.protocol, cfg.rate_hz, cfg.max_fix_age_s, cfg.vert_accuracy_m,
                   send_velocity=cfg.send_velocity, send_heading=cfg.send_heading,
                   max_speed_accuracy_m_s=cfg.max_speed_accuracy_m_s, px4_sensor_id=cfg.px4_sensor_id, **kwargs)

    def _loop(self) -> None:
        period = 1.0 / self.rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.publish_once(time.monotonic())
            except Exception:  # never let one bad estimate kill the publishing thread
                log.exception("publishing failed")
            next_t += period
            # Fixed schedule (no drift); if we fell behind, skip ahead rather than burst.
            next_t = max(next_t, time.monotonic())
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def start(self) -> "FixPublisher":
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fix-publisher")
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
