"""`skyfix locate`: photos located offline over a pack, one row per photo, on simulated survey
photos of the shared Colorado map (EXIF GPS = the truth, a noisy telemetry CSV)."""
import csv
import json

import numpy as np
import pytest

from skyfix.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.data]


@pytest.fixture(scope="module")
def photos(colorado_pack, tmp_path_factory):
    from skyfix.edge.camera import PinholeCamera
    from skyfix.sim.photos import write_photo_set
    from skyfix.pack.tilepack import TilePack
    folder = tmp_path_factory.mktemp("photos")
    csv_path = write_photo_set(TilePack.open(colorado_pack).canvas(), PinholeCamera.from_hfov(640, 480, 70.0),
                               folder, 6, seed=3)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not a photo")
    return folder, csv_path


def _cfg(xfeat_dir):
    return load_config(overrides={"nav": {"features_model": str(xfeat_dir)}})


def test_photos_are_located_within_their_accuracy(colorado_pack, photos, xfeat_dir, tmp_path, caplog):
    from skyfix.edge.locate import run_locate
    folder, csv_path = photos
    rows = run_locate(str(colorado_pack), [str(folder)], str(tmp_path / "fixes.csv"), _cfg(xfeat_dir),
                      telemetry_csv=str(csv_path))
    assert any("skipped" in m and "notes.txt" in m for m in caplog.messages)  # said, not silently dropped
    assert [r.name for r in rows] == ["broken.jpg"] + [f"photo_{i:03d}.jpg" for i in range(6)]
    assert rows[0].reason == "bad frame" and rows[0].lat_deg is None
    located = [r for r in rows if r.lat_deg is not None]
    assert len(located) >= 5
    for r in located:  # EXIF GPS is the truth; the fix must stand behind its accuracy
        assert r.error_m is not None and r.error_m < 3 * r.accuracy_m and r.error_m < 10
        assert r.time_utc.startswith("2026-06-01T10:00") and r.inliers >= 10 and 0.8 < r.scale < 1.25
    with open(tmp_path / "fixes.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 7 and float(table[1]["lat_deg"]) == pytest.approx(rows[1].lat_deg)
    assert (tmp_path / "fixes.png").stat().st_size > 10000


def test_geojson_and_a_photo_without_height(colorado_pack, photos, xfeat_dir, tmp_path):
    from skyfix.edge.locate import run_locate
    folder, csv_path = photos
    rows = run_locate(str(colorado_pack), [str(folder / "photo_000.jpg"), str(folder / "photo_001.jpg")],
                      str(tmp_path / "fixes.geojson"), _cfg(xfeat_dir))
    assert all(r.reason == "height missing" for r in rows)  # no CSV, no --agl-m: refused, not guessed
    assert all("--agl-m" in r.detail for r in rows)  # and the user is told how to give it
    with open(csv_path) as f:
        agl_m = float(next(csv.DictReader(f))["agl_m"])
    rows = run_locate(str(colorado_pack), [str(folder / "photo_000.jpg")], str(tmp_path / "fixes.geojson"),
                      _cfg(xfeat_dir), agl_m=agl_m)  # no attitude, no heading: level assumed, rotation searched
    assert rows[0].lat_deg is not None and "rotation searched" in rows[0].detail
    assert rows[0].error_m < 3 * rows[0].accuracy_m
    doc = json.loads((tmp_path / "fixes.geojson").read_text())
    assert sorted(f["properties"]["kind"] for f in doc["features"]) == ["fix", "reference"]
    assert all(len(f["geometry"]["coordinates"]) == 2 for f in doc["features"])


def test_a_wrong_height_on_a_tilted_camera_is_corrected_by_the_match_scale(colorado_pack, xfeat_dir, tmp_path):
    """25 deg tilt, telemetry height 13 % low, camera resection off (so only the telemetry
    places the nadir): the crop's offset from the nadir (about 56 m) must be scaled by the
    match's scale, or the fix lands several metres off with a small accuracy."""
    from skyfix.edge.camera import PinholeCamera
    from skyfix.edge.locate import run_locate
    from skyfix.sim.photos import write_photo_set
    from skyfix.pack.tilepack import TilePack
    csv_path = write_photo_set(TilePack.open(colorado_pack).canvas(), PinholeCamera.from_hfov(640, 480, 70.0),
                               tmp_path / "photos", 4, seed=4, tilt_deg=25.0, height_noise_frac=0.0)
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    for r in rows[1:]:
        r[4] = f"{float(r[4]) * 0.87:.2f}"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    cfg = load_config(overrides={"nav": {"features_model": str(xfeat_dir), "resect_camera": False}})
    located = [r for r in run_locate(str(colorado_pack), [str(tmp_path / "photos")], str(tmp_path / "f.csv"), cfg,
                                     telemetry_csv=str(csv_path)) if r.lat_deg is not None]
    assert len(located) >= 3
    for r in located:
        assert r.scale == pytest.approx(1 / 0.87, abs=0.03)
        assert r.error_m < 5.0 and r.error_m < 3 * r.accuracy_m


def test_offline_replay_of_a_recorded_folder_uses_the_capture_times(colorado_pack, xfeat_dir, tmp_path):
    """`skyfix fly --offline`: a folder of photos taken at 3 Hz along a line (EXIF times with
    milliseconds, a telemetry CSV), no autopilot: frames are timed by when they were taken,
    the track confirms, and fixes.csv holds a row per frame."""
    from skyfix.edge.camera import PinholeCamera
    from skyfix.edge.fly import run_fly
    from skyfix.edge.sources import FolderSource
    from skyfix.geo import haversine_m
    from skyfix.sim.photos import write_photo_sequence
    from skyfix.pack.tilepack import TilePack
    folder = tmp_path / "flight"
    csv_path = write_photo_sequence(TilePack.open(colorado_pack).canvas(), PinholeCamera.from_hfov(640, 480, 70.0),
                                    folder, 12, (-150.0, 0.0), (10.0, 0.0))
    source = FolderSource(folder, csv_path)
    times = [source.read().t_capture_mono_s for _ in range(3)]
    assert np.diff(times) == pytest.approx([1 / 3, 1 / 3], abs=2e-3)  # taken, not read, times
    cfg = load_config(overrides={"nav": {"pack": str(colorado_pack), "model": str(TilePack.open(colorado_pack).manifest["model_source"]),
                                         "features_model": str(xfeat_dir), "source": str(folder),
                                         "telemetry_csv": str(csv_path), "gallery_out": str(tmp_path / "out" / "gallery.npz")}})
    summary = run_fly(cfg, offline=True)
    with open(summary["fixes_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and summary["published"] == 0
    fixes = [r for r in rows if r["lat_deg"]]
    assert len(fixes) >= 8 and rows[0]["reason"] == "acquiring"
    from skyfix.edge.sources import read_exif
    for r in fixes:
        ref = read_exif(folder / r["name"])
        err = haversine_m(ref["lat_deg"], ref["lon_deg"], float(r["lat_deg"]), float(r["lon_deg"]))
        assert err < 3 * float(r["horiz_accuracy_m"]) and err < 5


def test_a_recorded_heading_the_image_contradicts_is_overruled_only_by_a_strong_match(colorado_pack, xfeat_dir,
                                                                                        tmp_path):
    """Two photos whose recorded heading is 180 and 90 deg wrong (a gimbal-yaw convention, a bad
    magnetometer) are placed with the image's heading, and the detail says so; a photo with the
    right heading is untouched, and a photo of another place is never placed whatever its heading."""
    import shutil

    import cv2

    from skyfix.edge.camera import PinholeCamera
    from skyfix.edge.locate import run_locate
    from skyfix.pack.tilepack import TilePack
    from skyfix.sim.photos import write_photo_set
    from tests.conftest import SHARED
    folder = tmp_path / "photos"
    csv_path = write_photo_set(TilePack.open(colorado_pack).canvas(), PinholeCamera.from_hfov(640, 480, 70.0),
                               folder, 3, seed=5)
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    rows[1][3] = f"{float(rows[1][3]) + 180.0:.2f}"
    rows[2][3] = f"{float(rows[2][3]) + 90.0:.2f}"
    other = cv2.resize(cv2.imread(str(SHARED / "levircd" / "B" / "test_1.png")), (640, 480))
    cv2.imwrite(str(folder / "elsewhere.jpg"), other)
    rows.append(["elsewhere.jpg", "0", "0", "30", rows[1][4]])
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    # The test pack's towers are tiny and untrained: more global candidates make up for them.
    cfg = load_config(overrides={"nav": {"features_model": str(xfeat_dir), "global_max_candidates": 40}})
    out = run_locate(str(colorado_pack), [str(folder)], str(tmp_path / "f.csv"), cfg, telemetry_csv=str(csv_path))
    by_name = {r.name: r for r in out}
    assert sum("used instead" in r.detail for r in out) == 2
    for name in ("photo_000.jpg", "photo_001.jpg"):
        r = by_name[name]
        assert r.lat_deg is not None and "used instead" in r.detail, (name, r.reason, r.detail)
        assert r.error_m < 3 * r.accuracy_m and r.error_m < 10
    assert by_name["photo_002.jpg"].lat_deg is not None and "used instead" not in by_name["photo_002.jpg"].detail
    assert by_name["elsewhere.jpg"].lat_deg is None and "used instead" not in by_name["elsewhere.jpg"].detail
    shutil.rmtree(folder)
