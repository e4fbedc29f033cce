"""Telemetry from the autopilot, kept as short time series on the flight controller's clock, so
that a frame is rectified with the attitude and height at its capture time, not at the time it
happens to be processed (at 12 m/s and 3 deg/s, 200 ms of lag is 2.4 m and 0.6 deg).

Clocks: every message used here carries the FC's boot time (`time_boot_ms`). The offset between
the FC's boot clock and the local monotonic clock is estimated from the receive times: a message
can only arrive after it was stamped, so the largest (boot - receive) over a recent window is
the offset with the least transport delay in it. A boot time that jumps backwards (the FC
rebooted) restarts the estimate and the histories.
"""
from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from skyfix.contracts import Telemetry
from skyfix.firmware_bridge.messages import plausible_unix_us

HISTORY_SAMPLES = 512      # per series: 10 s of ATTITUDE at 50 Hz; bounded whatever the rate
OFFSET_WINDOW = 200        # clock-offset samples the estimate is the max of (a few seconds)
UNIX_TIME_MIN_US = 10 ** 15  # ALTITUDE.time_usec above this is unix time, below it boot time
# SYSTEM_TIME is believed only inside messages.plausible_unix_us (2020-2100) and only when it
# agrees with the established clock within UNIX_STEP_MAX_S; a real clock step is taken after
# UNIX_STEP_CONFIRM messages agree with each other.
UNIX_STEP_MAX_S, UNIX_STEP_CONFIRM = 10.0, 5
BOOT_JUMP_MAX_S = 60.0       # a boot time further ahead of the receive clock than this is refused
MAX_HEIGHT_M, MIN_HEIGHT_M = 20_000.0, -1_000.0
GNSS_TYPES = ("GPS_RAW_INT", "GPS2_RAW")  # the receivers' own reports (the GNSS watch)
GNSS_HISTORY = 256


@dataclass(frozen=True)
class GnssReport:
    """One receiver report as received: local monotonic receive time, WGS84 position (None
    without a 2D/3D fix), its stated horizontal accuracy (m; None when not stated), the
    GPS_FIX_TYPE and satellites (255 unknown)."""

    t_mono_s: float
    lat_deg: Optional[float]
    lon_deg: Optional[float]
    h_acc_m: Optional[float]
    fix_type: int
    satellites: int


def gnss_report(msg, t_mono_s: float) -> GnssReport:
    """GPS_RAW_INT / GPS2_RAW -> GnssReport. h_acc (mm, a MAVLink 2 extension) is the stated
    accuracy; 0 or UINT32_MAX means not stated."""
    h_acc_mm = getattr(msg, "h_acc", 0) or 0
    h_acc = None if h_acc_mm in (0, 0xFFFFFFFF) else h_acc_mm / 1e3
    has_fix = msg.fix_type >= 2 and (msg.lat or msg.lon)
    return GnssReport(t_mono_s, msg.lat / 1e7 if has_fix else None, msg.lon / 1e7 if has_fix else None,
                      h_acc, int(msg.fix_type), int(msg.satellites_visible))


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


class BootClock:
    """Local monotonic seconds <-> FC boot seconds, from (boot time, receive time) pairs."""

    def __init__(self):
        self._samples: deque = deque(maxlen=OFFSET_WINDOW)
        self.last_boot_s: Optional[float] = None

    def observe(self, boot_s: float, t_recv_mono_s: float) -> bool:
        """Add a pair; returns True when the boot clock went backwards (an FC reboot)."""
        rebooted = self.last_boot_s is not None and boot_s < self.last_boot_s - 1.0
        if rebooted:
            self._samples.clear()
        self.last_boot_s = boot_s
        self._samples.append(boot_s - t_recv_mono_s)
        return rebooted

    @property
    def offset_s(self) -> Optional[float]:
        """FC boot time minus local monotonic time, or None before the first message."""
        return max(self._samples) if self._samples else None


