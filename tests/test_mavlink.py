"""MAVLink encode -> decode with pymavlink's own parser, and a loop over real loopback UDP."""
import datetime as dt
import math
import socket
import time

import pytest

pytest.importorskip("pymavlink")

from pymavlink import mavutil  # noqa: E402
from pymavlink.dialects.v20 import common as mavlink2  # noqa: E402

from skyfix.contracts import Fix  # noqa: E402
from skyfix.firmware_bridge import messages  # noqa: E402
from skyfix.firmware_bridge.link import MavlinkBridge  # noqa: E402
from skyfix.firmware_bridge.publisher import FixPublisher  # noqa: E402
from tests.helpers import free_udp_port, wait_until  # noqa: E402

FIX = Fix(t_capture_us=1_000_000, lat_deg=38.9850328, lon_deg=-107.8843689, alt_msl_m=2620.5,
          horiz_accuracy_m=2.4, vel_north_m_s=3.0, vel_east_m_s=-1.5, speed_accuracy_m_s=0.4,
          yaw_rad=math.radians(90))


class _Sink:
    def __init__(self):
        self.data = b""

    def write(self, b):
        self.data += b


def _roundtrip(build):
    """Encode with one MAVLink object, decode the bytes with a fresh parser."""
    tx = mavlink2.MAVLink(_Sink(), srcSystem=1, srcComponent=191)
    tx.send(build(tx))
    rx = mavlink2.MAVLink(None)
    msgs = rx.parse_buffer(tx.file.data)
    assert len(msgs) == 1
    assert tx.file.data[0] == 0xFD  # MAVLink 2 start byte
    return msgs[0]


def test_gps_week_known_answer():
    # 2017-01-01 00:00:00 UTC is the start of GPS week 1930 plus 18 leap seconds.
    unix_us = int(dt.datetime(2017, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1e6)
    assert messages.gps_week_and_ms(unix_us) == (1930, 18_000)


def test_gps_input_encode_decode():
    unix_us = int(dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc).timestamp() * 1e6)
    msg = _roundtrip(lambda mav: messages.gps_input(mav, FIX, unix_us, vert_accuracy_m=5.0))
    assert msg.get_type() == "GPS_INPUT"
    assert msg.lat == 389850328 and msg.lon == -1078843689 and msg.alt == pytest.approx(2620.5)
    assert msg.fix_type == 3 and msg.time_week > 2400 and 0 <= msg.time_week_ms < 7 * 86400 * 1000
    assert msg.horiz_accuracy == pytest.approx(2.4) and msg.vert_accuracy == pytest.approx(5.0)
    assert msg.vn == pytest.approx(3.0) and msg.ve == pytest.approx(-1.5)
    flags = msg.ignore_flags
    for cleared in (mavlink2.GPS_INPUT_IGNORE_FLAG_HORIZONTAL_ACCURACY, mavlink2.GPS_INPUT_IGNORE_FLAG_VERTICAL_ACCURACY,
                    mavlink2.GPS_INPUT_IGNORE_FLAG_SPEED_ACCURACY, mavlink2.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ):
        assert not flags & cleared
    assert flags & mavlink2.GPS_INPUT_IGNORE_FLAG_VEL_VERT  # no vertical velocity estimate
    assert msg.hdop == pytest.approx(2.4 / messages.UERE_M) and msg.yaw == 9000


def test_gps_input_without_velocity_sets_its_ignore_flags():
    fix = Fix(0, 1.0, 2.0, 3.0, 4.0)
    msg = _roundtrip(lambda mav: messages.gps_input(mav, fix, 1_700_000_000_000_000, 5.0))
    assert msg.ignore_flags & mavlink2.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ
    assert not msg.ignore_flags & mavlink2.GPS_INPUT_IGNORE_FLAG_HORIZONTAL_ACCURACY
    assert msg.yaw == 0  # 0 = no heading


def test_global_position_sensor_encode_decode():
    msg = _roundtrip(lambda mav: messages.global_position_sensor(mav, FIX, 123_456_789, 80_000, 5.0))
    assert msg.get_msgId() == 296 and msg.get_type() == "GLOBAL_POSITION_SENSOR"
    assert msg.source == mavlink2.GLOBAL_POSITION_SRC_VISION
    assert msg.lat == 389850328 and msg.eph == pytest.approx(2.4) and msg.processing_time == 80_000
    assert math.isnan(msg.alt_ellipsoid) and msg.alt == pytest.approx(2620.5)


