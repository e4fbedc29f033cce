"""The link under attack, over real loopback UDP: spoofed senders, spoofed values, floods."""
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
from skyfix.firmware_bridge.telemetry import TelemetryStore  # noqa: E402
from tests.helpers import free_udp_port, wait_until  # noqa: E402

FIX = Fix(t_capture_us=1_000_000, lat_deg=38.985, lon_deg=-107.884, alt_msl_m=2620.5, horiz_accuracy_m=2.4)


def _vehicle(fc, boot_ms, yaw=1.2, rel_alt_mm=120_000, unix_us=None):
    fc.mav.heartbeat_send(mavlink2.MAV_TYPE_QUADROTOR, mavlink2.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 4)
    fc.mav.attitude_send(boot_ms, 0.01, -0.02, yaw, 0, 0, 0)
    fc.mav.global_position_int_send(boot_ms, 0, 0, 2620_000, rel_alt_mm, 0, 0, 0, 65535)
    fc.mav.system_time_send(int(time.time() * 1e6) if unix_us is None else unix_us, boot_ms)


@pytest.fixture()
def link():
    """A bridge on a UDP server port, bound to an autopilot (system 1, component 1)."""
    port = free_udp_port()
    fc = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    bridge = MavlinkBridge(f"udpin:127.0.0.1:{port}", link_timeout_s=2.0).start()
    t0 = time.monotonic()
    while not bridge.wait_for_heartbeat(0.05):
        _vehicle(fc, 1000)
        assert time.monotonic() - t0 < 5, "no heartbeat"
    yield port, fc, bridge
    bridge.close()
    fc.close()


def _settle(fc, bridge, boot_ms, n=5):
    """Send n rounds of the vehicle's messages and wait until the bridge has taken the last."""
    for i in range(n):
        _vehicle(fc, boot_ms + 20 * i)
    last_s = (boot_ms + 20 * (n - 1)) / 1e3
    assert wait_until(lambda: (bridge.telemetry.clock.last_boot_s or 0) >= last_s), "the bridge took nothing"


def test_a_spoofer_with_another_system_id_changes_nothing(link):
    port, fc, bridge = link
    spoof = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=42, source_component=1)
    twin = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    try:
        _settle(fc, bridge, 2000)
        for i in range(20):  # another system, and one that copies the autopilot's ids
            _vehicle(spoof, 2200 + 10 * i, yaw=-2.0, rel_alt_mm=500_000)
            _vehicle(twin, 2200 + 10 * i, yaw=-2.5, rel_alt_mm=900_000)
        _settle(fc, bridge, 2400)
        tel = bridge.telemetry.at(time.monotonic(), 1.0)
        assert tel.yaw_rad == pytest.approx(1.2) and tel.alt_agl_m == pytest.approx(120.0)
        assert bridge.counters()["foreign_datagrams"] >= 80  # both were dropped unread, and counted
        assert bridge.target_system == 1
    finally:
        spoof.close()
        twin.close()


def test_before_an_autopilot_speaks_nothing_is_taken_or_bound_to_a_ground_station():
    port = free_udp_port()
    gcs = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=255, source_component=190)
    bridge = MavlinkBridge(f"udpin:127.0.0.1:{port}", link_timeout_s=2.0).start()
    try:
        for i in range(10):
            gcs.mav.heartbeat_send(mavlink2.MAV_TYPE_GCS, mavlink2.MAV_AUTOPILOT_INVALID, 0, 0, 4)
            gcs.mav.attitude_send(1000 + i, 0.0, 0.0, 3.0, 0, 0, 0)
            time.sleep(0.01)
        assert not bridge.wait_for_heartbeat(0.3)
        assert not bridge.binding.bound and bridge.dropped["unbound"] >= 10
        # Nothing was sent to it either: no heartbeat, no stream requests.
        assert gcs.recv_match(blocking=True, timeout=1.2) is None
    finally:
        bridge.close()
        gcs.close()


