"""The Navigator with real components (ONNX embedder, FAISS pack, SIFT, filter) on a generated
map, and injected faults: the loop keeps running and publishes nothing wrong."""
import math

import numpy as np
import pytest

from skyfix.config import NavConfig
from skyfix.contracts import Frame, Reason, Telemetry
from skyfix.edge.camera import PinholeCamera
from skyfix.render.views import ViewPose, render_view
from skyfix.geo import LocalFrame
from skyfix.pack.canvas import MapCanvas

pytestmark = pytest.mark.slow
CAM = PinholeCamera.from_hfov(480, 360, 70.0)
AGL_M = 120.0


@pytest.fixture(scope="module")
def world(tiny_onnx_dir, tmp_path_factory):
    from skyfix.edge.embedders import open_embedder
    from skyfix.edge.features import OpenCvExtractor
    from skyfix.tiles.build import tile_grid
    from skyfix.tiles.embed import embed_tiles
    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.build import write_pack
    from skyfix.tiles.synthetic import synthetic_map
    img = synthetic_map(1400, seed=3)  # 700 m at 0.5 m/px
    canvas = MapCanvas(img, np.ones(img.shape[:2], bool), 0.5, LocalFrame(47.0, 8.0), -350.0, 350.0)
    emb = open_embedder(tiny_onnx_dir, "drone")
    tiles, _ = tile_grid(canvas, 100.0, 50.0)
    vectors = embed_tiles(canvas, tiles, open_embedder(tiny_onnx_dir, "sat"), 32, progress=False)
    path = write_pack(tmp_path_factory.mktemp("nav") / "pack", canvas, tiles, vectors,
                      model_id=emb.model_id, tile_px=emb.input_px, stride_m=50.0,
                      extractors=(OpenCvExtractor("sift"),))
    return TilePack.open(path), emb, canvas


@pytest.fixture()
def nav(world):
    from skyfix.edge.navigator import Navigator
    pack, emb, _ = world
    return Navigator(pack, emb, CAM, NavConfig(keypoints="sift", top_k=3, global_max_candidates=6))


def _pose(t_s):
    # A straight leg heading north-east at 10 m/s, gentle wobble.
    yaw = math.radians(45)
    return ViewPose(-150 + 7.07 * t_s, -150 + 7.07 * t_s, AGL_M, 0.02 * math.sin(t_s), 0.02 * math.cos(t_s), yaw)


def _frame(canvas, t_s, i, **tel_override):
    pose = _pose(t_s)
    img, _, _ = render_view(canvas, CAM, pose)
    tel = dict(t_boot_us=int(t_s * 1e6), roll_rad=pose.roll_rad, pitch_rad=pose.pitch_rad,
               yaw_rad=pose.yaw_rad + 0.02, alt_agl_m=AGL_M * 1.03)
    tel.update(tel_override)
    return Frame(img, int(t_s * 1e6), Telemetry(**tel), f"f{i}"), pose


def _err(pack, fix, pose):
    e, n, _ = pack.frame.to_enu(fix.lat_deg, fix.lon_deg)
    return math.hypot(e - pose.east_m, n - pose.north_m)


