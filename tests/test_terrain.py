"""Terrain: a DEM into a pack (any CRS, no-data, bad files), and the navigator over relief with
and without it."""
import math

import numpy as np
import pytest

from skyfix.config import NavConfig
from skyfix.contracts import Frame, Telemetry
from skyfix.edge.camera import PinholeCamera
from skyfix.errors import ImageError, PackError
from skyfix.render.views import ViewPose, render_view

CAM = PinholeCamera.from_hfov(320, 240, 70.0)
BASE_M = 1500.0   # the DEM's height of the take-off ground
SLOPE_DEG = 6.0   # rising to the east


def _relief(east_m, north_m):
    """Heights over the take-off ground (0 at 0, 0): a 6 deg slope up to the east and a bump."""
    e, n = np.asarray(east_m, float), np.asarray(north_m, float)
    return math.tan(math.radians(SLOPE_DEG)) * e + 8.0 * np.sin(n / 60.0) * np.cos(e / 80.0)


@pytest.fixture(scope="module")
def relief_pack(tmp_path_factory, textured_canvas, tiny_onnx_dir):
    """The textured map as a pack (tiny towers, SIFT) and a copy with the relief as its DEM
    (a GeoTIFF in EPSG:3857, added as a user would)."""
    pytest.importorskip("rasterio")
    import shutil

    from skyfix.edge.embedders import open_embedder
    from skyfix.edge.features import OpenCvExtractor
    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.build import tile_grid, write_pack
    from skyfix.tiles.embed import embed_tiles
    from skyfix.tiles.terrain import add_terrain, write_dem
    folder = tmp_path_factory.mktemp("terrain")
    emb = open_embedder(tiny_onnx_dir, "drone")
    tiles, _ = tile_grid(textured_canvas, 100.0, 50.0)
    vectors = embed_tiles(textured_canvas, tiles, open_embedder(tiny_onnx_dir, "sat"), 32, progress=False)
    flat = write_pack(folder / "flat", textured_canvas, tiles, vectors, model_id=emb.model_id, tile_px=emb.input_px,
                      stride_m=50.0, extractors=(OpenCvExtractor("sift"),))
    shutil.copytree(flat, folder / "dem")
    dem = write_dem(folder / "dem.tif", textured_canvas.frame, textured_canvas.bounds_en(),
                    lambda e, n: BASE_M + _relief(e, n), cell_m=2.0, crs="EPSG:3857")
    add_terrain(folder / "dem", dem, log=lambda _: None)
    return TilePack.open(flat), TilePack.open(folder / "dem"), emb, dem


def test_the_dem_is_resampled_onto_the_pack_grid_from_another_crs(relief_pack):
    _, pack, _, _ = relief_pack
    terrain = pack.terrain
    rng = np.random.default_rng(0)
    e, n = rng.uniform(-280, 280, 200), rng.uniform(-280, 280, 200)
    assert terrain.height_m(e, n) == pytest.approx(BASE_M + _relief(e, n), abs=0.3)
    assert terrain.height_at(5000.0, 0.0) is None  # off the grid: the terrain does not say
    assert pack.manifest["terrain"]["source"] == "dem.tif" and "terrain.npy" in pack.manifest["files"]


def test_dem_holes_are_no_data_and_bad_dems_are_refused(tmp_path, textured_canvas):
    pytest.importorskip("rasterio")
    from skyfix.tiles.terrain import terrain_heights, write_dem
    frame, bounds = textured_canvas.frame, textured_canvas.bounds_en()
    holed = write_dem(tmp_path / "holed.tif", frame, bounds,
                      lambda e, n: np.where(np.asarray(e) > 100.0, -9999.0, BASE_M + _relief(e, n)), cell_m=4.0)
    t = terrain_heights(holed, frame, bounds)
    assert t.height_at(-100.0, 0.0) == pytest.approx(BASE_M + _relief(-100.0, 0.0), abs=0.5)
    assert t.height_at(200.0, 0.0) is None and t.height_at(100.0 + 2 * t.gsd_m, 0.0) is None
    feet = write_dem(tmp_path / "feet.tif", frame, bounds, lambda e, n: 30000.0 + 0 * np.asarray(e), cell_m=10.0)
    with pytest.raises(ImageError, match="not ground heights in metres"):
        terrain_heights(feet, frame, bounds)
    elsewhere = (bounds[0] + 50000, bounds[1], bounds[2] + 50000, bounds[3])
    with pytest.raises(ImageError, match="no heights over"):
        terrain_heights(write_dem(tmp_path / "far.tif", frame, elsewhere, lambda e, n: BASE_M + 0 * np.asarray(e)),
                        frame, bounds)
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(ImageError, match="cannot read DEM"):
        terrain_heights(tmp_path / "broken.tif", frame, bounds)


