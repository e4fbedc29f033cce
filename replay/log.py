"""An autopilot's log read for replay: a ground station's telemetry log (.tlog) or ArduPilot's
DataFlash log (.bin), both through pymavlink.

Everything is put on one clock, UTC seconds (UNIX time): a .tlog stamps every message with the
ground station's clock; a .bin counts microseconds since boot (TimeUS), tied to UTC by its GPS
messages' week and milliseconds. Attitude and the height over the take-off point are what the
navigator gets; the GPS is the reference the replay is scored against, never given to it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from skyfix.contracts import Telemetry
from skyfix.errors import SkyfixError, require

GPS_EPOCH_UNIX_S = 315964800.0  # 1980-01-06
GPS_LEAP_S = 18.0               # GPS - UTC since 2017
MIN_GPS_FIX = 3                 # 3-D fix: the reference is used only then


class LogError(SkyfixError):
    """A flight log that cannot be replayed (missing messages, unreadable, no time)."""


@dataclass
class FlightLog:
    """Time series of a flight, each (t_utc_s array, values...) sorted by time."""

    path: Path
    attitude: tuple            # (t, roll_rad, pitch_rad, yaw_rad)
    height: tuple              # (t, m over the take-off point)
    gps: tuple                 # (t, lat_deg, lon_deg) with a 3-D fix
    rangefinder: tuple = ()    # (t, m) where in range
    partial_end: bool = False  # the file ends inside a message (a truncated log)
    notes: list = field(default_factory=list)

    @property
    def span_s(self) -> tuple:
        """(first, last) UTC second with attitude."""
        return float(self.attitude[0][0]), float(self.attitude[0][-1])

    def telemetry_at(self, t_utc_s: float, max_gap_s: float = 0.5) -> Optional[Telemetry]:
        """Telemetry interpolated at t_utc_s, or None outside the log or across a gap in its
        attitude longer than max_gap_s (never stale values)."""
        att = _interp(self.attitude, t_utc_s, max_gap_s, angles=True)
        if att is None:
            return None
        rng = _interp(self.rangefinder, t_utc_s, max_gap_s) if self.rangefinder else None
        height = rng if rng is not None else _interp(self.height, t_utc_s, max_gap_s)
        return Telemetry(int(t_utc_s * 1e6), float(att[0]), float(att[1]), float(att[2]),
                         None if height is None else float(height[0]), None, rng is not None)

    def messages(self) -> list[tuple]:
        """The log as the MAVLink messages a live link delivers (ATTITUDE, GLOBAL_POSITION_INT
        with the height over the take-off point, DISTANCE_SENSOR where in range), each with its
        UTC time, in time order: [(t_utc_s, message)]. Their boot time counts from 1 s before
        the log's first sample. For `LogTelemetry`."""
        mavlink = require("pymavlink.dialects.v20.ardupilotmega")
        t0 = min(float(self.attitude[0][0]), float(self.height[0][0])) - 1.0

        def boot_ms(t):
            return int(round((t - t0) * 1e3))
        out = [(t, mavlink.MAVLink_attitude_message(boot_ms(t), r, p, y, 0.0, 0.0, 0.0))
               for t, r, p, y in zip(*self.attitude)]
        out += [(t, mavlink.MAVLink_global_position_int_message(boot_ms(t), 0, 0, int(round(h * 1e3)),
                                                                int(round(h * 1e3)), 0, 0, 0, 65535))
                for t, h in zip(*self.height)]
        if self.rangefinder:
            out += [(t, mavlink.MAVLink_distance_sensor_message(boot_ms(t), 0, 65535, int(round(d * 100)), 0, 0, 25, 0))
                    for t, d in zip(*self.rangefinder)]
        return sorted(out, key=lambda m: m[0])


    def gps_at(self, t_utc_s: float, max_gap_s: float = 1.5) -> Optional[tuple]:
        """(lat_deg, lon_deg) of the log's GPS interpolated at t_utc_s, or None."""
        v = _interp(self.gps, t_utc_s, max_gap_s)
        return None if v is None else (float(v[0]), float(v[1]))