def test_a_spoofed_system_time_changes_nothing_and_publishing_goes_on(link):
    port, fc, bridge = link
    _settle(fc, bridge, 3000)
    offset = bridge.telemetry.unix_offset_s
    fc.mav.system_time_send(2 ** 63, 3200)   # from the autopilot itself: a corrupt value
    fc.mav.system_time_send(int((time.time() + 3 * 86400) * 1e6), 3210)  # a jump of 3 days
    assert wait_until(lambda: sum(bridge.counters()["rejected_values"].values()) >= 2)
    assert bridge.telemetry.unix_offset_s == pytest.approx(offset, abs=0.5)
    rejected = bridge.counters()["rejected_values"]
    assert rejected["SYSTEM_TIME: unix time outside 2020-2100"] == 1
    assert rejected["SYSTEM_TIME: step against the established clock"] == 1
    pub = FixPublisher(bridge, lambda now: (FIX, 0.1), rate_hz=10, max_age_s=1.0).start()
    try:
        got = [fc.recv_match(type="GPS_INPUT", blocking=True, timeout=0.6) for _ in range(5)]
        assert len(got) == 5 and all(2300 < m.time_week < 2500 for m in got)
        assert bridge.encode_failures == 0
    finally:
        pub.close()


def test_a_flood_of_junk_keeps_publishing_at_rate_and_leaves_no_state(link):
    port, fc, bridge = link
    _settle(fc, bridge, 4000)
    pub = FixPublisher(bridge, lambda now: (FIX, 0.1), rate_hz=10, max_age_s=1.0).start()
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(200)]
    try:
        junk = b"\xfd\x09\x00\x00\x00\x01\x01\x1e\x00\x00" + bytes(range(40))
        t0, n = time.monotonic(), 0
        while n < 6000:  # 3,000 datagrams/s for 2 s: 8x the rate of the attack in the issue
            for s in senders:
                s.sendto(junk, ("127.0.0.1", port))
                n += 1
            _vehicle(fc, 4200 + n // 200)
            time.sleep(max(0.0, t0 + n / 3000 - time.monotonic()))
        while fc.recv_match(type="GPS_INPUT", blocking=False) is not None:
            pass
        t0 = time.monotonic()
        got = 0
        while time.monotonic() - t0 < 1.0:
            if fc.recv_match(type="GPS_INPUT", blocking=True, timeout=0.2) is not None:
                got += 1
        assert 8 <= got <= 12, got   # still 10 Hz to the autopilot
        assert len(bridge.conn.clients) == 0  # no memory of who wrote
        for s in senders[:20]:       # and none of the junk senders was answered
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1024)
        # Dropped at skyfix's door and counted (the rest the kernel's socket buffer dropped).
        assert bridge.counters()["foreign_datagrams"] >= 1000
    finally:
        pub.close()
        for s in senders:
            s.close()


def test_out_of_range_telemetry_is_refused_and_counted():
    store = TelemetryStore()
    m = mavlink2.MAVLink(None, srcSystem=1, srcComponent=1)
    store.update(m.attitude_encode(1000, 0.1, 0.0, 1.0, 0, 0, 0), 10.0)
    for bad in (m.attitude_encode(1100, float("nan"), 0.0, 1.0, 0, 0, 0),
                m.attitude_encode(1100, 0.0, 3.0, 1.0, 0, 0, 0),
                m.global_position_int_encode(1100, 0, 0, 0, 90_000_000, 0, 0, 0, 0),   # 90 km AGL
                m.attitude_encode(10 ** 9, 0.0, 0.0, -1.0, 0, 0, 0)):                   # boot leaps 11 days
        store.update(bad, 10.1)
    assert sum(store.rejected.values()) == 4
    tel = store.at(10.0, 0.5)
    assert tel.roll_rad == pytest.approx(0.1) and tel.yaw_rad == pytest.approx(1.0)


def test_a_real_clock_step_is_taken_once_confirmed():
    store = TelemetryStore()
    m = mavlink2.MAVLink(None, srcSystem=1, srcComponent=1)
    now_us = int(time.time() * 1e6)
    store.update(m.system_time_encode(now_us, 1000), 1.0)
    for i in range(5):  # the FC's clock really stepped by an hour (e.g. a time sync)
        store.update(m.system_time_encode(now_us + 3600 * 10 ** 6 + i * 10 ** 5, 1100 + 100 * i), 1.1 + 0.1 * i)
    assert store.unix_offset_s == pytest.approx(now_us / 1e6 + 3600 - 1.0, abs=1.0)


