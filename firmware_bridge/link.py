"""A MAVLink link to the flight controller (pymavlink): telemetry in, messages out, heartbeat,
link health and reconnection.

Connection strings are pymavlink's: `udpin:0.0.0.0:14550`, `udpout:192.168.1.2:14550`,
`tcp:127.0.0.1:5760`, `/dev/ttyTHS1:921600` (serial), or a recorded `flight.tlog` (replay).
"""
from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Optional

from skyfix.errors import SkyfixError, require
from skyfix.firmware_bridge.messages import mavlink_module
from skyfix.firmware_bridge.rebind import RebindCheck
from skyfix.firmware_bridge.telemetry import TelemetryStore

log = logging.getLogger("skyfix.link")

TELEMETRY_TYPES = ["ATTITUDE", "GLOBAL_POSITION_INT", "ALTITUDE", "DISTANCE_SENSOR", "SYSTEM_TIME",
                   "HEARTBEAT", "GPS_RAW_INT", "GPS2_RAW", "GPS_GLOBAL_ORIGIN", "COMMAND_ACK", "PARAM_VALUE"]
# What skyfix asks the autopilot to stream on this link (SET_MESSAGE_INTERVAL), in Hz. ATTITUDE
# fast, for interpolation at the frames' capture times; the rest as needed. Required ones that
# do not arrive are requested again and reported; optional ones exist only on some vehicles.
STREAM_RATES_HZ = {"ATTITUDE": 25.0, "GLOBAL_POSITION_INT": 10.0, "SYSTEM_TIME": 1.0,
                   "DISTANCE_SENSOR": 10.0, "ALTITUDE": 10.0}
REQUIRED_STREAMS = ("ATTITUDE", "GLOBAL_POSITION_INT", "SYSTEM_TIME")
# Beside a GNSS (MavlinkBridge.watch_gnss): the receivers' own reports for the watch.
GNSS_STREAM_RATES_HZ = {"GPS_RAW_INT": 5.0, "GPS2_RAW": 5.0}


# HEARTBEAT types that are never the autopilot (ground stations, companions, peripherals).
NOT_AUTOPILOT_TYPES = ("GCS", "ONBOARD_CONTROLLER", "GIMBAL", "ADSB", "CAMERA", "CHARGING_STATION",
                       "FLARM", "SERVO", "ODID", "BATTERY", "PARACHUTE", "LOG", "OSD", "IMU", "GPS",
                       "WINCH", "GENERIC", "ANTENNA_TRACKER")


class AutopilotBinding:
    """The one system/component skyfix takes telemetry from: configured, or learned from the
    first HEARTBEAT that comes from an autopilot (an autopilot field other than INVALID and a
    vehicle type, not a ground station or a peripheral). Until then nothing else is taken."""

    def __init__(self, system: int = 0, component: int = 0):
        self.system, self.component = system, component  # 0: learn from the HEARTBEAT

    @property
    def bound(self) -> bool:
        return self.system > 0 and self.component > 0

    def offer(self, msg) -> bool:
        """Bind to this HEARTBEAT's sender if it is an autopilot and matches any configured id."""
        m = mavlink_module()
        not_autopilot = {getattr(m, f"MAV_TYPE_{t}", -1) for t in NOT_AUTOPILOT_TYPES}
        if msg.autopilot == m.MAV_AUTOPILOT_INVALID or msg.type in not_autopilot:
            return False
        sysid, compid = msg.get_srcSystem(), msg.get_srcComponent()
        if (self.system and sysid != self.system) or (self.component and compid != self.component):
            return False
        self.system, self.component = sysid, compid
        log.info("bound to the autopilot: system %d component %d", sysid, compid)
        return True

    def accepts(self, msg) -> bool:
        return self.bound and (msg.get_srcSystem(), msg.get_srcComponent()) == (self.system, self.component)