def test_track_then_faults(nav, world):
    pack, _, canvas = world
    results = []
    for i in range(6):
        frame, pose = _frame(canvas, 0.5 * i, i)
        results.append((nav.step(frame), pose))
    fixes = [(r.fix, p) for r, p in results if r.fix is not None]
    assert results[0][0].fix is None and results[0][0].kind is Reason.ACQUIRING
    assert len(fixes) >= 3
    for fix, pose in fixes:
        err = _err(pack, fix, pose)
        assert err < 3.0 and err < 3 * fix.horiz_accuracy_m
        # The fix names the pack tile it was matched in: the tile nearest the vehicle's ground
        # point (the crop centre is a few metres off the nadir at this tilt).
        tile = pack.tile(fix.tile_id)
        assert math.hypot(tile.east_m - pose.east_m, tile.north_m - pose.north_m) < 0.75 * tile.size_m
    est = nav.estimate_at(3.0)
    assert est is not None and est[1] == pytest.approx(0.5, abs=1e-6)

    t = 3.0
    faults = {
        "corrupt": Frame(None, int(t * 1e6), None, "corrupt"),
        "blank": Frame(np.full((360, 480, 3), 128, np.uint8), int(t * 1e6), None, "blank"),
        "wrong size": Frame(np.zeros((100, 100, 3), np.uint8), int(t * 1e6), None, "small"),
        "float image": Frame(np.zeros((360, 480, 3), np.float32), int(t * 1e6), None, "float"),
    }
    for name, frame in faults.items():
        r = nav.step(frame)
        assert r.fix is None and r.kind in (Reason.BAD_FRAME, Reason.BLANK_FRAME), (name, r.reason)
    assert nav.reasons[Reason.BAD_FRAME] == 3 and nav.reasons[Reason.BLANK_FRAME] == 1

    # NaN attitude: assumed level, still localises on the confirmed track (small tilt), says so.
    frame, pose = _frame(canvas, 3.0, 10, roll_rad=float("nan"), pitch_rad=None)
    r = nav.step(frame)
    assert r.kind is Reason.OK and "attitude missing" in r.detail
    assert _err(pack, r.fix, pose) < 3 * r.fix.horiz_accuracy_m
    # Missing height shortly after a good one: the last value is used, and the result says so.
    frame, pose = _frame(canvas, 3.5, 11, alt_agl_m=None)
    r = nav.step(frame)
    assert "height missing" in r.detail
    # Missing heading: the rotation is searched; the fix stays right.
    frame, pose = _frame(canvas, 4.0, 12, yaw_rad=float("nan"))
    r = nav.step(frame)
    assert r.kind is Reason.OK and "heading missing" in r.detail
    assert _err(pack, r.fix, pose) < 3 * r.fix.horiz_accuracy_m


def test_frame_from_outside_the_region_gives_no_fix(nav, world):
    from skyfix.tiles.synthetic import synthetic_map
    pack, _, _ = world
    elsewhere = synthetic_map(1400, seed=99)  # another place, same style of map
    other = MapCanvas(elsewhere, np.ones(elsewhere.shape[:2], bool), 0.5, LocalFrame(47.0, 8.0), -350.0, 350.0)
    for i in range(8):
        frame, _ = _frame(other, 0.5 * i, i)
        r = nav.step(frame)
        assert r.fix is None, r.reason
    assert nav.estimate_at(4.0) is None


def test_no_height_at_all_is_refused(nav, world):
    _, _, canvas = world
    frame, _ = _frame(canvas, 0.0, 0, alt_agl_m=None)
    r = nav.step(frame)
    assert r.fix is None and r.kind is Reason.HEIGHT_MISSING


def test_navigator_refuses_other_model(world):
    from skyfix.edge.navigator import Navigator
    from skyfix.errors import ModelMismatch
    pack, emb, _ = world

    class Other:
        model_id, dim, input_px = "other", emb.dim, emb.input_px

    with pytest.raises(ModelMismatch, match="does not match pack"):
        Navigator(pack, Other(), CAM, NavConfig())


def test_gallery_answers_which_frames_saw_a_tile(nav, world, tiny_onnx_dir, tmp_path):
    from skyfix.edge.embedders import open_embedder
    from skyfix.edge.gallery import FrameGallery, frames_that_saw
    from skyfix.errors import SkyfixError
    pack, _, canvas = world
    # Frames along the leg, 0.5 s (5 m) apart: from (-150, -150) to (-125, -125).
    poses = {}
    for i in range(6):
        frame, pose = _frame(canvas, 0.5 * i, i)
        poses[frame.source_id] = pose
        nav.step(frame)
    g = FrameGallery.load(nav.gallery.save(tmp_path / "g.npz"))
    assert len(g) == 6 and g.model_id == pack.model_id
    sat = open_embedder(tiny_onnx_dir, "sat")
    lat, lon, _ = pack.frame.to_lla(-150.0, -150.0)
    tile, hits = frames_that_saw(pack, g, sat, lat_lon_deg=(lat, lon), k=6)
    assert math.hypot(tile.east_m + 150, tile.north_m + 150) <= 25 * math.sqrt(2)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and len(hits) == 6
    # Every frame saw this tile's ground, the ones nearest its centre the most: the best hit is
    # one of the two nearest frames, and it ranks above the farthest one.
    dist = {fid: math.hypot(p.east_m - tile.east_m, p.north_m - tile.north_m) for fid, p in poses.items()}
    nearest = sorted(dist, key=dist.get)[:2]
    assert hits[0]["frame_id"] in nearest, (hits, dist)
    order = [h["frame_id"] for h in hits]
    assert order.index(max(dist, key=dist.get)) > 0
    with pytest.raises(SkyfixError, match="not in the pack"):
        frames_that_saw(pack, g, sat, tile_id=len(pack) + 5)
    with pytest.raises(SkyfixError, match="tile id or a latitude"):
        frames_that_saw(pack, g, sat)