def test_encoder_refuses_an_impossible_fix_and_the_bridge_counts_it(caplog):
    import dataclasses
    bad = dataclasses.replace(FIX, lat_deg=float("nan"))
    with pytest.raises(ValueError, match="out of range"):
        messages.gps_input(mavlink2.MAVLink(None), bad, int(time.time() * 1e6), 5.0)
    # Without a believable date the fix still goes out, with no GPS time claimed.
    msg = messages.gps_input(mavlink2.MAVLink(None), FIX, 2 ** 62, 5.0)
    assert msg.time_week == 0 and msg.time_week_ms == 0 and msg.lat == 389850000
    port = free_udp_port()
    bridge = MavlinkBridge(f"udpout:127.0.0.1:{port}")
    bridge._open()
    try:
        with caplog.at_level("ERROR", logger="skyfix.link"):
            assert not bridge.send(lambda mav: messages.gps_input(mav, bad, int(time.time() * 1e6), 5.0))
            assert not bridge.send(lambda mav: mav.attitude_encode(2 ** 40, 0, 0, 0, 0, 0, 0))  # uint32 overflow
        assert bridge.encode_failures == 2
        assert any("cannot be encoded" in r.message for r in caplog.records)
    finally:
        bridge.conn.close()


def test_publisher_sends_nothing_until_the_autopilot_has_spoken():
    """A udpin link has no peer before the autopilot's first message: nothing is broadcast."""
    port = free_udp_port()
    bridge = MavlinkBridge(f"udpin:127.0.0.1:{port}").start()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.sendto(b"hello", ("127.0.0.1", port))
        probe.settimeout(1.5)
        with pytest.raises(socket.timeout):
            probe.recv(1024)   # no heartbeat, no position for a stranger
        assert bridge.sent == 0
    finally:
        probe.close()
        bridge.close()


# ---- MAVLink 2 signing -----------------------------------------------------------------------------
def _key_file(tmp_path, text="correct horse battery staple", mode=0o600):
    path = tmp_path / "signing.key"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_signing_key_file_must_be_private_and_long_enough(tmp_path):
    import hashlib

    from skyfix.errors import SkyfixError
    from skyfix.firmware_bridge.link import read_signing_key
    good = _key_file(tmp_path)
    assert read_signing_key(good) == hashlib.sha256(b"correct horse battery staple").digest()
    good.chmod(0o644)
    with pytest.raises(SkyfixError, match="accessible by others.*chmod 600"):
        read_signing_key(good)
    with pytest.raises(SkyfixError, match="shorter than 8"):
        read_signing_key(_key_file(tmp_path, "short"))
    with pytest.raises(SkyfixError, match="No such file"):
        read_signing_key(tmp_path / "absent.key")


def test_a_signed_link_takes_the_autopilot_and_refuses_the_impostors(tmp_path):
    from skyfix.config import BridgeConfig
    port = free_udp_port()
    key_path = _key_file(tmp_path)
    cfg = BridgeConfig(connection=f"udpin:127.0.0.1:{port}", link_timeout_s=3.0, signing_key_file=str(key_path))
    bridge = MavlinkBridge.from_config(cfg).start()
    unsigned = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    wrong = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    wrong.setup_signing(bytes(32), sign_outgoing=True)
    fc = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    fc.setup_signing(bridge.signing_key, sign_outgoing=True)
    try:
        for i in range(10):  # the impostors speak first, with the autopilot's ids
            _vehicle(unsigned, 1000 + i, yaw=-2.0)
            _vehicle(wrong, 1000 + i, yaw=-2.5)
            time.sleep(0.01)
        assert not bridge.wait_for_heartbeat(0.3) and not bridge.binding.bound
        assert bridge.counters()["signature_rejects"] >= 60
        t0 = time.monotonic()
        while not bridge.wait_for_heartbeat(0.05):
            _vehicle(fc, 2000)
            assert time.monotonic() - t0 < 5
        _settle(fc, bridge, 2100)
        assert bridge.telemetry.at(time.monotonic(), 1.0).yaw_rad == pytest.approx(1.2)
        # What skyfix sends is signed with the same key: the autopilot's parser accepts it.
        hb = fc.recv_match(type="HEARTBEAT", blocking=True, timeout=2.5)
        assert hb is not None and hb.get_srcComponent() == mavlink2.MAV_COMP_ID_ONBOARD_COMPUTER
        assert fc.mav.signing.goodsig_count >= 1
    finally:
        for c in (unsigned, wrong, fc):
            c.close()
        bridge.close()


