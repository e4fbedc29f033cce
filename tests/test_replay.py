"""`skyfix replay`: a simulated flight recorded as a user's would be (the autopilot's .tlog with its
GPS, the camera as an MP4), replayed and scored against that GPS; bad logs and videos."""
import datetime as dt
import struct

import cv2
import numpy as np
import pytest

from skyfix.replay.log import LogError, read_log

pytestmark = [pytest.mark.data, pytest.mark.slow]


@pytest.fixture(scope="module")
def recorded(colorado_pack, tmp_path_factory):
    """A 16 s live flight of the simulator over the Colorado pack, recorded (flight.tlog,
    flight.mp4) beside its own summary."""
    from skyfix.config import load_config
    from skyfix.edge.embedders import open_embedder
    from skyfix.pack.tilepack import TilePack
    from skyfix.sim.run import run_sim
    cfg = load_config(overrides={"sim": {"duration_s": 16.0, "route": "straight", "seed": 4}})
    out = tmp_path_factory.mktemp("recorded")
    model = TilePack.open(colorado_pack).manifest["model_source"]
    summary = run_sim(colorado_pack, open_embedder(model, "drone"), cfg, out_dir=out, progress=False, record=True)
    return summary, out, model


def _replay(recorded, colorado_pack, out, video=None, log=None, **kw):
    from skyfix.config import load_config
    from skyfix.replay.run import run_replay
    summary, folder, model = recorded
    cfg = load_config(overrides={"nav": {"model": model}})
    kw.setdefault("video_start", summary["recording"]["video_start_utc"])
    return run_replay(str(video or folder / "flight.mp4"), str(log or folder / "flight.tlog"), str(colorado_pack),
                      cfg, str(out), progress=False, **kw)


def test_the_replay_of_a_recorded_flight_gives_the_error_the_live_flight_gave(recorded, colorado_pack, tmp_path):
    summary, _, _ = recorded
    r = _replay(recorded, colorado_pack, tmp_path / "replay")
    assert r["n_published"] >= 20 and summary["n_published"] >= 50
    assert abs(r["error_m"]["median"] - summary["error_m"]["median"]) < 1.0, (r["error_m"], summary["error_m"])
    assert r["calibration"]["beyond_3x"] == 0
    off, _ = r["time_offset_estimate_s"]
    assert abs(off) < 0.3 and not r["warnings"]
    for name in ("fixes.csv", "fixes.geojson", "track.png", "report.json"):
        assert (tmp_path / "replay" / name).stat().st_size > 100
    # A camera clock a second off: the fixes lag the GPS, and that is not silent: a warning says
    # by how much the clock is off (beyond the nav.time_offset_sigma_s the accuracy allows for).
    late = _replay(recorded, colorado_pack, tmp_path / "late", time_offset_s=1.0)
    assert late["error_m"]["median"] > 5.0
    off, _ = late["time_offset_estimate_s"]
    assert off == pytest.approx(-1.0, abs=0.2)
    assert len(late["warnings"]) == 1 and f"{off:+.2f} s off" in late["warnings"][0]
    assert "--time-offset-s" in late["warnings"][0]


def _rewrite_tlog(src, dst, keep):
    """Copy a .tlog keeping only the messages `keep(msg)` accepts."""
    from pymavlink import mavutil
    conn = mavutil.mavlink_connection(str(src), dialect="ardupilotmega")
    with open(dst, "wb") as f:
        while (msg := conn.recv_match(blocking=False)) is not None:
            if msg.get_type() != "BAD_DATA" and keep(msg):
                f.write(struct.pack(">Q", int(msg._timestamp * 1e6)) + msg.get_msgbuf())
    conn.close()
    return dst