def read_signing_key(path: str | Path) -> bytes:
    """The 32-byte MAVLink 2 signing key from a passphrase file (its SHA-256, the key MAVProxy's
    `signing setup PASSPHRASE` gives the autopilot). Refuses a file others may read or write."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise SkyfixError(f"signing key file {path}: {exc.strerror}") from exc
    if st.st_mode & 0o077:
        raise SkyfixError(f"signing key file {path} is accessible by others (mode {st.st_mode & 0o777:o}); "
                          f"chmod 600 {path}")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise SkyfixError(f"signing key file {path} belongs to another user")
    passphrase = path.read_text().strip()
    if len(passphrase) < 8:
        raise SkyfixError(f"signing key file {path}: the passphrase is shorter than 8 characters")
    return hashlib.sha256(passphrase.encode()).digest()


@functools.lru_cache(maxsize=1)
def _udp_server_class():
    mavutil = require("pymavlink.mavutil")

    class PinnedUdpServer(mavutil.mavudp):
        """pymavlink's `udpin`, without its memory of every sender: until the autopilot is
        identified, datagrams from anyone are parsed and nothing is sent; once `peer` is set,
        datagrams from any other address are dropped unread and everything goes to the peer
        only (pymavlink's own sends each message to every address that ever wrote to it)."""

        def __init__(self, device: str, **kwargs):
            super().__init__(device, input=True, **kwargs)
            self.peer = None            # (host, port) of the autopilot
            self.datagram_addr = None   # sender of the datagram just read
            self.foreign_datagrams = 0
            # While the autopilot is silent, datagrams from other endpoints are read too, for
            # the bridge to judge (firmware_bridge/rebind.py); nothing is ever sent to them.
            self.open_to_candidates = False

        def recv(self, n=None):
            try:
                data, addr = self.port.recvfrom(mavutil.UDP_MAX_PACKET_LEN)
            except socket.error as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNREFUSED):
                    return ""
                raise
            if self.peer is not None and addr != self.peer and not self.open_to_candidates:
                self.foreign_datagrams += 1
                return ""
            self.datagram_addr = addr
            return data

        def write(self, buf):
            if self.peer is None:
                return  # no verified autopilot yet: nobody to talk to
            try:
                self.port.sendto(buf, self.peer)
            except socket.error:
                pass

    return PinnedUdpServer