class _Clock:
    """An autopilot's boot clock in ms, running from boot_ms now."""

    def __init__(self, boot_ms: int):
        self.t0, self.boot_ms = time.monotonic(), boot_ms

    def __call__(self) -> int:
        return self.boot_ms + int((time.monotonic() - self.t0) * 1e3)


def _stream(sender, clock, seconds, until=None, **values):
    """Send the vehicle's messages at 20 Hz for `seconds`, or, with `until`, until it holds
    (True) or `seconds` pass (False): a deadline, not a guess of how fast the bridge is."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _vehicle(sender, clock(), **values)
        time.sleep(0.05)
        if until is not None and until():
            return True
    return until is None


def test_an_impostor_waiting_for_a_radio_fade_does_not_take_the_link(link):
    """The autopilot goes silent for 4 s (link timeout 2 s) while senders with its ids wait on
    other ports: one with its own clock, one that guesses the clock but not the height. Neither
    is taken, their datagrams are counted (and the counters survive the silence), and the
    autopilot's own endpoint gets the link back the moment it speaks."""
    port, fc, bridge = link
    fc_clock = _Clock(6000)
    _stream(fc, fc_clock, 0.5)
    own_clock = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    guesser = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    try:
        _vehicle(own_clock, 100)  # while the autopilot talks: dropped unread
        assert wait_until(lambda: bridge.counters()["foreign_datagrams"] >= 4)
        foreign_before = bridge.counters()["foreign_datagrams"]
        impostor_clock = _Clock(900_000)
        end = time.monotonic() + 4.0
        while time.monotonic() < end:  # the fade: only the impostors speak
            _vehicle(own_clock, impostor_clock(), yaw=1.9)
            _vehicle(guesser, fc_clock(), yaw=1.3, rel_alt_mm=300_000)
            time.sleep(0.05)
        tel = bridge.telemetry.get("ATTITUDE", 10.0, time.monotonic())
        assert tel.yaw == pytest.approx(1.2)  # still the autopilot's last word
        counters = bridge.counters()
        assert counters["rebinds"] == [] and bridge.reconnects == 1
        assert counters["rebind_refused"]["boot clock does not continue"] > 10
        assert counters["rebind_refused"]["height does not continue"] > 10
        assert counters["foreign_datagrams"] >= foreign_before and bridge.dropped["foreign endpoint"] > 20
        # The autopilot is back, from its own endpoint.
        assert _stream(fc, fc_clock, 5.0, until=lambda: bridge.telemetry.at(time.monotonic(), 0.5).yaw_rad
                       == pytest.approx(1.25), yaw=1.25)
        assert bridge.counters()["rebinds"] == []
    finally:
        own_clock.close()
        guesser.close()


def test_the_autopilot_coming_back_from_a_new_port_is_re_bound_and_said(link, caplog):
    """A radio reset: the same autopilot (its boot clock, attitude and height continue) speaks
    from another port after 3 s of silence. It is re-bound after proving itself, the re-bind is
    logged with both endpoints, and fixes go to the new port."""
    port, fc, bridge = link
    clock = _Clock(20_000)
    _stream(fc, clock, 0.5)
    old_endpoint = bridge.conn.peer
    time.sleep(3.0)  # silent
    fc2 = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    pub = FixPublisher(bridge, lambda now: (FIX, 0.1), rate_hz=10, max_age_s=1.0).start()
    try:
        assert _stream(fc2, clock, 8.0, until=lambda: bool(bridge.rebinds), yaw=1.22)
        _stream(fc2, clock, 0.2, yaw=1.22)
        assert len(bridge.rebinds) == 1 and bridge.rebinds[0][0] == old_endpoint
        assert bridge.conn.peer != old_endpoint
        assert bridge.telemetry.at(time.monotonic(), 0.5).yaw_rad == pytest.approx(1.22)
        assert any("re-bound the autopilot" in r.getMessage() for r in caplog.records)
        got = fc2.recv_match(type="GPS_INPUT", blocking=True, timeout=1.0)
        assert got is not None and got.lat == int(FIX.lat_deg * 1e7)
    finally:
        pub.close()
        fc2.close()
