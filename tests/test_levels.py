"""Packs with finer tile levels: fixes for a vehicle that is lost below the main tiles' height."""
import math

import numpy as np
import pytest

from skyfix.config import NavConfig
from skyfix.contracts import Frame, Reason, Telemetry
from skyfix.edge.camera import PinholeCamera
from skyfix.errors import ModelMismatch, PackError
from skyfix.render.views import ViewPose, render_view

CAM = PinholeCamera.from_hfov(320, 240, 70.0)
LOW_M = 45.0  # the frame sees about 63 x 47 m: under half of a 100 m tile, most of a 40 m one


@pytest.fixture(scope="module")
def levelled_pack(tmp_path_factory, tiny_onnx_dir):
    """A synthetic 600 m map at 0.5 m/px as a pack of 100 m tiles (tiny towers, SIFT), and a copy
    with a level of 40 m tiles added as a user would (`skyfix tiles level`)."""
    import shutil

    from skyfix.edge.embedders import open_embedder
    from skyfix.edge.features import OpenCvExtractor
    from skyfix.geo import LocalFrame
    from skyfix.pack.canvas import MapCanvas
    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.build import add_level, tile_grid, write_pack
    from skyfix.tiles.embed import embed_tiles
    from skyfix.tiles.synthetic import synthetic_map
    folder = tmp_path_factory.mktemp("levels")
    img = synthetic_map(1200, seed=5)
    canvas = MapCanvas(img, np.ones(img.shape[:2], bool), 0.5, LocalFrame(46.0, 9.0), -300.0, 300.0)
    sat, drone = open_embedder(tiny_onnx_dir, "sat"), open_embedder(tiny_onnx_dir, "drone")
    tiles, _ = tile_grid(canvas, 100.0, 50.0)
    vectors = embed_tiles(canvas, tiles, sat, 32, progress=False)
    plain = write_pack(folder / "plain", canvas, tiles, vectors, model_id=sat.model_id, tile_px=sat.input_px,
                       stride_m=50.0, extractors=(OpenCvExtractor("sift"),), features_per_mpx=20000)
    shutil.copytree(plain, folder / "levels")
    said = []
    entry = add_level(folder / "levels", 40.0, 20.0, sat, progress=False, log=said.append)
    assert entry["tiles"] == 29 * 29 and any("40 m tiles every 20 m" in s for s in said)
    return TilePack.open(plain), TilePack.open(folder / "levels"), drone


def test_a_level_is_stored_searched_and_checked_like_the_main_tiles(levelled_pack, tmp_path):
    import shutil

    from skyfix.pack.tilepack import TilePack
    plain, pack, drone = levelled_pack
    assert plain.levels == [] and [lv.tile_size_m for lv in pack.levels] == [40.0]
    level = pack.levels[0]
    tid = 300
    scores, ids = level.search(level.index.reconstruct(tid)[None], 3)
    assert ids[0, 0] == tid and scores[0, 0] == pytest.approx(1.0, abs=1e-4)  # its own vector first
    near = level.ids_within(float(level.east_m[tid]), float(level.north_m[tid]), 25.0)
    assert tid in near and len(near) <= 9
    copy = shutil.copytree(pack.path, tmp_path / "pack")
    (copy / "levels/40/index.faiss").write_bytes(b"not an index")
    with pytest.raises(PackError, match="levels/40/index.faiss"):
        TilePack.open(copy)


def test_a_level_needs_the_packs_own_model_and_smaller_tiles(levelled_pack, tiny_onnx_dir):
    from skyfix.tiles.build import add_level
    plain, _, drone = levelled_pack

    class Other:
        model_id, input_px = "another-model", 224
    with pytest.raises(ModelMismatch, match="pack's own model"):
        add_level(plain.path, 40.0, 20.0, Other(), progress=False, log=lambda _: None)
    from skyfix.edge.embedders import open_embedder
    with pytest.raises(PackError, match="smaller than the pack's 100 m"):
        add_level(plain.path, 150.0, 50.0, open_embedder(tiny_onnx_dir, "sat"), progress=False, log=lambda _: None)


def _low_flight(pack, drone, n_frames: int = 14):
    """A vehicle lost at 45 m (no track, no prior), flying east at 6 m/s: (fixes with their
    errors m, reasons)."""
    from skyfix.edge.navigator import Navigator
    nav = Navigator(pack, drone, CAM, NavConfig(keypoints="sift", top_k=3, global_max_candidates=8))
    errors, reasons = [], []
    for i in range(n_frames):
        t_s = 0.5 * i
        pose = ViewPose(-120 + 6.0 * t_s, 40.0, LOW_M, 0.02 * math.sin(t_s), 0.02 * math.cos(t_s), math.radians(90))
        img, _, _ = render_view(pack.canvas(), CAM, pose)
        tel = Telemetry(int(t_s * 1e6), pose.roll_rad, pose.pitch_rad, pose.yaw_rad, LOW_M)
        res = nav.step(Frame(img, int(t_s * 1e6), tel, f"f{i}"))
        reasons.append(res.kind)
        if res.fix is not None:
            e, n, _ = pack.frame.to_enu(res.fix.lat_deg, res.fix.lon_deg)
            errors.append((math.hypot(e - pose.east_m, n - pose.north_m), res.fix.horiz_accuracy_m))
    return np.array(errors).reshape(-1, 2), reasons


def test_a_vehicle_lost_below_the_main_tiles_height_gets_fixes_from_the_finer_level(levelled_pack):
    plain, pack, drone = levelled_pack
    none, reasons = _low_flight(plain, drone)
    assert len(none) == 0 and set(reasons) == {Reason.CROP_OUTSIDE}
    got, reasons = _low_flight(pack, drone)
    assert len(got) >= 5, reasons
    assert np.median(got[:, 0]) < 1.5 and (got[:, 0] <= 3 * got[:, 1]).all(), got