def test_broken_packet_is_rejected_by_the_parser():
    tx = mavlink2.MAVLink(_Sink(), srcSystem=1, srcComponent=191)
    tx.send(messages.gps_input(tx, FIX, 1_700_000_000_000_000, 5.0))
    raw = bytearray(tx.file.data)
    raw[20] ^= 0xFF  # flip payload bits: the CRC no longer matches
    rx = mavlink2.MAVLink(None)
    rx.robust_parsing = True
    msgs = rx.parse_buffer(bytes(raw)) or []
    assert all(m.get_type() == "BAD_DATA" for m in msgs)



def _vehicle_send(fc, t_boot_ms):
    fc.mav.heartbeat_send(mavlink2.MAV_TYPE_QUADROTOR, mavlink2.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 4)
    fc.mav.attitude_send(t_boot_ms, 0.01, -0.02, 1.2, 0, 0, 0)
    fc.mav.global_position_int_send(t_boot_ms, 0, 0, 2620_000, 120_000, 0, 0, 0, 65535)
    fc.mav.system_time_send(int(time.time() * 1e6), t_boot_ms)


def test_bridge_and_publisher_over_loopback_udp():
    port = free_udp_port()
    fc = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    bridge = MavlinkBridge(f"udpin:127.0.0.1:{port}", link_timeout_s=1.0).start()
    last_accept = {"t": time.monotonic()}

    def estimate(now_s):
        return FIX, now_s - last_accept["t"]

    pub = None
    try:
        deadline = time.monotonic() + 5
        while not bridge.wait_for_heartbeat(0.05) and time.monotonic() < deadline:
            _vehicle_send(fc, 1000)
        assert bridge.link_ok()
        for _ in range(3):
            _vehicle_send(fc, 2000)
        # The batch's messages are read one by one: wait for its height too, not only its clock.
        assert wait_until(lambda: (bridge.telemetry.clock.last_boot_s or 0) >= 2.0
                          and bridge.telemetry.at(time.monotonic(), max_age_s=1.0).alt_agl_m is not None)
        tel = bridge.telemetry.at(time.monotonic(), max_age_s=1.0)
        assert tel.yaw_rad == pytest.approx(1.2) and tel.alt_agl_m == pytest.approx(120.0)
        last_accept["t"] = time.monotonic()  # the measurement is fresh when publishing starts
        pub = FixPublisher(bridge, estimate, "ardupilot", rate_hz=10, max_age_s=0.6).start()
        got = []
        t_end = time.monotonic() + 0.5
        while time.monotonic() < t_end:
            m = fc.recv_match(type=["GPS_INPUT", "HEARTBEAT"], blocking=True, timeout=0.2)
            if m is not None:
                got.append(m)
        gps = [m for m in got if m.get_type() == "GPS_INPUT"]
        assert 3 <= len(gps) <= 7, len(gps)  # ~10 Hz for 0.5 s
        assert gps[0].lat == 389850328 and gps[0].get_srcComponent() == 191
        # By default neither velocity (too uncertain for EKF3's checks) nor heading is claimed.
        assert gps[0].ignore_flags & mavlink2.GPS_INPUT_IGNORE_FLAG_VEL_HORIZ
        assert gps[0].ignore_flags & mavlink2.GPS_INPUT_IGNORE_FLAG_SPEED_ACCURACY and gps[0].yaw == 0
        # Once the newest measurement is older than max_age_s, publishing stops.
        assert wait_until(lambda: pub.withheld > 0)
        while fc.recv_match(type="GPS_INPUT", blocking=False) is not None:
            pass
        assert fc.recv_match(type="GPS_INPUT", blocking=True, timeout=0.4) is None
    finally:
        if pub:
            pub.close()
        bridge.close()
        fc.close()


def test_silent_link_reconnects_and_recovers():
    port = free_udp_port()
    fc = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    bridge = MavlinkBridge(f"udpin:127.0.0.1:{port}", link_timeout_s=0.5).start()
    try:
        for _ in range(5):
            _vehicle_send(fc, 1000)
        assert bridge.wait_for_heartbeat(5.0)
        # The vehicle goes silent: the link times out and the bridge starts waiting for it.
        assert wait_until(lambda: not bridge.link_ok() and bridge.reconnects >= 1)
        assert bridge.telemetry.at(time.monotonic(), 0.5).yaw_rad is None  # no stale attitude
        # Garbage on the socket is counted and dropped; real packets still get through.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\xfd\x09garbage-not-mavlink" * 3, ("127.0.0.1", port))
        deadline = time.monotonic() + 3
        while not bridge.link_ok() and time.monotonic() < deadline:
            _vehicle_send(fc, 3000)
            time.sleep(0.05)
        assert bridge.link_ok()
        assert bridge.telemetry.at(time.monotonic(), 0.5).yaw_rad == pytest.approx(1.2)
    finally:
        bridge.close()
        fc.close()