class MavlinkBridge:
    """Owns the connection: a receive thread, a 1 Hz heartbeat, and reconnection after silence.

    Hostile input: telemetry is taken from the bound autopilot only (`AutopilotBinding`); on a
    UDP server the autopilot's address is pinned and other senders are dropped, never answered
    and never remembered; every value is sanity-checked by the TelemetryStore; a message that
    cannot be encoded is an error-level log line and a counted event."""

    def __init__(self, connection: str, source_system: int = 1, link_timeout_s: float = 3.0,
                 heartbeat_hz: float = 1.0, target_system: int = 0, target_component: int = 0,
                 signing_key: Optional[bytes] = None):
        self.connection, self.source_system = connection, source_system
        self.signing_key = signing_key
        self.link_timeout_s, self.heartbeat_hz = link_timeout_s, heartbeat_hz
        self.binding = AutopilotBinding(target_system, target_component)
        self.telemetry = TelemetryStore()
        self.dropped: Counter = Counter()  # why messages were not used: 'foreign', 'unbound'
        self.encode_failures = 0
        self._last_encode_log = -1e9
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
        self.stream_rates_hz: dict = dict(STREAM_RATES_HZ)  # what is asked for (watch_gnss adds)
        self.want_origin = False
        self._opened_s = 0.0
        self.rebind = RebindCheck(self.telemetry)
        self.rebinds: list[tuple] = []  # (old endpoint, new endpoint) of every re-bind

    @classmethod
    def from_config(cls, cfg, connection: Optional[str] = None) -> "MavlinkBridge":
        """From a BridgeConfig; `connection` overrides cfg.connection (the simulators' ports)."""
        key = read_signing_key(cfg.signing_key_file) if cfg.signing_key_file else None
        return cls(connection or cfg.connection, cfg.source_system, cfg.link_timeout_s,
                   target_system=cfg.autopilot_system, target_component=cfg.autopilot_component,
                   signing_key=key)

    @property
    def target_system(self) -> int:
        """The autopilot's system id (1 until bound)."""
        return self.binding.system or 1

    @property
    def target_component(self) -> int:
        return self.binding.component or 1

    # ---- lifecycle ----------------------------------------------------------------------------
    def _open(self):
        mavutil = require("pymavlink.mavutil")
        m = mavlink_module()
        ids = dict(source_system=self.source_system, source_component=m.MAV_COMP_ID_ONBOARD_COMPUTER)
        try:
            if self.connection.startswith("udpin:"):
                mavutil.set_dialect("common")
                self.conn = _udp_server_class()(self.connection[len("udpin:"):], **ids)
            else:
                self.conn = mavutil.mavlink_connection(self.connection, dialect="common", autoreconnect=True, **ids)
        except Exception as exc:  # serial/socket errors come in many types
            raise SkyfixError(f"cannot open MAVLink link '{self.connection}': {exc}") from exc
        if self.signing_key is not None:
            # Every packet in must carry a valid signature (no unsigned exceptions); every
            # packet out is signed. Rejections are counted by pymavlink's signing state.
            self.conn.setup_signing(self.signing_key, sign_outgoing=True,
                                    allow_unsigned_callback=lambda mav, msg_id: False)
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
                self._take(msg, now)
            last = self.telemetry.last_receive_s() or self._opened_s
            if now - max(last, self._opened_s) > self.link_timeout_s:
                self._on_silence(now, last)

    def _on_silence(self, now: float, last: float) -> None:
        """The autopilot has said nothing for link_timeout_s. A UDP server keeps its socket,
        its counters and the autopilot's endpoint, and listens to other endpoints only as
        candidates for a re-bind (rebind.py); other links are re-opened."""
        if getattr(self.conn, "peer", None) is None:
            log.warning("MAVLink link silent for %.1f s; reconnecting", now - last)
            self._reconnect()
        elif not self.conn.open_to_candidates:
            log.warning("MAVLink link silent for %.1f s; waiting for the autopilot at %s:%d (another "
                        "endpoint is taken only if it continues the autopilot's clock and attitude)",
                        now - last, *self.conn.peer)
            self.conn.open_to_candidates = True
            self.reconnects += 1

    def _take(self, msg, now: float) -> None:
        """Use a received message if it is the autopilot's; count it otherwise."""
        kind = msg.get_type()
        if kind == "BAD_DATA":
            self.bad_packets += 1  # broken packets are counted and dropped
            return
        if kind == "HEARTBEAT" and not self.binding.bound:
            self.binding.offer(msg)
        if not self.binding.accepts(msg):
            self.dropped["foreign" if self.binding.bound else "unbound"] += 1
            return
        peer = getattr(self.conn, "peer", "n/a")
        if peer is None:
            self.conn.peer = self.conn.datagram_addr  # UDP: answer this address, and only it
            log.info("autopilot at %s:%d", *self.conn.peer)
        elif peer != "n/a" and self.conn.open_to_candidates and not self._from_candidate_taken(msg, now):
            return
        self.telemetry.update(msg, now)

    def _from_candidate_taken(self, msg, now: float) -> bool:
        """During a silence: True if the message may be used (the autopilot's own endpoint
        spoke again, or a new endpoint has just proven it is the same autopilot)."""
        addr, peer = self.conn.datagram_addr, self.conn.peer
        if addr == peer:
            self.conn.open_to_candidates = False
            self.rebind.reset()
            log.info("the autopilot at %s:%d is back", *peer)
            return True
        if not self.rebind.offer(msg, addr, now):
            self.dropped["foreign endpoint"] += 1
            return False
        self.rebinds.append((peer, addr))
        self.conn.peer, self.conn.open_to_candidates = addr, False
        log.warning("re-bound the autopilot (system %d component %d) from %s:%d to %s:%d: it continued "
                    "the autopilot's clock and attitude (re-bind %d)", self.binding.system,
                    self.binding.component, *peer, *addr, len(self.rebinds))
        return True

    def counters(self) -> dict:
        """What the link refused, for logs and the sim's JSON."""
        signing = self.conn.mav.signing if self.conn is not None else None
        return {"bad_packets": self.bad_packets, "dropped": dict(self.dropped),
                "signature_rejects": signing.reject_count if signing and signing.secret_key else 0,
                "foreign_datagrams": getattr(self.conn, "foreign_datagrams", 0),
                "rebinds": [f"{a[0]}:{a[1]} -> {b[0]}:{b[1]}" for a, b in self.rebinds],
                "rebind_refused": dict(self.rebind.refused),
                "rejected_values": dict(self.telemetry.rejected), "encode_failures": self.encode_failures}

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
        return [kind for kind, hz in self.stream_rates_hz.items()
                if self.telemetry.get(kind, 2.0 / hz + 1.0, now_mono_s) is None]

    def watch_gnss(self) -> "MavlinkBridge":
        """Also ask for the receivers' reports (GPS_RAW_INT, GPS2_RAW) and the EKF origin
        (GPS_GLOBAL_ORIGIN, which ExternalNav positions are relative to)."""
        self.stream_rates_hz.update(GNSS_STREAM_RATES_HZ)
        self.want_origin = True
        return self

    def _request_origin(self, now_mono_s: float) -> None:
        """MAV_CMD_REQUEST_MESSAGE for GPS_GLOBAL_ORIGIN until one has arrived (once a second)."""
        if not self.want_origin or self.telemetry.ekf_origin is not None:
            return
        m = mavlink_module()
        self.send(lambda mav: mav.command_long_encode(
            self.target_system, self.target_component, m.MAV_CMD_REQUEST_MESSAGE, 0,
            m.MAVLINK_MSG_ID_GPS_GLOBAL_ORIGIN, 0, 0, 0, 0, 0, 0))

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
            interval_us = 1e6 / self.stream_rates_hz[kind]
            self.send(lambda mav: mav.command_long_encode(
                self.target_system, self.target_component, m.MAV_CMD_SET_MESSAGE_INTERVAL, 0,
                msg_id, interval_us, 0, 0, 0, 0, 0))
            self.stream_requests += 1
        self._request_origin(now_mono_s)
        late = [k for k in missing if k in REQUIRED_STREAMS and k not in self._stream_warned]
        if late and now_mono_s - self._opened_s > 10.0:
            self._stream_warned.update(late)
            log.warning("the autopilot does not stream %s on '%s' although asked: set its stream "
                        "rates for this port (ArduPilot: MAVn_EXTRA1 / MAVn_POSITION / MAVn_EXTRA3, "
                        "SRn_* on older firmware; PX4 sends GLOBAL_POSITION_INT only once EKF2 has a "
                        "global position, ALTITUDE gives the height until then)", ", ".join(late), self.connection)
        return missing

    def send(self, build) -> bool:
        """Send `build(mav)` (a function returning an encoded message); False if it could not
        be encoded (an error: counted and logged, at most every 5 s) or the link failed."""
        with self._send_lock:
            if getattr(self.conn, "peer", "n/a") is None:
                return False  # UDP server, autopilot not heard yet: nobody to send to
            try:
                msg = build(self.conn.mav)
                self.conn.mav.send(msg)  # packs (struct errors for out-of-range fields), then writes
            except (struct.error, ValueError, TypeError, OverflowError) as exc:
                self._encode_failed(exc)
                return False
            except Exception as exc:  # e.g. a closed serial port
                log.debug("MAVLink send failed: %s", exc)
                return False
            self.sent += 1
            return True

    def _encode_failed(self, exc: Exception) -> None:
        """A value out of range for its field: never silent, never fatal."""
        self.encode_failures += 1
        now = time.monotonic()
        if now - self._last_encode_log >= 5.0:
            self._last_encode_log = now
            log.error("MAVLink message not sent, it cannot be encoded (%d so far): %s: %s",
                      self.encode_failures, type(exc).__name__, exc)