def test_a_frame_from_the_past_is_refused_and_the_track_goes_on(nav, world):
    """A frame stamped 30 s in the past (a clock glitch) is refused without touching the
    confirmed track; frames whose clock really went back restart the track after a few."""
    _, _, canvas = world
    for i in range(5):
        nav.step(_frame(canvas, 0.5 * i, i)[0])
    assert nav.gate.confirmations >= 3
    r = nav.step(_frame(canvas, 2.0 - 30.0, 90)[0])
    assert r.kind is Reason.STALE_FRAME and "30.00 s before" in r.detail
    r = nav.step(_frame(canvas, 2.5, 5)[0])
    assert r.kind is Reason.OK  # the confirmed track was not disturbed
    for k in range(5):          # the clock really went back: after a few, the track restarts
        r = nav.step(_frame(canvas, 0.1 + 0.5 * k, 100 + k)[0])
    assert r.kind is Reason.ACQUIRING


def test_map_features_truncated_in_flight_fail_that_frame_only(world, tmp_path):
    """A pack file cut short under a running loop: those frames get a reason (no crash, no
    SIGBUS), and once the file is whole again the loop localises again."""
    import shutil

    from skyfix.edge.navigator import Navigator
    from skyfix.pack.tilepack import TilePack
    pack, emb, canvas = world
    copy = tmp_path / "pack"
    shutil.copytree(pack.path, copy)
    nav = Navigator(TilePack.open(copy), emb, CAM, NavConfig(keypoints="sift", top_k=3))
    for i in range(4):
        assert nav.step(_frame(canvas, 0.5 * i, i)[0]).kind in (Reason.ACQUIRING, Reason.OK)
    desc = copy / "features" / "sift" / "desc.npy"
    whole = desc.read_bytes()
    with open(desc, "r+b") as f:
        f.truncate(len(whole) // 3)
    r = nav.step(_frame(canvas, 2.0, 4)[0])
    assert r.fix is None and r.kind is Reason.ERROR and "truncated" in r.detail
    desc.write_bytes(whole)
    r = nav.step(_frame(canvas, 2.5, 5)[0])
    assert r.kind is Reason.OK


def test_a_wrong_telemetry_heading_is_found_and_corrected(nav, world):
    """The autopilot's yaw is 60 deg off (a bad compass): frames find nothing, then the
    rotation is searched; strong matches at another rotation are refused, saying so; once three
    agree the heading is corrected and fixes come, in the right place."""
    pack, _, canvas = world
    results = []
    for i in range(26):
        frame, pose = _frame(canvas, 0.5 * i, i, yaw_rad=_pose(0.5 * i).yaw_rad + math.radians(60))
        results.append((nav.step(frame), pose))
    assert all(r.fix is None for r, _ in results[:3])
    assert any(r.kind is Reason.IMPLAUSIBLE and "heading is off by" in r.detail for r, _ in results)
    assert any("telemetry heading off by" in r.detail for r, _ in results)
    assert math.degrees(nav.heading.offset_rad) == pytest.approx(-60.0, abs=3.0)
    assert nav.integrity_counts()["telemetry heading corrected by the image"] == 1  # counted, reported
    fixes = [(r.fix, p) for r, p in results if r.fix is not None]
    assert len(fixes) >= 3
    for fix, pose in fixes:
        assert _err(pack, fix, pose) < 3.0


def test_an_extrapolated_estimate_says_a_manoeuvre_may_have_happened(nav, world):
    """Past the newest measurement the published accuracy grows by 0.5 a_max t^2 (a U-turn at
    a leg's end), and the estimate is withheld once that passes the publish cap."""
    _, _, canvas = world
    for i in range(5):
        nav.step(_frame(canvas, 0.5 * i, i)[0])
    fresh, _ = nav.estimate_at(2.0)
    later, age = nav.estimate_at(3.5)
    assert age == pytest.approx(1.5)
    assert later.horiz_accuracy_m - fresh.horiz_accuracy_m >= 0.5 * 5.0 * 1.5 ** 2
    assert nav.estimate_at(5.0) is None  # 3 s old: 22.5 m of possible manoeuvre, above 15 m


def test_the_maps_own_bias_and_the_flat_ground_bias_stay_in_the_published_accuracy(world):
    """Map fixes share the map's bias and, without terrain, the flat-ground assumption's, which
    the filter cannot average away: however many fixes the track has taken, the published
    accuracy keeps sqrt(2) x each of them (DRMS)."""
    from skyfix.edge.navigator import Navigator
    pack, emb, canvas = world
    for bias_m, slope_deg in ((0.0, 0.0), (3.0, 0.0), (0.0, 2.0)):
        nav = Navigator(pack, emb, CAM, NavConfig(keypoints="sift", top_k=3, global_max_candidates=6,
                                                  map_bias_m=bias_m, ground_slope_deg=slope_deg))
        fixes = [r.fix for r in (nav.step(_frame(canvas, 0.5 * i, i)[0]) for i in range(8)) if r.fix is not None]
        assert len(fixes) >= 4
        # Flat ground taken for granted (the pack has no terrain): the slope allowed for, at the
        # height the match measured (AGL_M), is shared by consecutive fixes too.
        floor_m = math.sqrt(2 * bias_m ** 2 + 2 * (0.98 * AGL_M * math.tan(math.radians(slope_deg))) ** 2)
        assert all(f.horiz_accuracy_m >= floor_m for f in fixes)
        if floor_m:
            assert fixes[-1].horiz_accuracy_m < floor_m * 1.5  # the filter's own part has shrunk


def test_a_small_yaw_error_is_trimmed_by_the_match_rotation(nav, world):
    """A compass (or an EKF yaw) 4 deg off: under the 20 deg that refuses a match, so positions
    stay right, but odometry and the attitude's thrust direction would be turned by it. Strong
    matches of the confirmed track trim it out."""
    pack, _, canvas = world
    fixes = []
    for i in range(16):
        frame, pose = _frame(canvas, 0.5 * i, i, yaw_rad=_pose(0.5 * i).yaw_rad + math.radians(4.0))
        fixes.append((nav.step(frame).fix, pose))
    assert math.degrees(nav.heading.offset_rad) == pytest.approx(-4.0, abs=0.7)
    assert all(_err(pack, f, p) < 3.0 for f, p in fixes if f is not None) and sum(f is not None for f, _ in fixes) >= 8


def test_the_heading_trim_is_bounded_per_frame():
    """The trim integrates trusted matches' rotation (the Navigator trims only with matches the
    confirmed track agrees with), at most TRIM_STEP_DEG a frame."""
    from skyfix.edge.trims import TRIM_STEP_DEG, HeadingCheck
    check = HeadingCheck(20.0, trim_gain=0.25)
    for _ in range(20):  # the crop is rectified with the correction: the rotation left shrinks
        check.trim(3.0 - math.degrees(check.offset_rad))
    assert math.degrees(check.offset_rad) == pytest.approx(3.0, abs=0.05)
    before = check.offset_rad
    check.trim(18.0)  # strong, within the 20 deg allowed
    assert math.degrees(check.offset_rad - before) == pytest.approx(TRIM_STEP_DEG)


def test_a_match_the_track_does_not_agree_with_never_trims_the_heading(nav, world):
    """Only matches a confirmed track agrees with trim the heading: before confirmation, or
    with a telemetry attitude the image contradicts, the heading correction stays."""
    _, _, canvas = world
    for i in range(2):  # acquiring: not confirmed yet
        nav.step(_frame(canvas, 0.5 * i, i, yaw_rad=_pose(0.5 * i).yaw_rad + math.radians(4.0))[0])
    assert nav.heading.offset_rad == 0.0


def test_search_windows_merge_only_while_they_stay_near_their_own_size():
    """Candidates spread over a small map must not merge into one window over all of it: matching
    against a larger piece of map loses true matches to look-alikes (see merge_windows)."""
    from skyfix.edge.search import MERGE_GROWTH, merge_windows
    grid = [(e, n, 172.0) for e in (-128, 0, 128) for n in (-128, 0, 128)]
    merged = merge_windows(grid)
    assert all(h <= MERGE_GROWTH * 172.0 + 1e-9 for _, _, h in merged)
    covered = [(e, n) for e, n, _ in grid if any(abs(e - me) <= mh - 172 + 1e-9 and abs(n - mn) <= mh - 172 + 1e-9
                                                 for me, mn, mh in merged)]
    assert len(covered) == len(grid)  # every original window lies inside a merged one
    assert len(merged) > 1
    assert merge_windows([(0, 0, 100.0), (5, -5, 100.0)]) == [(2.5, -2.5, 102.5)]
    assert merge_windows([(0, 0, 100.0), (300, 0, 100.0)]) == [(0, 0, 100.0), (300, 0, 100.0)]


def _match_seen_with(pose_true, pose_tel, n_points, noise_m, seed=0):
    """A Match of a frame taken at pose_true but rectified with the telemetry's pose_tel:
    n_points crop pixels and their true ground points (noise_m of map noise), the crop centre
    placed on the map. Returns (Match, CropPose, offset_en of the crop from the nadir)."""
    from skyfix.edge.camera import ground_of_pixel, image_from_crop, image_from_ground
    from skyfix.edge.navigator import CropPose
    from skyfix.edge.refine import Match
    rng = np.random.default_rng(seed)
    h_crop, offset_en = image_from_crop(CAM, pose_tel.roll_rad, pose_tel.pitch_rad, pose_tel.yaw_rad, pose_tel.agl_m,
                                        150.0, 300)
    h_true = image_from_ground(CAM, pose_true.roll_rad, pose_true.pitch_rad, pose_true.yaw_rad,
                               pose_true.east_m, pose_true.north_m, pose_true.agl_m)

    def ground(crop_px):
        u, v, w = h_crop @ [crop_px[0], crop_px[1], 1.0]
        return ground_of_pixel(h_true, u / w, v / w)
    crop_px = rng.uniform(40, 260, (n_points, 2))
    ground_en = np.array([ground(p) for p in crop_px]) + rng.normal(0, noise_m, (n_points, 2))
    centre = ground((149.5, 149.5))
    match = Match(centre[0], centre[1], n_points, n_points, 1.0, 0.0, 1.0, crop_px, ground_en)
    tel = CropPose(pose_tel.roll_rad, pose_tel.pitch_rad, pose_tel.yaw_rad, pose_tel.agl_m)
    return match, tel, offset_en


def _placed_with_roll_error(nav, roll_error_deg, n_points, noise_m):
    """(Placement or (Reason, detail), truth, Match, CropPose, offset_en) for a frame whose
    telemetry roll is roll_error_deg off, through the navigator's placement stage (Placer.place)."""
    import dataclasses
    nav.placer.refine_size_m = 150.0  # the crop _match_seen_with made
    nav.placer.gsd_m = 0.5
    truth = ViewPose(10.0, -5.0, AGL_M, 0.02, 0.03, 0.8)
    tel = dataclasses.replace(truth, roll_rad=truth.roll_rad + math.radians(roll_error_deg))
    match, pose, offset_en = _match_seen_with(truth, tel, n_points, noise_m)
    return nav.placer.place(match, pose, offset_en, 1.0, _crop_map(pose)), truth, match, pose, offset_en


def _crop_map(pose):
    """The CropMap of the flat 150 m, 300 px crop _match_seen_with made for this CropPose."""
    from skyfix.edge.camera import CropMap, image_from_crop
    return CropMap(h=image_from_crop(CAM, pose.roll_rad, pose.pitch_rad, pose.yaw_rad, pose.agl_m, 150.0, 300)[0])


def test_a_wrong_autopilot_attitude_is_caught_by_the_image_and_the_fix_stays_honest(nav, monkeypatch):
    """The autopilot's roll is 10 deg off (its estimate drifting in wind): placed by that tilt the
    vehicle is 21 m off. Resection from the image disagrees beyond both noises: the disagreement
    is counted and said, and the image alone places the vehicle within 3x its accuracy. Fused
    regardless (the check off), the same frame lands more than twice as far off (it leans on the
    wrong attitude)."""
    import skyfix.edge.placement as placement
    placed, truth, match, pose, offset_en = _placed_with_roll_error(nav, 10.0, 60, noise_m=0.6)
    err = math.hypot(placed.east_m - truth.east_m, placed.north_m - truth.north_m)
    assert not placed.attitude_agrees and err <= 3 * placed.sigma_m
    assert nav.integrity_counts() == {"attitude disagrees with the image": 1, "placed by the image alone": 1}
    assert "telemetry attitude off by roll +" in placed.notes[0]

    monkeypatch.setattr(placement, "ATTITUDE_AGREE_D2", math.inf)
    nav.placer.attitude_doubt = None
    fused = nav.placer.place(match, pose, offset_en, 1.0, _crop_map(pose))
    assert math.hypot(fused.east_m - truth.east_m, fused.north_m - truth.north_m) > 2 * max(err, 1.0)


def test_a_wrong_attitude_the_image_cannot_settle_gives_no_fix(nav):
    """Too few points to resect with confidence, against a telemetry tilt 10 deg off: no fix."""
    placed = _placed_with_roll_error(nav, 10.0, 20, noise_m=0.3)[0]
    assert placed[0] is Reason.IMPLAUSIBLE and "does not settle it" in placed[1]
    assert nav.integrity_counts()["withheld: neither attitude can be trusted"] == 1


@pytest.fixture(scope="module")
def flat_world(world, tmp_path_factory):
    """The world's pack with its ground's heights known: a flat DEM (400 m) added as a user would."""
    pytest.importorskip("rasterio")
    import shutil

    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.terrain import DemInput, add_terrain, write_dem
    pack, emb, canvas = world
    folder = tmp_path_factory.mktemp("flat")
    path = shutil.copytree(pack.path, folder / "pack")
    dem = write_dem(folder / "dem.tif", canvas.frame, canvas.bounds_en(), lambda e, n: 400.0 + 0 * np.asarray(e))
    add_terrain(path, DemInput(paths=(str(dem),), accuracy_m=0.0), log=lambda _: None)
    return TilePack.open(path), emb, canvas


def _trim_flight(pack, emb, canvas, roll_error_deg: float, terrain=None, n_frames: int = 24, **nav_cfg):
    """The straight leg over `pack` with the telemetry's roll roll_error_deg off (frames rendered
    over `terrain` when given; nav_cfg: NavConfig fields); returns (navigator, [(fix, true pose)])."""
    from skyfix.edge.navigator import Navigator
    nav = Navigator(pack, emb, CAM, NavConfig(keypoints="sift", top_k=3, global_max_candidates=6, **nav_cfg))
    out = []
    for i in range(n_frames):
        t_s = 0.5 * i
        pose = _pose(t_s)
        img, _, _ = render_view(canvas, CAM, pose, terrain=terrain)
        tel = Telemetry(int(t_s * 1e6), pose.roll_rad + math.radians(roll_error_deg), pose.pitch_rad,
                        pose.yaw_rad + 0.02, AGL_M * 1.03)
        out.append((nav.step(Frame(img, int(t_s * 1e6), tel, f"f{i}")).fix, pose))
    return nav, out


def test_over_known_flat_ground_the_stated_accuracy_follows_the_error(flat_world, world, tmp_path):
    """A pack whose heights are known (a flat DEM, stated exact) and whose map states its own
    accuracy (0: the map is this world's truth), and a camera clock known to be right
    (nav.time_offset_sigma_s 0, as the test stamps frames exactly): the published accuracy is
    the fit's and the filter's, and never beaten 3x. This world's texture matches to a fifth of
    a map pixel, below the 1-pixel floor, so the ratio is lower than over real maps
    (docs/integrity.md); the same flight over the pack without terrain, carrying the flat-ground
    allowance and the map bias nobody stated, claims an accuracy several times looser still."""
    import shutil

    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.build import record_accuracy
    pack, emb, canvas = flat_world
    stated = shutil.copytree(pack.path, tmp_path / "stated")
    record_accuracy(stated, map_accuracy_m=0.0)
    stated = TilePack.open(stated)
    cfg = {"time_offset_sigma_s": 0.0}
    nav, fixes = _trim_flight(stated, emb, canvas, 0.0, n_frames=20, **cfg)
    ratio = np.array([_err(stated, f, p) / f.horiz_accuracy_m for f, p in fixes if f is not None])
    assert len(ratio) >= 12 and (ratio <= 3).all(), ratio
    assert np.median(ratio) >= 0.2, ratio
    assert nav.accuracy_terms()["ground"] == "terrain" and nav.accuracy_terms()["map_bias_m"] == 0.0
    _, loose = _trim_flight(world[0], emb, canvas, 0.0, n_frames=20, **cfg)
    loose_ratio = np.array([_err(world[0], f, p) / f.horiz_accuracy_m for f, p in loose if f is not None])
    assert np.median(loose_ratio) < 0.3 * np.median(ratio), (np.median(loose_ratio), np.median(ratio))


def test_a_biased_telemetry_tilt_is_trimmed_by_resection(flat_world):
    """The autopilot's roll 8 deg off for a whole flight (its estimate, or a camera mounted
    askew), over ground whose heights the pack knows: consistent resected tilts, each correction
    checked to improve the match, trim it out, so crops are rectified as the image says the
    camera was tilted, and every fix stays within 3x its accuracy on the way."""
    pack, emb, canvas = flat_world
    nav, fixes = _trim_flight(pack, emb, canvas, 8.0)
    assert math.degrees(nav.attitude_trim.offset_rad[0]) == pytest.approx(-8.0, abs=1.5)
    assert abs(math.degrees(nav.attitude_trim.offset_rad[1])) < 1.0
    published = [(f, p) for f, p in fixes if f is not None]
    assert len(published) >= 12 and all(_err(pack, f, p) <= 3 * f.horiz_accuracy_m for f, p in published)


def test_without_known_heights_the_tilt_is_never_trimmed(world):
    """The same biased roll over a pack without terrain: the image's tilt comes from points whose
    heights nobody knows (flat ground assumed), so it never trims; the disagreement is caught and
    every fix stays within 3x its accuracy."""
    pack, emb, canvas = world
    nav, fixes = _trim_flight(pack, emb, canvas, 8.0, n_frames=14)
    assert not nav.attitude_trim.offset_rad.any() and not nav.attitude_trim.residuals
    assert nav.integrity_counts().get("attitude disagrees with the image", 0) >= 1
    published = [(f, p) for f, p in fixes if f is not None]
    assert len(published) >= 6 and all(_err(pack, f, p) <= 3 * f.horiz_accuracy_m for f, p in published)


def test_a_tilt_resection_reads_from_structure_is_refused_by_the_match(flat_world, monkeypatch):
    """A right autopilot attitude, but resection reads the camera 4 deg rolled, consistently: what
    buildings and shadows that lean differently on the map's date do to it (LEVIR-CD across
    dates; the position it resects is left as it was). The proposed correction is tried on the
    frame and the crop rectified with it matches the map worse, so the trim refuses it and
    stays at 0; taking the image's word without that check, the same flight learns the tilt."""
    import dataclasses

    import skyfix.edge.placement as placement
    import skyfix.edge.trims as trims
    from skyfix.edge.camera import world_from_body
    pack, emb, canvas = flat_world
    lean = world_from_body(math.radians(4.0), 0.0, 0.0)

    def leaning(*args, **kw):
        cp = resect(*args, **kw)
        return None if cp is None else dataclasses.replace(cp, world_from_cam=cp.world_from_cam @ lean)

    resect = placement.resect
    monkeypatch.setattr(placement, "resect", leaning)
    nav, fixes = _trim_flight(pack, emb, canvas, 0.0, n_frames=16)
    assert np.degrees(np.abs(nav.attitude_trim.offset_rad)).max() < 0.5, np.degrees(nav.attitude_trim.offset_rad)
    assert nav.attitude_trim.refused >= 1
    assert nav.integrity_counts()["tilt trim refused: the image did not match better"] >= 1
    # Without the check: every crop "matches" alike, so any correction passes as sharper.
    monkeypatch.setattr(trims.TiltTrimCheck, "_match_near", lambda self, described, best: (10 ** 6, 0.0))
    unchecked, _ = _trim_flight(pack, emb, canvas, 0.0, n_frames=16)
    assert np.degrees(np.abs(unchecked.attitude_trim.offset_rad)).max() >= 1.0


def test_a_resected_tilt_no_autopilot_could_be_that_wrong_about_is_not_believed(nav):
    """Image and telemetry 40 deg apart: beyond nav.max_attitude_disagreement_deg, where the
    resection more likely picked the planar mirror pose than the autopilot is that wrong. No
    fix from that frame, and the tilt trim is not touched."""
    placed = _placed_with_roll_error(nav, 40.0, 60, noise_m=0.3)[0]
    assert placed[0] is Reason.IMPLAUSIBLE and "not believed" in placed[1]
    assert nav.integrity_counts() == {"withheld: resection implausible": 1}
    assert not nav.attitude_trim.offset_rad.any()


def test_a_track_continues_below_the_tile_height_and_a_lost_vehicle_there_gets_no_fix(world):
    """Hand-over at 120 m, then a descent to 40 m where a 100 m tile no longer fits in the frame:
    the track goes on by matching the map features around its prediction (counted), and every
    fix stays within 3x its accuracy. A navigator that starts at 40 m has no track to continue:
    no fix, and the reason says so."""
    from skyfix.edge.navigator import Navigator
    pack, emb, canvas = world
    nav = Navigator(pack, emb, CAM, NavConfig(keypoints="sift", top_k=3, global_max_candidates=6))
    low = []
    for i in range(30):
        t = 0.5 * i
        agl = 120.0 if i < 6 else max(40.0, 120.0 - 10.0 * (i - 6))
        pose = ViewPose(-150 + 5 * t, -150 + 5 * t, agl, 0.02 * math.sin(t), 0.02 * math.cos(t), math.radians(45))
        img, _, _ = render_view(canvas, CAM, pose)
        r = nav.step(Frame(img, int(t * 1e6), Telemetry(int(t * 1e6), pose.roll_rad, pose.pitch_rad,
                                                          pose.yaw_rad + 0.02, agl * 1.03), f"f{i}"))
        if r.fix is not None:
            assert _err(pack, r.fix, pose) < 3 * r.fix.horiz_accuracy_m
        if agl == 40.0:
            low.append(r)
    assert len(low) >= 10 and sum(r.fix is not None for r in low) >= 0.8 * len(low)
    assert nav.integrity_counts()["close range: tracked without retrieval"] >= 10
    # Lower still the footprint spans fewer map pixels than nav.close_range_min_map_px: no fix.
    pose = ViewPose(-150 + 5 * 15.0, -150 + 5 * 15.0, 12.0, 0.0, 0.0, math.radians(45))
    r = nav.step(Frame(render_view(canvas, CAM, pose)[0], int(15.0 * 1e6),
                       Telemetry(int(15.0 * 1e6), 0.0, 0.0, pose.yaw_rad, 12.0), "f-low"))
    assert r.fix is None and "map pixels across" in r.detail, r.detail
    fresh = Navigator(pack, emb, CAM, NavConfig(keypoints="sift", top_k=3, global_max_candidates=6))
    pose = ViewPose(0.0, 0.0, 40.0, 0.0, 0.0, math.radians(45))
    r = fresh.step(Frame(render_view(canvas, CAM, pose)[0], 10 ** 6,
                         Telemetry(10 ** 6, 0.0, 0.0, pose.yaw_rad, 40.0), "low"))
    assert r.fix is None and r.kind is Reason.CROP_OUTSIDE and "only a track continues" in r.detail


@pytest.mark.parametrize("hint_off_m", [0.0, 200.0])
def test_a_gnss_hint_narrows_the_search_and_a_wrong_one_gives_no_wrong_fix(world, hint_off_m):
    """While there is no track, every other frame searches around the hint (a healthy GNSS's
    position); a hint 200 m off (a GNSS already spoofed) finds nothing there, the frames between
    search everywhere, and every fix is where the vehicle is."""
    from skyfix.edge.navigator import Navigator
    pack, emb, canvas = world
    nav = Navigator(pack, emb, CAM, NavConfig(keypoints="sift", top_k=3, global_max_candidates=6))
    fixes = []
    for i in range(8):
        t = 0.5 * i
        pose = _pose(t)
        nav.retrieval.hint_position(t, pose.east_m + hint_off_m, pose.north_m, 20.0)
        frame, pose = _frame(canvas, t, i)
        r = nav.step(frame)
        if r.fix is not None:
            fixes.append(_err(pack, r.fix, pose))
    assert nav.retrieval.hinted_searches >= 1
    assert len(fixes) >= 3 and max(fixes) < 3.0, fixes
    nav.retrieval.hint_position(0.0, 0.0, 0.0, 20.0)  # stale: older than a second
    assert nav.retrieval.window(10.0, nav._prior_window(10.0)) == nav._prior_window(10.0)
