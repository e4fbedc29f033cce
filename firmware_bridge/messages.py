"""Encode skyfix fixes as MAVLink messages (pure functions; no sockets).

ArduPilot reads GPS_INPUT (GPS1_TYPE=14); PX4 reads GLOBAL_POSITION_SENSOR (message 296).
"""
from __future__ import annotations

import math
import os

os.environ.setdefault("MAVLINK20", "1")  # MAVLink 2 before pymavlink is imported

from skyfix.contracts import Fix  # noqa: E402
from skyfix.errors import require  # noqa: E402

GPS_EPOCH_UNIX_S = 315964800      # 1980-01-06T00:00:00Z
GPS_LEAP_SECONDS = 18             # GPS - UTC since 2017-01-01
SECONDS_PER_WEEK = 7 * 86400
# Nominal user-equivalent range error: DOP = accuracy / UERE, so 3 m accuracy reads as HDOP 1.0.
UERE_M = 3.0


def mavlink_module():
    """pymavlink's MAVLink 2 common dialect module."""
    return require("pymavlink.dialects.v20.common")


def gps_week_and_ms(unix_us: int) -> tuple[int, int]:
    """Unix time (us, UTC) -> (GPS week, ms into the week), leap seconds applied."""
    gps_ms = (unix_us // 1000) - GPS_EPOCH_UNIX_S * 1000 + GPS_LEAP_SECONDS * 1000
    return int(gps_ms // (SECONDS_PER_WEEK * 1000)), int(gps_ms % (SECONDS_PER_WEEK * 1000))


UNIX_US_MIN, UNIX_US_MAX = 1_577_836_800 * 10 ** 6, 4_102_444_800 * 10 ** 6  # 2020-01-01, 2100-01-01


def plausible_unix_us(unix_us: int) -> bool:
    """Inside 2020-01-01 .. 2100-01-01 (a GPS week that fits its uint16 field, and a real date)."""
    return UNIX_US_MIN <= unix_us <= UNIX_US_MAX


def check_fix(fix: Fix) -> None:
    """Raise ValueError naming the field when a fix cannot be a true position (the encoder's
    inputs are validated, never silently clamped)."""
    if not (math.isfinite(fix.lat_deg) and abs(fix.lat_deg) <= 90 and math.isfinite(fix.lon_deg)
            and abs(fix.lon_deg) <= 180):
        raise ValueError(f"fix position out of range: lat {fix.lat_deg}, lon {fix.lon_deg}")
    if not (math.isfinite(fix.horiz_accuracy_m) and fix.horiz_accuracy_m > 0):
        raise ValueError(f"fix accuracy not a positive number: {fix.horiz_accuracy_m}")
    if not math.isfinite(fix.alt_msl_m):
        raise ValueError(f"fix altitude not finite: {fix.alt_msl_m}")


def dop_from_accuracy(accuracy_m: float) -> float:
    return float(min(max(accuracy_m / UERE_M, 0.5), 99.0))


def gps_input(mav, fix: Fix, unix_us: int, vert_accuracy_m: float, fix_type: int = 3,
              satellites: int = 10, gps_id: int = 0, vel_down_m_s: float | None = None):
    """GPS_INPUT for ArduPilot. Accuracy fields are filled and their ignore flags cleared.

    Velocity is sent when the fix has it (otherwise its ignore flag is set, and the EKF must be
    told not to use GPS velocity: EK3_SRC1_VELXY=0, EK3_SRC1_VELZ=0). fix_type >= 3 with a real
    GPS week and week-ms lets ArduPilot jitter-correct the timestamps.
    """
    m = mavlink_module()
    check_fix(fix)
    ignore = 0
    has_vel = fix.vel_north_m_s is not None and fix.vel_east_m_s is not None
    if not has_vel:
        ignore |= m.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ | m.GPS_INPUT_IGNORE_FLAG_SPEED_ACCURACY
    if vel_down_m_s is None:
        ignore |= m.GPS_INPUT_IGNORE_FLAG_VEL_VERT
    # Without a believable date the fix is still sent, with no GPS time claimed (week 0):
    # ArduPilot then uses its own receive time.
    week, week_ms = gps_week_and_ms(unix_us) if plausible_unix_us(unix_us) else (0, 0)
    return mav.gps_input_encode(
        time_usec=int(unix_us), gps_id=gps_id, ignore_flags=ignore, time_week_ms=week_ms,
        time_week=week, fix_type=fix_type,
        lat=int(round(fix.lat_deg * 1e7)), lon=int(round(fix.lon_deg * 1e7)), alt=float(fix.alt_msl_m),
        hdop=dop_from_accuracy(fix.horiz_accuracy_m), vdop=dop_from_accuracy(vert_accuracy_m),
        vn=float(fix.vel_north_m_s or 0.0), ve=float(fix.vel_east_m_s or 0.0),
        vd=float(vel_down_m_s or 0.0),
        speed_accuracy=float(fix.speed_accuracy_m_s if fix.speed_accuracy_m_s is not None else 99.0),
        horiz_accuracy=float(fix.horiz_accuracy_m), vert_accuracy=float(vert_accuracy_m),
        satellites_visible=satellites,
        yaw=0 if fix.yaw_rad is None else int(round(math.degrees(fix.yaw_rad) % 360 * 100)) or 36000)


def global_position_sensor(mav, fix: Fix, time_usec: int, processing_time_us: int,
                           vert_accuracy_m: float, target_system: int = 1, target_component: int = 1,
                           sensor_id: int = 1):
    """GLOBAL_POSITION_SENSOR (296) for PX4, source VISION (map matching); sensor_id is what
    EKF2_AGPn_ID must name."""
    m = mavlink_module()
    check_fix(fix)
    return mav.global_position_sensor_encode(
        target_system=target_system, target_component=target_component, id=sensor_id,
        time_usec=int(time_usec), processing_time=int(max(processing_time_us, 0)),
        source=m.GLOBAL_POSITION_SRC_VISION, flags=m.GLOBAL_POSITION_PRIMARY,
        lat=int(round(fix.lat_deg * 1e7)), lon=int(round(fix.lon_deg * 1e7)),
        alt_ellipsoid=float("nan"), alt=float(fix.alt_msl_m),
        eph=float(fix.horiz_accuracy_m), epv=float(vert_accuracy_m))


def extnav_covariance(sigma_axis_m: float, angle_sigma_rad: float = 1.0) -> list:
    """VISION_POSITION_ESTIMATE's 21-float upper-triangle covariance, filled so that ArduPilot
    reads back sigma_axis_m. ArduPilot (GCS_Common.cpp) takes posErr = cbrt(c0^2 + c6^2 + c11^2)
    as a standard deviation (and floors it at VISO_POS_M_NSE), so equal diagonal entries
    c = sqrt(sigma^3 / 3) give posErr = sigma. The attitude entries are large: the angles sent
    are the autopilot's own, not a measurement."""
    c = math.sqrt(sigma_axis_m ** 3 / 3.0)
    a = math.sqrt(angle_sigma_rad ** 3 / 3.0)
    cov = [0.0] * 21
    for i in (0, 6, 11):
        cov[i] = c
    for i in (15, 18, 20):
        cov[i] = a
    return cov


def vision_position_estimate(mav, fix: Fix, origin, boot_us: int, attitude_rad: tuple, reset_counter: int = 0):
    """VISION_POSITION_ESTIMATE for ArduPilot's ExternalNav (VISO_TYPE=1): the fix in metres
    north, east, down of the EKF origin (origin: a geo.LocalFrame at GPS_GLOBAL_ORIGIN), its
    DRMS accuracy as the per-axis sigma DRMS/sqrt(2). attitude_rad: (roll, pitch, yaw), the
    autopilot's own (ArduPilot requires angles; with EK3_SRCn_YAW not ExternalNav it ignores them)."""
    check_fix(fix)
    east, north, up = (float(v) for v in origin.to_enu(fix.lat_deg, fix.lon_deg, fix.alt_msl_m))
    roll, pitch, yaw = (float(a) for a in attitude_rad)
    return mav.vision_position_estimate_encode(
        usec=int(boot_us), x=north, y=east, z=-up, roll=roll, pitch=pitch, yaw=yaw,
        covariance=extnav_covariance(fix.horiz_accuracy_m / math.sqrt(2.0)), reset_counter=int(reset_counter) & 0xFF)
