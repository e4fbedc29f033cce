"""Telemetry at capture time: histories on the FC's boot clock, interpolated at the frame's
capture time (real pymavlink message objects, no sockets)."""
import math

import pytest

pytest.importorskip("pymavlink")

from pymavlink.dialects.v20 import common as mavlink2  # noqa: E402

from skyfix.firmware_bridge.telemetry import TelemetryStore  # noqa: E402

BOOT_AT_MONO_S = 100.0   # the FC's boot clock reads 100 s less than the local monotonic clock
DELAY_S = 0.004          # link delay of every message
YAW_RATE = math.radians(12.0)  # a rounded corner at 12 m/s and 2.5 m/s^2


def _feed(store, t0_s=0.0, t1_s=10.0, hz=20.0, yaw0=math.radians(350.0)):
    """ATTITUDE (yaw turning through north) and GLOBAL_POSITION_INT (climbing 1 m/s)."""
    for k in range(int((t1_s - t0_s) * hz)):
        boot_s = t0_s + k / hz
        yaw = (yaw0 + YAW_RATE * boot_s + math.pi) % (2 * math.pi) - math.pi
        recv = boot_s + BOOT_AT_MONO_S + DELAY_S
        store.update(mavlink2.MAVLink_attitude_message(int(boot_s * 1e3), 0.05, -0.02, yaw, 0, 0, 0), recv)
        store.update(mavlink2.MAVLink_global_position_int_message(
            int(boot_s * 1e3), 0, 0, 0, int((100 + boot_s) * 1e3), 0, 0, 0, 65535), recv)


def _yaw_error_deg(tel, boot_s, yaw0=math.radians(350.0)):
    true = yaw0 + YAW_RATE * boot_s
    return abs(math.degrees((tel.yaw_rad - true + math.pi) % (2 * math.pi) - math.pi))


def test_clock_offset_is_learnt_from_receive_times():
    store = TelemetryStore()
    _feed(store, t1_s=2.0)
    # The offset carries at most the link delay (a message arrives after it was stamped).
    assert store.boot_s(BOOT_AT_MONO_S + 1.0) == pytest.approx(1.0 - DELAY_S, abs=1e-6)


def test_interpolation_at_capture_beats_the_latest_value_in_a_turn():
    store = TelemetryStore()
    _feed(store)
    capture_boot_s = 5.0 + 0.5 / 20  # between two ATTITUDE samples, while turning through north
    capture_mono = capture_boot_s + BOOT_AT_MONO_S + DELAY_S
    at_capture = store.at(capture_mono, max_age_s=0.5)
    assert _yaw_error_deg(at_capture, capture_boot_s) < 0.05
    assert at_capture.alt_agl_m == pytest.approx(100 + capture_boot_s, abs=0.01)
    assert at_capture.roll_rad == pytest.approx(0.05)
    # What the loop used before: the newest values when the frame is processed 200 ms later.
    processed = store.at(capture_mono + 0.2, max_age_s=0.5)
    assert _yaw_error_deg(processed, capture_boot_s) > 2.0  # 12 deg/s x 0.2 s
    assert processed.alt_agl_m - at_capture.alt_agl_m > 0.15


def test_the_newest_sample_is_held_only_briefly_and_gaps_are_not_bridged():
    store = TelemetryStore()
    _feed(store, t1_s=1.0)
    last_mono = 0.95 + BOOT_AT_MONO_S + DELAY_S
    assert store.at(last_mono + 0.3, max_age_s=0.5).yaw_rad is not None
    assert store.at(last_mono + 0.6, max_age_s=0.5).yaw_rad is None      # stale: not used
    assert store.at(BOOT_AT_MONO_S - 5.0, max_age_s=0.5).yaw_rad is None  # before the history
    _feed(store, t0_s=5.0, t1_s=6.0)                                      # a 4 s telemetry gap
    assert store.at(3.0 + BOOT_AT_MONO_S, max_age_s=0.5).yaw_rad is None


def test_fc_reboot_restarts_the_clock_and_history():
    store = TelemetryStore()
    _feed(store, t0_s=50.0, t1_s=52.0)
    store.update(mavlink2.MAVLink_attitude_message(500, 0.0, 0.0, 1.0, 0, 0, 0), 300.0)
    assert store.boot_s(300.0) == pytest.approx(0.5)
    assert store.at(300.0, 0.5).yaw_rad == pytest.approx(1.0)


def test_nan_attitude_is_not_recorded():
    store = TelemetryStore()
    _feed(store, t1_s=1.0)
    store.update(mavlink2.MAVLink_attitude_message(1000, float("nan"), 0.0, 0.0, 0, 0, 0), 101.004)
    assert math.isfinite(store.at(101.004, 0.5).roll_rad)