class Series:
    """(boot_s, values...) samples in time order, interpolated linearly; angles unwrapped."""

    def __init__(self, angle_columns: tuple = ()):
        self.samples: deque = deque(maxlen=HISTORY_SAMPLES)
        self.angle_columns = angle_columns

    def add(self, boot_s: float, *values: float) -> None:
        if self.samples and boot_s <= self.samples[-1][0]:
            return  # out of order or repeated: the series stays monotonic
        self.samples.append((boot_s, *values))

    def at(self, boot_s: float, max_age_s: float) -> Optional[tuple]:
        """Values at boot_s: interpolated between the samples around it, or the nearest sample
        when boot_s lies within max_age_s outside the history; None otherwise."""
        if not self.samples:
            return None
        first, last = self.samples[0], self.samples[-1]
        if boot_s >= last[0]:
            return last[1:] if boot_s - last[0] <= max_age_s else None
        if boot_s <= first[0]:
            return first[1:] if first[0] - boot_s <= max_age_s else None
        times = np.fromiter((s[0] for s in self.samples), float, len(self.samples))
        i = int(np.searchsorted(times, boot_s))  # samples[i-1].t < boot_s <= samples[i].t
        a, b = self.samples[i - 1], self.samples[i]
        if b[0] - a[0] > 2 * max_age_s:
            return None  # a gap in the telemetry: do not invent what happened inside it
        f = (boot_s - a[0]) / (b[0] - a[0])
        out = []
        for k, (va, vb) in enumerate(zip(a[1:], b[1:])):
            if k in self.angle_columns:  # the short way round: 359 deg -> 1 deg passes 0
                vb = va + (vb - va + math.pi) % (2 * math.pi) - math.pi
            out.append(va + f * (vb - va))
        return tuple(out)

    def clear(self) -> None:
        self.samples.clear()


