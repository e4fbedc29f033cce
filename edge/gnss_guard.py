"""skyfix beside the autopilot's GNSS: the watch (edge/gnss.py) fed from the link, the pilot told,
and the autopilot taken over from a GNSS that is lost or lies.

A thread at `gnss.rate_hz`:
- the receiver's new reports (GPS_RAW_INT or GPS2_RAW, TelemetryStore) go into the watch;
- skyfix's own estimate (the navigator's `estimate_at`) is checked against them, only while it
  is confident (published-quality and no older than `gnss.max_fix_age_s` since its last fix);
- a declaration is logged, sent to the ground station as STATUSTEXT (repeated every
  `gnss.statustext_period_s` while the GNSS is not healthy), kept with its time for the JSON,
  and, with `gnss.take_over`, the autopilot is switched to skyfix:
    ArduPilot: MAV_CMD_SET_EKF_SOURCE_SET (42007) to `gnss.takeover_source_set` (EK3_SRC2_*:
               ExternalNav, which skyfix feeds with VISION_POSITION_ESTIMATE), repeated until
               COMMAND_ACK accepts it;
    PX4:       PARAM_SET EKF2_GPS_CTRL 0 (EKF2 stops fusing the GNSS; skyfix's
               GLOBAL_POSITION_SENSOR, fused beside it all along, carries on), repeated until
               PARAM_VALUE echoes it.
  The switch waits for skyfix's confident track: handing the EKF a source with no data helps nobody.
- Back to the GNSS only with `gnss.switch_back_after_s` set, once the watch has seen it agree
  that long; by default never (the pilot decides).
"""
from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque
from typing import Callable, Optional

import numpy as np

from skyfix.edge.gnss import CONTRADICTED, HEALTHY, LOST, Declaration, GnssSample, GnssWatch, WatchConfig
from skyfix.firmware_bridge.messages import mavlink_module

log = logging.getLogger("skyfix.gnss")

MAV_CMD_SET_EKF_SOURCE_SET = 42007   # ArduPilot's dialect (ardupilotmega.xml)
SEVERITY = {CONTRADICTED: 2, LOST: 4, HEALTHY: 5}   # MAV_SEVERITY CRITICAL, WARNING, NOTICE
STATUSTEXT_MAX = 50
TRACE_ROWS = 20_000  # about an hour of receiver reports at 5 Hz


def watch_config(cfg) -> WatchConfig:
    """The watch's thresholds from a GnssConfig."""
    return WatchConfig(k_sigma=cfg.k_sigma, min_offset_m=cfg.min_offset_m, window_s=cfg.window_s,
                       min_checks=cfg.min_checks, jump_window_s=cfg.jump_window_s, lost_after_s=cfg.lost_after_s, lost_h_acc_m=cfg.lost_h_acc_m,
                       min_satellites=cfg.min_satellites, silence_s=cfg.silence_s,
                       agree_s=cfg.switch_back_after_s or 10.0)


def statustext(d: Declaration, switched: bool) -> str:
    """The ground station's line (at most 50 characters)."""
    if d.state == CONTRADICTED:
        text = f"skyfix: GNSS SPOOFED? {d.kind} {d.offset_m or 0:.0f}m off"
    elif d.state == LOST:
        text = f"skyfix: GNSS LOST ({d.kind})"
    else:
        text = f"skyfix: GNSS {d.kind}"
    if switched:  # healthy again but not given back: the pilot decides (gnss.switch_back_after_s)
        text += "; nav on skyfix" if d.state != HEALTHY else "; nav still skyfix"
    return text[:STATUSTEXT_MAX]