def test_bridge_asks_for_the_telemetry_it_needs():
    """An autopilot that streams nothing on this port gets SET_MESSAGE_INTERVAL requests for
    ATTITUDE, GLOBAL_POSITION_INT and SYSTEM_TIME; optional streams are asked for only twice."""
    port = free_udp_port()
    fc = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    bridge = MavlinkBridge(f"udpin:127.0.0.1:{port}", link_timeout_s=5.0, heartbeat_hz=5.0).start()
    asked = {}
    try:
        t_end = time.monotonic() + 2.5
        while time.monotonic() < t_end:
            fc.mav.heartbeat_send(mavlink2.MAV_TYPE_QUADROTOR, mavlink2.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 4)
            m = fc.recv_match(type="COMMAND_LONG", blocking=True, timeout=0.2)
            if m is not None and m.command == mavlink2.MAV_CMD_SET_MESSAGE_INTERVAL:
                asked[int(m.param1)] = asked.get(int(m.param1), 0) + 1
                assert m.param2 > 0 and m.target_system == 1
    finally:
        bridge.close()
        fc.close()
    for required in (mavlink2.MAVLINK_MSG_ID_ATTITUDE, mavlink2.MAVLINK_MSG_ID_GLOBAL_POSITION_INT,
                     mavlink2.MAVLINK_MSG_ID_SYSTEM_TIME):
        assert asked.get(required, 0) >= 3, asked
    assert asked.get(mavlink2.MAVLINK_MSG_ID_ALTITUDE, 0) == 2  # optional: not nagged for ever


def test_a_velocity_claim_the_autopilot_cannot_use_is_withheld():
    """EKF3 fails its GPS check above 1.5 m/s of (low-passed, peak-held for ~10 s) speed accuracy
    and passes it again only below 1.0: with velocity on, such a message is not sent at all."""
    import dataclasses
    port = free_udp_port()
    fc = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    bridge = MavlinkBridge(f"udpin:127.0.0.1:{port}", link_timeout_s=1.0).start()
    claim = {"speed_accuracy_m_s": 1.2}
    pub = FixPublisher(bridge, lambda now_s: (dataclasses.replace(FIX, **claim), 0.1), "ardupilot",
                       send_velocity=True, max_speed_accuracy_m_s=1.0)
    try:
        deadline = time.monotonic() + 5
        while not bridge.wait_for_heartbeat(0.05) and time.monotonic() < deadline:
            _vehicle_send(fc, 1000)
        assert not pub.publish_once(time.monotonic()) and pub.withheld_speed == 1
        claim["speed_accuracy_m_s"] = None  # no claim at all: not sent either
        assert not pub.publish_once(time.monotonic()) and pub.withheld_speed == 2
        claim["speed_accuracy_m_s"] = 0.8
        assert pub.publish_once(time.monotonic())
        m = fc.recv_match(type="GPS_INPUT", blocking=True, timeout=1.0)
        assert m is not None and m.speed_accuracy == pytest.approx(0.8) and m.vn == pytest.approx(3.0)
        # Without velocity the speed accuracy is not claimed, so it never withholds.
        quiet = FixPublisher(bridge, lambda now_s: (dataclasses.replace(FIX, speed_accuracy_m_s=5.0), 0.1))
        assert quiet.publish_once(time.monotonic()) and quiet.withheld_speed == 0
        # PX4's GLOBAL_POSITION_SENSOR carries no velocity: EKF3's rule is not PX4's business.
        px4 = FixPublisher(bridge, lambda now_s: (dataclasses.replace(FIX, speed_accuracy_m_s=5.0,
                                                                     t_capture_us=int(now_s * 1e6)), 0.1),
                           "px4", send_velocity=True)
        assert px4.publish_once(time.monotonic()) and px4.withheld_speed == 0
    finally:
        bridge.close()
        fc.close()