class TelemetryStore:
    """The autopilot's telemetry: latest message per type, and histories for interpolation."""

    def __init__(self):
        self._lock = threading.Lock()
        self.latest: dict = {}                      # type -> (message, t_recv_mono_s)
        self.clock = BootClock()
        self.attitude = Series(angle_columns=(0, 1, 2))  # roll, pitch, yaw rad
        self.agl_range = Series()                   # DISTANCE_SENSOR, m
        self.agl_baro = Series()                    # ALTITUDE.altitude_relative, m
        self.agl_home = Series()                    # GLOBAL_POSITION_INT.relative_alt, m
        self.alt_msl = Series()                     # ALTITUDE.altitude_amsl / GLOBAL_POSITION_INT.alt, m
        self.unix_offset_s: Optional[float] = None  # FC unix time - local monotonic
        self._unix_step: list = []                  # offsets disagreeing with the established one
        self.gnss: dict = {k: deque(maxlen=GNSS_HISTORY) for k in GNSS_TYPES}  # kind -> GnssReport
        self.ekf_origin: Optional[tuple] = None     # (lat_deg, lon_deg, alt_msl_m): GPS_GLOBAL_ORIGIN
        self.received = 0
        self.rejected: Counter = Counter()          # "KIND: why" -> messages refused

    # ---- intake -------------------------------------------------------------------------------
    def update(self, msg, t_mono_s: float) -> None:
        """Take one message received at local monotonic time t_mono_s."""
        kind = msg.get_type()
        with self._lock:
            why = self._implausible(kind, msg, t_mono_s)
            if why:
                self.rejected[f"{kind}: {why}"] += 1
                return
            self.received += 1
            self.latest[kind] = (msg, t_mono_s)
            boot_ms = getattr(msg, "time_boot_ms", None)
            if boot_ms is not None and self.clock.observe(boot_ms / 1e3, t_mono_s):
                self._forget_history()
            self._record(kind, msg, t_mono_s)

    def _record(self, kind: str, msg, t_mono_s: float) -> None:
        if kind == "ATTITUDE" and _finite(msg.roll, msg.pitch, msg.yaw):
            self.attitude.add(msg.time_boot_ms / 1e3, msg.roll, msg.pitch, msg.yaw)
        elif kind == "DISTANCE_SENSOR" and msg.min_distance < msg.current_distance < msg.max_distance:
            self.agl_range.add(msg.time_boot_ms / 1e3, msg.current_distance / 100.0)
        elif kind == "GLOBAL_POSITION_INT":
            self.agl_home.add(msg.time_boot_ms / 1e3, msg.relative_alt / 1000.0)
            self.alt_msl.add(msg.time_boot_ms / 1e3, msg.alt / 1000.0)
        elif kind == "ALTITUDE" and _finite(msg.altitude_relative, msg.altitude_amsl):
            boot_s = self._altitude_boot_s(msg.time_usec, t_mono_s)
            if boot_s is not None:
                self.agl_baro.add(boot_s, float(msg.altitude_relative))
                self.alt_msl.add(boot_s, float(msg.altitude_amsl))
        elif kind == "SYSTEM_TIME" and msg.time_unix_usec > 0:
            self._observe_unix(msg.time_unix_usec / 1e6 - t_mono_s)
        elif kind in GNSS_TYPES:
            self.gnss[kind].append(gnss_report(msg, t_mono_s))
        elif kind == "GPS_GLOBAL_ORIGIN":
            self._observe_origin((msg.latitude / 1e7, msg.longitude / 1e7, msg.altitude / 1e3))

    def _observe_origin(self, origin: tuple) -> None:
        """The EKF origin is set once per flight: a different one later is refused and counted
        (ExternalNav positions are sent relative to it; a forged origin would move them all)."""
        if self.ekf_origin is None:
            self.ekf_origin = origin
        elif max(abs(origin[0] - self.ekf_origin[0]), abs(origin[1] - self.ekf_origin[1])) > 1e-7 \
                or abs(origin[2] - self.ekf_origin[2]) > 0.5:
            self.rejected["GPS_GLOBAL_ORIGIN: differs from the origin already set"] += 1

    def _observe_unix(self, offset_s: float) -> None:
        """Take the FC's unix-time offset; a step away from the established one needs
        UNIX_STEP_CONFIRM agreeing messages (one spoofed or corrupt SYSTEM_TIME changes nothing)."""
        if self.unix_offset_s is None or abs(offset_s - self.unix_offset_s) <= UNIX_STEP_MAX_S:
            self.unix_offset_s, self._unix_step = offset_s, []
            return
        self.rejected["SYSTEM_TIME: step against the established clock"] += 1
        if self._unix_step and abs(offset_s - self._unix_step[-1]) > 1.0:
            self._unix_step = []
        self._unix_step.append(offset_s)
        if len(self._unix_step) >= UNIX_STEP_CONFIRM:
            self.unix_offset_s, self._unix_step = offset_s, []

    def _implausible(self, kind: str, msg, t_mono_s: float) -> str:
        """Why a message's values cannot be true (empty when they can). Fields outside their
        physical range, non-finite numbers, a boot clock leaping ahead, a unix time outside
        2020-2100: refused and counted, never stored."""
        boot_ms = getattr(msg, "time_boot_ms", None)
        if boot_ms is not None and self.clock.last_boot_s is not None and self.clock.offset_s is not None:
            if boot_ms / 1e3 - (t_mono_s + self.clock.offset_s) > BOOT_JUMP_MAX_S:
                return "boot time leaps ahead"
        if kind == "ATTITUDE":
            if not (_finite(msg.roll, msg.pitch, msg.yaw) and abs(msg.roll) <= math.pi
                    and abs(msg.pitch) <= math.pi / 2 + 1e-3 and abs(msg.yaw) <= 2 * math.pi):
                return "angle out of range"
        elif kind == "GLOBAL_POSITION_INT":
            if not (abs(msg.lat) <= 900_000_000 and abs(msg.lon) <= 1_800_000_000
                    and MIN_HEIGHT_M <= msg.relative_alt / 1e3 <= MAX_HEIGHT_M
                    and MIN_HEIGHT_M <= msg.alt / 1e3 <= MAX_HEIGHT_M):
                return "position or height out of range"
        elif kind == "ALTITUDE":
            if not (_finite(msg.altitude_relative, msg.altitude_amsl)
                    and MIN_HEIGHT_M <= msg.altitude_relative <= MAX_HEIGHT_M
                    and MIN_HEIGHT_M <= msg.altitude_amsl <= MAX_HEIGHT_M):
                return "height out of range"
        elif kind == "DISTANCE_SENSOR":
            if msg.max_distance > MAX_HEIGHT_M * 100:
                return "range out of range"
        elif kind == "SYSTEM_TIME" and msg.time_unix_usec and not plausible_unix_us(msg.time_unix_usec):
            return "unix time outside 2020-2100"
        elif kind in GNSS_TYPES:
            if not (abs(msg.lat) <= 900_000_000 and abs(msg.lon) <= 1_800_000_000 and 0 <= msg.fix_type <= 8):
                return "position or fix type out of range"
        elif kind == "GPS_GLOBAL_ORIGIN":
            if not (abs(msg.latitude) <= 900_000_000 and abs(msg.longitude) <= 1_800_000_000
                    and MIN_HEIGHT_M <= msg.altitude / 1e3 <= MAX_HEIGHT_M and (msg.latitude or msg.longitude)):
                return "origin out of range"
        return ""

    def _altitude_boot_s(self, time_usec: int, t_mono_s: float) -> Optional[float]:
        # ALTITUDE's stamp may be boot time or unix time; without either, use the receive time.
        if 0 < time_usec < UNIX_TIME_MIN_US:
            return time_usec / 1e6
        offset = self.clock.offset_s
        return None if offset is None else t_mono_s + offset

    def _forget_history(self) -> None:
        for series in (self.attitude, self.agl_range, self.agl_baro, self.agl_home, self.alt_msl):
            series.clear()

    # ---- questions ----------------------------------------------------------------------------
    def get(self, kind: str, max_age_s: float, now_mono_s: float):
        """The latest message of a type if it arrived within max_age_s, else None."""
        with self._lock:
            item = self.latest.get(kind)
        if item is None or now_mono_s - item[1] > max_age_s:
            return None
        return item[0]

    def gnss_since(self, kind: str, t_mono_s: float) -> list:
        """The receiver's reports (GnssReport) received after t_mono_s, oldest first."""
        with self._lock:
            return [r for r in self.gnss[kind] if r.t_mono_s > t_mono_s]

    def last_receive_s(self) -> Optional[float]:
        with self._lock:
            return max((t for _, t in self.latest.values()), default=None)

    def boot_s(self, t_mono_s: float) -> Optional[float]:
        """FC boot time at a local monotonic time, or None before any time-stamped message."""
        offset = self.clock.offset_s
        return None if offset is None else t_mono_s + offset

    def at(self, t_mono_s: float, max_age_s: float = 0.5) -> Telemetry:
        """Telemetry interpolated at local monotonic time t_mono_s (a frame's capture time).

        A value with no sample within max_age_s of that time is None (never stale data). Height
        above ground: the rangefinder when in range, else ALTITUDE.altitude_relative, else
        GLOBAL_POSITION_INT.relative_alt (flat-ground assumption).
        """
        with self._lock:
            boot_s = self.boot_s(t_mono_s)
            if boot_s is None:
                return Telemetry(t_boot_us=int(t_mono_s * 1e6))
            att = self.attitude.at(boot_s, max_age_s)
            ranged = self.agl_range.at(boot_s, max_age_s)
            agl = next((v[0] for v in (s.at(boot_s, max_age_s) for s in
                                       (self.agl_range, self.agl_baro, self.agl_home)) if v), None)
            msl = self.alt_msl.at(boot_s, max_age_s)
        roll, pitch, yaw = att if att else (None, None, None)
        if yaw is not None:
            yaw = (yaw + math.pi) % (2 * math.pi) - math.pi
        return Telemetry(t_boot_us=int(boot_s * 1e6), roll_rad=roll, pitch_rad=pitch, yaw_rad=yaw,
                         alt_agl_m=agl, alt_msl_m=msl[0] if msl else None, agl_rangefinder=ranged is not None)

    def unix_us(self, now_mono_s: float) -> int:
        """FC unix time (from SYSTEM_TIME) at a local monotonic time; the host clock if unknown."""
        if self.unix_offset_s is not None:
            return int((now_mono_s + self.unix_offset_s) * 1e6)
        return int((now_mono_s + (time.time() - time.monotonic())) * 1e6)