def test_bad_logs_and_videos_give_clear_messages(recorded, colorado_pack, tmp_path):
    summary, folder, _ = recorded
    no_attitude = _rewrite_tlog(folder / "flight.tlog", tmp_path / "no_att.tlog", lambda m: m.get_type() != "ATTITUDE")
    with pytest.raises(LogError, match="no ATTITUDE messages: the attitude"):
        read_log(no_attitude)
    no_gps = _rewrite_tlog(folder / "flight.tlog", tmp_path / "no_gps.tlog", lambda m: m.get_type() != "GPS_RAW_INT")
    with pytest.raises(LogError, match="no GPS_RAW_INT"):
        read_log(no_gps)
    start = dt.datetime.fromisoformat(summary["recording"]["video_start_utc"])
    with pytest.raises(LogError, match="does not overlap the log"):
        _replay(recorded, colorado_pack, tmp_path / "day", video_start=(start + dt.timedelta(days=1)).isoformat())
    # The log cut in the middle of a record (a file copied while it was written).
    data = (folder / "flight.tlog").read_bytes()
    (tmp_path / "cut.tlog").write_bytes(data[: int(len(data) * 0.6) + 5])
    cut = read_log(tmp_path / "cut.tlog")
    assert cut.partial_end and cut.span_s[1] - cut.span_s[0] < 12.0
    r = _replay(recorded, colorado_pack, tmp_path / "cut", log=tmp_path / "cut.tlog", every=3)
    assert any("past the log's end" in n and "truncated" in n for n in r["notes"]) and r["frames_without_telemetry"] > 0
    # A video shorter than the log: its first 5 s.
    cap, short = cv2.VideoCapture(str(folder / "flight.mp4")), tmp_path / "short.mp4"
    fps = cap.get(cv2.CAP_PROP_FPS)
    w = cv2.VideoWriter(str(short), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    for _ in range(int(5 * fps)):
        w.write(cap.read()[1])
    w.release()
    cap.release()
    r = _replay(recorded, colorado_pack, tmp_path / "short", video=short)
    assert any("the video covers 5 s of the log's" in n for n in r["notes"]) and r["frames"] >= 0.9 * 5 * fps
    with pytest.raises(LogError, match="a flight log is"):
        read_log(folder / "flight.mp4")


def _dataflash(path, tlog):
    """The .tlog's attitude, height and GPS written as an ArduPilot DataFlash log (FMT, ATT, POS,
    GPS records; TimeUS from a boot 60 s before the first record, tied to UTC by GPS week/ms)."""
    log = read_log(tlog)
    boot_utc = log.span_s[0] - 60.0
    fmts = {"ATT": (129, "Qfff", "TimeUS,Roll,Pitch,Yaw"), "POS": (130, "Qf", "TimeUS,RelHomeAlt"),
            "GPS": (131, "QBIHLL", "TimeUS,Status,GMS,GWk,Lat,Lng")}
    out = bytearray()
    for name, (mtype, fmt, labels) in fmts.items():
        length = 3 + struct.calcsize("<" + fmt.replace("L", "i"))
        out += b"\xa3\x95\x80" + struct.pack("<BB4s16s64s", mtype, length, name.encode(), fmt.encode(), labels.encode())
    records = []
    t, r, p, y = log.attitude
    records += [(ti, 129, struct.pack("<Qfff", int((ti - boot_utc) * 1e6), *np.degrees([a, b, c])))
                for ti, a, b, c in zip(t, r, p, y)]
    t, h = log.height
    records += [(ti, 130, struct.pack("<Qf", int((ti - boot_utc) * 1e6), hi)) for ti, hi in zip(t, h)]
    t, lat, lon = log.gps
    for ti, la, lo in zip(t, lat, lon):
        gps_s = ti + 18.0 - 315964800.0
        records.append((ti, 131, struct.pack("<QBIHii", int((ti - boot_utc) * 1e6), 3, int(round((gps_s % 604800) * 1e3)),
                                             int(gps_s // 604800), int(round(la * 1e7)), int(round(lo * 1e7)))))
    for _, mtype, payload in sorted(records, key=lambda rec: rec[0]):
        out += bytes([0xA3, 0x95, mtype]) + payload
    path.write_bytes(bytes(out))
    return path, log


def test_a_dataflash_log_reads_as_the_same_flight(recorded, tmp_path):
    _, folder, _ = recorded
    path, tlog = _dataflash(tmp_path / "flight.bin", folder / "flight.tlog")
    binlog = read_log(path)
    t = np.linspace(tlog.span_s[0] + 1, tlog.span_s[1] - 1, 25)
    for ti in t:
        a, b = tlog.telemetry_at(ti), binlog.telemetry_at(ti)
        # float32 fields and whole microseconds in the DataFlash records: millimetres, milliradians
        assert (b.roll_rad, b.pitch_rad) == pytest.approx((a.roll_rad, a.pitch_rad), abs=2e-3)
        assert b.alt_agl_m == pytest.approx(a.alt_agl_m, abs=0.02)
        assert binlog.gps_at(ti) == pytest.approx(tlog.gps_at(ti), abs=2e-7)


def test_replay_crops_with_the_onboard_telemetry_path(recorded):
    """The log reaches the navigator through the TelemetryStore a live link fills (its
    interpolation, gap rules and value checks): at the frames' times it gives what the log holds,
    and nothing before the log starts."""
    from skyfix.replay.log import LogTelemetry
    _, folder, _ = recorded
    log = read_log(folder / "flight.tlog")
    onboard = LogTelemetry(log)
    t = np.linspace(log.span_s[0] + 1, log.span_s[1] - 1, 40)
    assert onboard.at(log.span_s[0] - 5.0) is None
    for ti in t:
        a, b = log.telemetry_at(ti), onboard.at(ti)
        assert (b.roll_rad, b.pitch_rad, b.yaw_rad) == pytest.approx((a.roll_rad, a.pitch_rad, a.yaw_rad), abs=1e-3)
        # time_boot_ms is whole milliseconds: the noisy simulated baro moves centimetres in half of one
        assert b.alt_agl_m == pytest.approx(a.alt_agl_m, abs=0.1)
    assert onboard.store.received > 0 and not onboard.store.rejected


def test_photos_timed_by_their_exif_replay_against_the_log(recorded, colorado_pack, tmp_path):
    """Every 4th frame of the recorded video saved as a JPEG whose EXIF DateTimeOriginal and
    SubSecTimeOriginal are its capture time (UTC): replayed against the .tlog, they are placed
    as the video's frames are; a photo without a time is left out and said."""
    from PIL import Image
    summary, folder, _ = recorded
    start = dt.datetime.fromisoformat(summary["recording"]["video_start_utc"])
    cap = cv2.VideoCapture(str(folder / "flight.mp4"))
    photos = tmp_path / "photos"
    photos.mkdir()
    i = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        t_ms = cap.get(cv2.CAP_PROP_POS_MSEC)  # after the read: this frame's time stamp
        if i % 4 == 0:
            when = (start + dt.timedelta(milliseconds=t_ms)).replace(tzinfo=None)
            exif = Image.Exif()
            exif.get_ifd(0x8769).update({36867: when.strftime("%Y:%m:%d %H:%M:%S"),
                                         37521: f"{when.microsecond // 1000:03d}"})
            Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).save(photos / f"p{i:04d}.jpg", exif=exif, quality=95)
        i += 1
    cap.release()
    Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(photos / "zz_untimed.jpg")
    from skyfix.config import load_config
    from skyfix.replay.run import run_replay
    r = run_replay(None, str(folder / "flight.tlog"), str(colorado_pack), load_config(overrides={"nav": {"model": recorded[2]}}),
                   str(tmp_path / "out"), progress=False, photos=str(photos))
    assert r["n_published"] >= 5 and r["error_m"]["median"] < 3.0 and r["calibration"]["beyond_3x"] == 0
    assert any("1 photos without an EXIF capture time" in n for n in r["notes"])