def test_a_truncated_terrain_file_is_refused_when_the_pack_opens(relief_pack, tmp_path):
    import shutil

    from skyfix.pack.tilepack import TilePack
    _, pack, _, _ = relief_pack
    copy = shutil.copytree(pack.path, tmp_path / "pack")
    data = (copy / "terrain.npy").read_bytes()
    (copy / "terrain.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(PackError, match="terrain.npy"):
        TilePack.open(copy)


def _flight(pack, emb, cfg: NavConfig, n_frames: int = 18):
    """A straight leg north-east at 10 m/s, 120 m over the take-off ground, rendered over the
    relief; the telemetry's height is over the take-off point (a barometer's). Returns
    [(error m, published accuracy m)] of the fixes."""
    from skyfix.edge.navigator import Navigator
    nav = Navigator(pack, emb, CAM, cfg)
    out = []
    for i in range(n_frames):
        t_s = 0.5 * i
        pose = ViewPose(-150 + 7.07 * t_s, -150 + 7.07 * t_s, 120.0, 0.02 * math.sin(t_s), 0.02 * math.cos(t_s),
                        math.radians(45))
        img, _, _ = render_view(pack.canvas(), CAM, pose, terrain=_relief)
        tel = Telemetry(int(t_s * 1e6), pose.roll_rad, pose.pitch_rad, pose.yaw_rad + 0.02, 120.0)
        fix = nav.step(Frame(img, int(t_s * 1e6), tel, f"f{i}")).fix
        if fix is not None:
            e, n, _ = pack.frame.to_enu(fix.lat_deg, fix.lon_deg)
            out.append((math.hypot(e - pose.east_m, n - pose.north_m), fix.horiz_accuracy_m))
    return nav, np.array(out)


def test_over_a_slope_the_dem_places_the_vehicle_and_flat_ground_slides_it(relief_pack):
    """Over a 6 deg slope, taking the ground as flat moves the resected camera by about height x
    sin(slope) (12 m at 120 m): the pack without terrain and no slope allowed for publishes
    fixes metres off; with the DEM they are right and within 3x their accuracy, and the take-off
    point's datum height is learned from the resections."""
    flat, with_dem, emb, _ = relief_pack
    nav, got = _flight(with_dem, emb, NavConfig(keypoints="sift", top_k=3, global_max_candidates=6))
    assert len(got) >= 8
    assert np.median(got[:, 0]) < 2.0 and (got[:, 0] <= 3 * got[:, 1]).all(), got
    assert nav.datum_offset_m() == pytest.approx(BASE_M, abs=3.0)
    _, blind = _flight(flat, emb, NavConfig(keypoints="sift", top_k=3, global_max_candidates=6, ground_slope_deg=0.0))
    assert len(blind) >= 4 and np.median(blind[:, 0]) > 2 * max(np.median(got[:, 0]), 1.5), blind


def test_without_terrain_the_published_accuracy_allows_for_the_slope(relief_pack):
    """The same flight over the pack without terrain, allowing for the 6 deg slope
    (nav.ground_slope_deg): no fix beyond 3x its accuracy."""
    flat, _, emb, _ = relief_pack
    _, got = _flight(flat, emb, NavConfig(keypoints="sift", top_k=3, global_max_candidates=6, ground_slope_deg=SLOPE_DEG))
    assert len(got) >= 4 and (got[:, 0] <= 3 * got[:, 1]).all(), got


def test_a_crop_over_a_slope_rectified_on_the_terrain_is_the_map_and_a_flat_one_is_not(textured_canvas):
    """A frame 120 m above the take-off ground over the slope, rectified north-up: on the terrain
    (every crop pixel the ground point it shows) the crop is the map itself around the camera;
    rectified as a plane it is stretched, and the same map pixels land metres away. The per-pixel
    map agrees with the homography where the depth is the plane's."""
    from skyfix.edge.camera import ground_from_crop, rectify_mapped
    pose = ViewPose(30.0, -20.0, 120.0, np.radians(2.0), np.radians(-3.0), np.radians(25.0))
    img, _, _ = render_view(textured_canvas, CAM, pose, terrain=_relief)
    args = (CAM, pose.roll_rad, pose.pitch_rad, pose.yaw_rad, 120.0 - float(_relief(30.0, -20.0)), 120.0, 240)

    def depth(de, dn):
        return 120.0 - _relief(pose.east_m + de, pose.north_m + dn)
    ortho, inside, offset, crop_map = rectify_mapped(img, *args, depth_m=depth)
    flat, _, _, flat_map = rectify_mapped(img, *args)
    g = ground_from_crop(pose.east_m + offset[0], pose.north_m + offset[1], 120.0, 240)
    ref, _ = textured_canvas.render(g[0, 2] + 59.75, g[1, 2] - 59.75, 120.0, 240)  # the crop's own square

    def agreement(a, b):
        seen = (a.sum(axis=2) > 0) & (b.sum(axis=2) > 0)
        x, y = a[seen].astype(float).ravel(), b[seen].astype(float).ravel()
        return np.corrcoef(x, y)[0, 1]
    assert inside > 0.6
    assert agreement(ortho, ref) > 0.995 > 0.95 > agreement(flat, ref)  # measured 0.9999 and 0.89
    # With the plane's depth, the per-pixel map is the homography.
    _, _, _, plane_map = rectify_mapped(img, *args, depth_m=lambda de, dn: np.full(np.shape(de), args[4]))
    pts = np.random.default_rng(1).uniform(10, 230, (50, 2))
    assert plane_map.frame_px(pts) == pytest.approx(flat_map.frame_px(pts), abs=0.05)