class LogTelemetry:
    """A log's telemetry through the onboard path: its messages fed, in time order, to the
    TelemetryStore that a live link fills (firmware_bridge/telemetry.py), so a replayed flight is
    cropped with exactly the interpolation, gap rules and value checks that fly. A frame at UTC
    time t gets what the store says at t, with the messages up to t + lead_s received (a live
    loop reads a frame a moment after its capture); None without an attitude there."""

    def __init__(self, log: FlightLog, lead_s: float = 0.1):
        from skyfix.firmware_bridge.telemetry import TelemetryStore
        self.store, self.lead_s = TelemetryStore(), lead_s
        self._messages, self._next = log.messages(), 0

    def at(self, t_utc_s: float, max_age_s: float = 0.5) -> Optional[Telemetry]:
        """Telemetry at t_utc_s (frames must come in time order, as a live link's do)."""
        while self._next < len(self._messages) and self._messages[self._next][0] <= t_utc_s + self.lead_s:
            t, msg = self._messages[self._next]
            self.store.update(msg, t)
            self._next += 1
        tel = self.store.at(t_utc_s, max_age_s)
        return tel if tel.roll_rad is not None else None


def _interp(series: tuple, t: float, max_gap_s: float, angles: bool = False):
    """Values of a (t, v1, v2, ...) series at t (linear; angles through their unit vectors), or
    None when t is outside it or the samples around it are more than max_gap_s apart."""
    ts = series[0]
    if len(ts) == 0 or t < ts[0] or t > ts[-1]:
        return None
    i = int(np.searchsorted(ts, t, side="right"))
    i0, i1 = max(i - 1, 0), min(i, len(ts) - 1)
    if ts[i1] - ts[i0] > max_gap_s:
        return None
    w = 0.0 if i1 == i0 else (t - ts[i0]) / (ts[i1] - ts[i0])
    out = []
    for v in series[1:]:
        a, b = v[i0], v[i1]
        if angles:
            out.append(math.atan2((1 - w) * math.sin(a) + w * math.sin(b), (1 - w) * math.cos(a) + w * math.cos(b)))
        else:
            out.append((1 - w) * a + w * b)
    return out