class GnssGuard:
    """bridge: MavlinkBridge (watch_gnss() is called); estimate(now_mono_s) -> (Fix, age_s) | None;
    frame: the pack's geo.LocalFrame; cfg: GnssConfig; autopilot: "ardupilot" | "px4"."""

    def __init__(self, bridge, estimate: Callable[[float], Optional[tuple]], frame, cfg, autopilot: str,
                 max_accuracy_m: float = 10.0, hint: Optional[Callable] = None):
        self.bridge, self.estimate, self.frame, self.cfg = bridge.watch_gnss(), estimate, frame, cfg
        self.autopilot, self.max_accuracy_m = autopilot, max_accuracy_m
        self.hint = hint  # TileSearch.hint_position: where a healthy GNSS puts the vehicle (a search hint)
        self.watch = GnssWatch(watch_config(cfg))
        self.on_skyfix = False            # the autopilot was switched to skyfix (and acknowledged)
        self.switch_pending: Optional[str] = None  # "to skyfix" / "to gnss" until acknowledged
        self.events: list[dict] = []      # (t_mono_s, what) of switches and messages, for the JSON
        self.statustexts_sent = 0
        # What the watch was given, for replaying it (edge.gnss.replay_trace): receiver samples as
        # (t, east, north, h_acc, fix_type, satellites), skyfix's checks as (t, east, north, accuracy).
        self.trace: dict = {"gnss": deque(maxlen=TRACE_ROWS), "skyfix": deque(maxlen=TRACE_ROWS)}
        self.autopilot_vs_skyfix_m: Optional[float] = None  # the autopilot's fused position - skyfix's, now
        self._last_report_s = 0.0
        self._last_text_s = -1e9
        self._text_due = False            # a new verdict or switch the pilot has not been told of
        self._last_declaration: Optional[Declaration] = None
        self._command_sent_s = -1e9
        self._pending_since_s = -1e9
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- one step -----------------------------------------------------------------------------
    def step(self, now_s: float) -> None:
        for report in self.bridge.telemetry.gnss_since(self.cfg.receiver, self._last_report_s):
            self._last_report_s = report.t_mono_s
            sample = self._sample(report)
            self.trace["gnss"].append((round(sample.t_s, 3), _r(sample.east_m), _r(sample.north_m), sample.h_acc_m,
                                       sample.fix_type, sample.satellites))
            self._handle(self.watch.offer_gnss(sample))
            self._offer_hint(sample)
        self._handle(self.watch.silence(now_s))
        est = self.estimate(now_s)
        if est is not None and est[1] <= self.cfg.max_fix_age_s and est[0].horiz_accuracy_m <= self.max_accuracy_m:
            e, n, _ = self.frame.to_enu(est[0].lat_deg, est[0].lon_deg)
            self.trace["skyfix"].append((round(now_s, 3), _r(e), _r(n), round(est[0].horiz_accuracy_m, 2)))
            self._handle(self.watch.check(now_s, float(e), float(n), est[0].horiz_accuracy_m))
            self._compare_autopilot(now_s, float(e), float(n))
        self._act(now_s, est is not None)

    def _compare_autopilot(self, now_s: float, east_m: float, north_m: float) -> None:
        """How far the autopilot's own fused position (GLOBAL_POSITION_INT) is from skyfix's: what
        the GNSS has done to the autopilot, said with every verdict."""
        gpi = self.bridge.telemetry.get("GLOBAL_POSITION_INT", 1.0, now_s)
        if gpi is None or not (gpi.lat or gpi.lon):
            return
        e, n, _ = self.frame.to_enu(gpi.lat / 1e7, gpi.lon / 1e7)
        self.autopilot_vs_skyfix_m = float(np.hypot(float(e) - east_m, float(n) - north_m))

    def _offer_hint(self, s: GnssSample) -> None:
        """A healthy GNSS's position as the navigator's search hint (never while in doubt)."""
        if self.hint is None or self.watch.state != HEALTHY or s.east_m is None or self.watch.unusable(s):
            return
        h_acc = s.h_acc_m if s.h_acc_m is not None else self.watch.cfg.default_h_acc_m
        self.hint(s.t_s, s.east_m, s.north_m, 3.0 * h_acc + 30.0)

    def _sample(self, r) -> GnssSample:
        e = n = None
        if r.lat_deg is not None:
            e, n, _ = self.frame.to_enu(r.lat_deg, r.lon_deg)
            e, n = float(e), float(n)
        return GnssSample(r.t_mono_s, e, n, r.h_acc_m, r.fix_type, r.satellites)

    def _handle(self, d: Optional[Declaration]) -> None:
        if d is None:
            return
        self._last_declaration = d
        level = logging.INFO if d.state == HEALTHY else logging.WARNING
        if self.autopilot_vs_skyfix_m is not None:
            d.evidence += f"; the autopilot's own position {self.autopilot_vs_skyfix_m:.0f} m from skyfix's"
        log.log(level, "GNSS %s: %s", d.state, d.evidence)
        self._text_due = True

    def _act(self, now_s: float, skyfix_has_track: bool) -> None:
        """Switch when the verdict and skyfix's track allow; confirm; tell the pilot."""
        state = self.watch.state
        if self.cfg.take_over and state in (LOST, CONTRADICTED) and not self.on_skyfix and skyfix_has_track:
            self._switch(now_s, "to skyfix")
        elif (self.on_skyfix and state == HEALTHY and self.cfg.switch_back_after_s is not None):
            self._switch(now_s, "to gnss")
        self._confirm(now_s)
        d = self._last_declaration
        repeat = state != HEALTHY and now_s - self._last_text_s >= self.cfg.statustext_period_s
        if d is not None and (self._text_due or repeat):
            self._send_text(now_s, statustext(d, self.on_skyfix))

    # ---- talking to the autopilot -------------------------------------------------------------
    def _switch(self, now_s: float, which: str) -> None:
        if now_s - self._command_sent_s < 1.0:
            return  # once a second until acknowledged
        if self.switch_pending != which:
            self._pending_since_s = now_s  # acknowledgements older than this answer something else
        self.switch_pending, self._command_sent_s = which, now_s
        to_skyfix = which == "to skyfix"
        m, b = mavlink_module(), self.bridge
        if self.autopilot == "ardupilot":
            source_set = self.cfg.takeover_source_set if to_skyfix else 1
            b.send(lambda mav: mav.command_long_encode(b.target_system, b.target_component,
                                                       MAV_CMD_SET_EKF_SOURCE_SET, 0, source_set, 0, 0, 0, 0, 0, 0))
        else:
            value = _int_as_float(0 if to_skyfix else self.cfg.px4_gps_ctrl_restore)  # PX4 encodes bytewise
            b.send(lambda mav: mav.param_set_encode(b.target_system, b.target_component, b"EKF2_GPS_CTRL",
                                                    value, m.MAV_PARAM_TYPE_INT32))
        self._event(now_s, f"asked the autopilot to switch {which}")

    def _confirm(self, now_s: float) -> None:
        if self.switch_pending is None:
            return
        tel, since_s = self.bridge.telemetry, now_s - self._pending_since_s
        to_skyfix = self.switch_pending == "to skyfix"
        if self.autopilot == "ardupilot":
            ack = tel.get("COMMAND_ACK", since_s, now_s)
            done = ack is not None and ack.command == MAV_CMD_SET_EKF_SOURCE_SET and ack.result == 0
        else:
            pv = tel.get("PARAM_VALUE", since_s, now_s)
            want = 0 if to_skyfix else self.cfg.px4_gps_ctrl_restore
            done = pv is not None and _param_id(pv) == "EKF2_GPS_CTRL" and int(_param_int(pv)) == want
        if done:
            self.on_skyfix, self.switch_pending = to_skyfix, None
            self._event(now_s, f"switched {'to skyfix' if to_skyfix else 'back to the GNSS'} (acknowledged)")
            self._text_due = True

    def _send_text(self, now_s: float, text: str) -> None:
        severity = SEVERITY[self.watch.state]
        if self.bridge.send(lambda mav: mav.statustext_encode(severity, text.encode())):
            self.statustexts_sent += 1
            self._last_text_s, self._text_due = now_s, False
            self._event(now_s, f"STATUSTEXT {text!r}")

    def _event(self, now_s: float, what: str) -> None:
        self.events.append({"t_mono_s": now_s, "what": what})
        log.warning("%s", what)

    # ---- thread and summary -------------------------------------------------------------------
    def start(self) -> "GnssGuard":
        self._thread = threading.Thread(target=self._loop, daemon=True, name="gnss-guard")
        self._thread.start()
        return self

    def _loop(self) -> None:
        period = 1.0 / self.cfg.rate_hz
        while not self._stop.wait(period):
            try:
                self.step(time.monotonic())
            except Exception:  # the watch must not die on one bad value
                log.exception("GNSS watch step failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def summary(self, t0_s: float = 0.0) -> dict:
        """For the fly/sim/SITL JSON: the verdict, every declaration and event with its time
        (s from t0_s), and the counters."""
        w = self.watch
        h_acc = [row[3] for row in self.trace["gnss"] if row[3] is not None]
        return {"state": w.state, "on_skyfix": self.on_skyfix, "checks": w.checks_made,
                "declarations": [d.as_dict(t0_s) for d in w.declarations],
                "events": [{"t_s": round(e["t_mono_s"] - t0_s, 2), "what": e["what"]} for e in self.events],
                "statustexts": self.statustexts_sent,
                "receiver_h_acc_m_median": round(float(np.median(h_acc)), 2) if h_acc else None,
                "last_offset_m": None if w.last_check is None else round(w.last_check.offset_m, 1),
                "autopilot_vs_skyfix_m": None if self.autopilot_vs_skyfix_m is None else round(self.autopilot_vs_skyfix_m, 1),
                "trace": {"t0_s": t0_s, "gnss": list(self.trace["gnss"]), "skyfix": list(self.trace["skyfix"])}}


def _r(v) -> Optional[float]:
    return None if v is None else round(float(v), 2)


def _param_id(pv) -> str:
    pid = pv.param_id
    return (pid.decode(errors="replace") if isinstance(pid, bytes) else str(pid)).rstrip("\x00")


def _int_as_float(value: int) -> float:
    """An INT32 parameter's bytes in PARAM_SET's float field (PX4's bytewise encoding)."""
    return struct.unpack("<f", struct.pack("<i", int(value)))[0]


def _param_int(pv) -> float:
    """PARAM_VALUE of an INT32 parameter: PX4 sends the integer's bytes in the float field."""
    if pv.param_type == mavlink_module().MAV_PARAM_TYPE_INT32:
        return struct.unpack("<i", struct.pack("<f", pv.param_value))[0]
    return pv.param_value
