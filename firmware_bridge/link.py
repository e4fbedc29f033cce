"""A MAVLink link to the flight controller (pymavlink): telemetry in, messages out, heartbeat,
link health and reconnection.

Connection strings are pymavlink's: `udpin:0.0.0.0:14550`, `udpout:192.168.1.2:14550`,
`tcp:127.0.0.1:5760`, `/dev/ttyTHS1:921600` (serial), or a recorded `flight.tlog` (replay).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from skyfix.errors import SkyfixError, require
from skyfix.firmware_bridge.messages import mavlink_module
from skyfix.firmware_bridge.telemetry import TelemetryStore

log = logging.getLogger("skyfix.link")

TELEMETRY_TYPES = ["ATTITUDE", "GLOBAL_POSITION_INT", "ALTITUDE", "DISTANCE_SENSOR", "SYSTEM_TIME",
                   "HEARTBEAT"]
# What skyfix asks the autopilot to stream on this link (SET_MESSAGE_INTERVAL), in Hz. ATTITUDE
# fast, for interpolation at the frames' capture times; the rest as needed. Required ones that
# do not arrive are requested again and reported; optional ones exist only on some vehicles.
STREAM_RATES_HZ = {"ATTITUDE": 25.0, "GLOBAL_POSITION_INT": 10.0, "SYSTEM_TIME": 1.0,
                   "DISTANCE_SENSOR": 10.0, "ALTITUDE": 10.0}
REQUIRED_STREAMS = ("ATTITUDE", "GLOBAL_POSITION_INT", "SYSTEM_TIME")


class MavlinkBridge:
    """Owns the connection: a receive thread, a 1 Hz heartbeat, and reconnection after silence."""

    def __init__(self, connection: str, source_system: int = 1, link_timeout_s: float = 3.0,
                 heartbeat_hz: float = 1.0, target_system: int = 1, target_component: int = 1):
        self.connection, self.source_system = connection, source_system
        self.link_timeout_s, self.heartbeat_hz = link_timeout_s, heartbeat_hz
        self.target_system, self.target_component = target_system, target_component
        self.telemetry = TelemetryStore()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.conn = None
        self.reconnects = 0
        self.sent = 0
        self.bad_packets = 0
        self.stream_requests = 0
        self._stream_warned: set = set()
        self._requests: dict = {}  # stream type -> requests sent
        self._opened_s = 0.0

    # ---- lifecycle ----------------------------------------------------------------------------
    def _open(self):
        mavutil = require("pymavlink.mavutil")
        m = mavlink_module()
        try:
            self.conn = mavutil.mavlink_connection(self.connection, source_system=self.source_system,
                                                   source_component=m.MAV_COMP_ID_ONBOARD_COMPUTER,
                                                   dialect="common", autoreconnect=True)
        except Exception as exc:  # serial/socket errors come in many types
            raise SkyfixError(f"cannot open MAVLink link '{self.connection}': {exc}") from exc
        self._opened_s = time.monotonic()

    def start(self) -> "MavlinkBridge":
        self._open()
        for target in (self._rx_loop, self._heartbeat_loop):
            t = threading.Thread(target=target, daemon=True, name=f"mav-{target.__name__}")
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        if self.conn is not None:
            self.conn.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ---- health -------------------------------------------------------------------------------
    def link_ok(self, now_mono_s: Optional[float] = None) -> bool:
        """True when something arrived within link_timeout_s."""
        last = self.telemetry.last_receive_s()
        now = time.monotonic() if now_mono_s is None else now_mono_s
        return last is not None and now - last <= self.link_timeout_s

    def wait_for_heartbeat(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.telemetry.get("HEARTBEAT", self.link_timeout_s, time.monotonic()) is not None:
                return True
            time.sleep(0.05)
        return False

    # ---- threads ------------------------------------------------------------------------------
    def _rx_loop(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.conn.recv_match(type=TELEMETRY_TYPES + ["BAD_DATA"], blocking=True, timeout=0.2)
            except Exception as exc:  # a broken socket or port: reconnect below
                log.warning("MAVLink receive failed (%s); reconnecting", exc)
                msg = None
                self._reconnect()
            now = time.monotonic()
            if msg is not None:
                if msg.get_type() == "BAD_DATA":
                    self.bad_packets += 1  # broken packets are counted and dropped
                else:
                    self.telemetry.update(msg, now)
            last = self.telemetry.last_receive_s() or self._opened_s
            if now - max(last, self._opened_s) > self.link_timeout_s:
                log.warning("MAVLink link silent for %.1f s; reconnecting", now - last)
                self._reconnect()

    def _reconnect(self) -> None:
        with self._send_lock:
            try:
                self.conn.close()
            except Exception:  # closing a dead link may fail; it is being replaced anyway
                pass
            try:
                self._open()
                self.reconnects += 1
            except SkyfixError as exc:
                log.warning("%s", exc)
                self._stop.wait(1.0)

    def _heartbeat_loop(self) -> None:
        m = mavlink_module()
        while not self._stop.wait(1.0 / self.heartbeat_hz):
            self.send(lambda mav: mav.heartbeat_encode(m.MAV_TYPE_ONBOARD_CONTROLLER,
                                                        m.MAV_AUTOPILOT_INVALID, 0, 0, m.MAV_STATE_ACTIVE))
            self.request_missing_streams(time.monotonic())

    def missing_streams(self, now_mono_s: float) -> list[str]:
        """Stream types not received within two of their periods plus a second."""
        return [kind for kind, hz in STREAM_RATES_HZ.items()
                if self.telemetry.get(kind, 2.0 / hz + 1.0, now_mono_s) is None]

    def request_missing_streams(self, now_mono_s: float) -> list[str]:
        """Once the autopilot is heard, ask for every stream that is not arriving
        (MAV_CMD_SET_MESSAGE_INTERVAL on this link); warn once per required stream that still
        does not come after a few requests. Returns the types requested."""
        if self.telemetry.get("HEARTBEAT", self.link_timeout_s, now_mono_s) is None:
            return []
        m = mavlink_module()
        # Optional streams are asked for a couple of times only: an autopilot without them
        # (ArduPilot has no ALTITUDE; DISTANCE_SENSOR needs a rangefinder) says so each time.
        missing = [k for k in self.missing_streams(now_mono_s)
                   if k in REQUIRED_STREAMS or self._requests.get(k, 0) < 2]
        for kind in missing:
            self._requests[kind] = self._requests.get(kind, 0) + 1
            msg_id = getattr(m, f"MAVLINK_MSG_ID_{kind}")
            interval_us = 1e6 / STREAM_RATES_HZ[kind]
            self.send(lambda mav: mav.command_long_encode(
                self.target_system, self.target_component, m.MAV_CMD_SET_MESSAGE_INTERVAL, 0,
                msg_id, interval_us, 0, 0, 0, 0, 0))
            self.stream_requests += 1
        late = [k for k in missing if k in REQUIRED_STREAMS and k not in self._stream_warned]
        if late and now_mono_s - self._opened_s > 10.0:
            self._stream_warned.update(late)
            log.warning("the autopilot does not stream %s on '%s' although asked: set its stream "
                        "rates for this port (ArduPilot: MAVn_EXTRA1 / MAVn_POSITION / MAVn_EXTRA3, "
                        "SRn_* on older firmware)", ", ".join(late), self.connection)
        return missing

    def send(self, build) -> bool:
        """Send `build(mav)` (a function returning an encoded message); False if the link failed."""
        with self._send_lock:
            try:
                self.conn.mav.send(build(self.conn.mav))
                self.sent += 1
                return True
            except Exception as exc:  # e.g. udpin before the peer spoke, or a closed serial port
                log.debug("MAVLink send failed: %s", exc)
                return False