def read_log(path: str | Path) -> FlightLog:
    """A .tlog or .bin as a FlightLog; LogError naming what is missing."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"flight log not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".tlog", ".bin"):
        raise LogError(f"{path.name}: a flight log is a ground station's .tlog or a DataFlash .bin")
    mavutil = require("pymavlink.mavutil")
    try:
        conn = mavutil.mavlink_connection(str(path), dialect="ardupilotmega", robust_parsing=True)
    except Exception as exc:  # pymavlink raises several types for unreadable files
        raise LogError(f"cannot read {path.name}: {exc}") from exc
    rows: dict = {k: [] for k in ("att", "height", "gps", "range")}
    bad, last = 0, None
    try:
        bad, last = _read_tlog(conn, rows) if suffix == ".tlog" else _read_bin(conn, rows, path.name)
    finally:
        conn.close()
    log = _assemble(path, rows, suffix)
    log.partial_end = last == "BAD_DATA" or (suffix == ".tlog" and _tlog_partial(path))
    if bad:
        log.notes.append(f"{bad} unreadable messages skipped")
    return log


def _read_tlog(conn, rows: dict) -> tuple:
    bad, last = 0, None
    while True:
        msg = conn.recv_match(blocking=False)
        if msg is None:
            return bad, last
        kind, t = msg.get_type(), getattr(msg, "_timestamp", None)
        last = kind
        if kind == "BAD_DATA":
            bad += 1
        elif t is None:
            continue
        elif kind == "ATTITUDE":
            rows["att"].append((t, msg.roll, msg.pitch, msg.yaw))
        elif kind == "GLOBAL_POSITION_INT":
            rows["height"].append((t, msg.relative_alt / 1000.0))
        elif kind == "GPS_RAW_INT" and msg.fix_type >= MIN_GPS_FIX:
            rows["gps"].append((t, msg.lat / 1e7, msg.lon / 1e7))
        elif kind == "DISTANCE_SENSOR" and msg.min_distance < msg.current_distance < msg.max_distance:
            rows["range"].append((t, msg.current_distance / 100.0))


def _read_bin(conn, rows: dict, name: str) -> tuple:
    """DataFlash: ATT (deg), POS.RelHomeAlt or CTUN.Alt, GPS (Lat, Lng, Status, GWk, GMS),
    RFND.Dist; times TimeUS since boot, tied to UTC by the GPS week and milliseconds."""
    bad, last, boot_to_utc = 0, None, []
    alt_source = None
    while True:
        msg = conn.recv_match(blocking=False)
        if msg is None:
            break
        kind = msg.get_type()
        last = kind
        if kind == "BAD_DATA":
            bad += 1
            continue
        t = getattr(msg, "TimeUS", None)
        if t is None:
            continue
        t = t / 1e6
        if kind == "ATT":
            rows["att"].append((t, math.radians(msg.Roll), math.radians(msg.Pitch), math.radians(msg.Yaw)))
        elif kind in ("POS", "CTUN") and alt_source in (None, kind):
            value = getattr(msg, "RelHomeAlt", None) if kind == "POS" else getattr(msg, "Alt", None)
            if value is not None:
                alt_source = kind
                rows["height"].append((t, float(value)))
        elif kind == "GPS" and getattr(msg, "Status", 0) >= MIN_GPS_FIX:
            rows["gps"].append((t, msg.Lat, msg.Lng))
            utc = GPS_EPOCH_UNIX_S + msg.GWk * 604800.0 + msg.GMS / 1e3 - GPS_LEAP_S
            boot_to_utc.append(utc - t)
        elif kind == "RFND" and getattr(msg, "Dist", 0) > 0:
            rows["range"].append((t, float(msg.Dist)))
    if not boot_to_utc:
        raise LogError(f"{name}: no GPS time in the DataFlash log: its boot clock cannot be tied to the video's time")
    shift = float(np.median(boot_to_utc))
    for key in rows:
        rows[key] = [(r[0] + shift, *r[1:]) for r in rows[key]]
    return bad, last


def _tlog_partial(path: Path) -> bool:
    """A .tlog whose last record is cut: its size does not end on a whole MAVLink packet."""
    data = path.read_bytes()[-300:]
    for start in range(len(data)):
        if data[start] in (0xFD, 0xFE) and start >= 8:
            length = data[start + 1] if start + 1 < len(data) else 0
            total = length + (12 if data[start] == 0xFD else 8)
            if start + total == len(data):
                return False
    return True


def _assemble(path: Path, rows: dict, suffix: str) -> FlightLog:
    names = {".tlog": ("ATTITUDE", "GLOBAL_POSITION_INT", "GPS_RAW_INT with a 3-D fix"),
             ".bin": ("ATT", "POS or CTUN", "GPS with a 3-D fix")}[suffix]
    for key, name in zip(("att", "height", "gps"), names):
        if not rows[key]:
            need = {"att": "the attitude, to rectify the frames", "height": "the height, to scale them",
                    "gps": "the GPS, the reference the replay is scored against"}[key]
            raise LogError(f"{path.name} has no {name} messages: {need}")

    def series(key):
        a = np.array(sorted(rows[key]), np.float64)
        keep = np.r_[True, np.diff(a[:, 0]) > 0]  # one sample per time stamp
        return tuple(a[keep].T)
    return FlightLog(path, series("att"), series("height"), series("gps"),
                     series("range") if rows["range"] else ())
