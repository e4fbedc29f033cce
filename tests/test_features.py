"""Local features: the matcher contract on real imagery, map features in the pack, bad input."""

import numpy as np
import pytest
import yaml

from conftest import SHARED, need_shared
from skyfix.edge.features import EXTRACTORS, OpenCvExtractor, match_descriptors, open_extractor
from skyfix.edge.refine import MapMatcher
from skyfix.errors import PackError
from skyfix.pack.map_features import NpyRows
from skyfix.tiles.features import features_in_memory


@pytest.fixture(scope="module")
def levir_a():
    from skyfix.tiles.ortho import load_canvas
    pytest.importorskip("rasterio")
    return load_canvas(need_shared(SHARED / "levircd" / "A" / "test_3.png"), source_gsd_m=0.5)


def _extractor(name, xfeat_dir):
    return open_extractor(name, xfeat_dir if name == "xfeat" else None)


@pytest.mark.data
@pytest.mark.parametrize("name", EXTRACTORS)
def test_every_matcher_recovers_a_known_transform(name, levir_a, request):
    """A real crop turned 10 deg, scaled 1.1 and placed 12 m off the prior: each matcher finds
    its centre within 1.5 m, the rotation within 2 deg and the scale within 3 %."""
    xfeat_dir = request.getfixturevalue("xfeat_dir") if name == "xfeat" else None
    ex = _extractor(name, xfeat_dir)
    matcher = MapMatcher(features_in_memory(levir_a, ex, 8000), ex, levir_a.gsd_m)
    truth_e, truth_n, rot_deg, scale = 20.0, -35.0, 10.0, 1.1
    # A crop of 110 m shown in 200 px read as 100 m: the map sees it 1.1x larger.
    crop = levir_a.render(truth_e, truth_n, 100.0 * scale, 200, rot_deg)[0]
    m = matcher.match(crop, 0.5, (truth_e + 12.0, truth_n - 5.0), 40.0)
    assert m is not None and m.inliers >= 15
    assert np.hypot(m.east_m - truth_e, m.north_m - truth_n) < 1.5
    assert abs(abs(m.rotation_deg) - rot_deg) < 2.0
    assert m.scale == pytest.approx(scale, rel=0.03)


@pytest.mark.data
def test_the_rotation_sign_follows_the_crop(levir_a):
    """Turning the crop the other way turns the recovered rotation too (not just its size)."""
    ex = OpenCvExtractor("sift")
    matcher = MapMatcher(features_in_memory(levir_a, ex, 8000), ex, levir_a.gsd_m)
    plus = matcher.match(levir_a.render(0.0, 0.0, 100.0, 200, 12.0)[0], 0.5, (0.0, 0.0), 30.0)
    minus = matcher.match(levir_a.render(0.0, 0.0, 100.0, 200, -12.0)[0], 0.5, (0.0, 0.0), 30.0)
    assert plus.rotation_deg * minus.rotation_deg < 0
    assert abs(plus.rotation_deg + minus.rotation_deg) < 2.0


def test_a_crop_without_texture_matches_nothing(textured_canvas):
    ex = OpenCvExtractor("sift")
    matcher = MapMatcher(features_in_memory(textured_canvas, ex, 8000), ex, textured_canvas.gsd_m)
    flat = np.full((100, 100, 3), 90, np.uint8)
    assert matcher.match(flat, 1.0, (0.0, 0.0), 50.0) is None


def test_mutual_matching_keeps_only_mutual_pairs():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 16)).astype(np.float32)
    query = np.vstack([train[:10] + 0.01 * rng.normal(size=(10, 16)), train[3:4] + 0.02])  # 2 near train[3]
    iq, it = match_descriptors(query, train, binary=False, ratio=1.0, mutual=True)
    pairs = set(zip(iq.tolist(), it.tolist()))
    assert {(i, i) for i in range(10) if i != 3} <= pairs
    assert sum(1 for q, t in pairs if t == 3) == 1  # one of the two claims on train[3] survives
    iq, _ = match_descriptors(query, train, binary=False, ratio=1.0, mutual=False)
    assert len(iq) == 11



def test_mutual_matching_agrees_with_the_definition():
    rng = np.random.default_rng(1)
    query, train = rng.normal(size=(300, 32)).astype(np.float32), rng.normal(size=(700, 32)).astype(np.float32)
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    t = train / np.linalg.norm(train, axis=1, keepdims=True)
    sim = q @ t.T
    first, back = sim.argmax(axis=1), sim.argmax(axis=0)
    expected = {(i, int(first[i])) for i in range(len(q)) if back[first[i]] == i}
    iq, it = match_descriptors(query, train, binary=False, ratio=1.0, mutual=True)
    assert set(zip(iq.tolist(), it.tolist())) == expected and 0 < len(expected) < len(q)

# ---- map features in the pack ------------------------------------------------------------------
@pytest.fixture()
def pack_with_sift(tmp_path, textured_canvas):
    from skyfix.contracts import GeoTile
    from skyfix.tiles.build import write_pack
    tiles = [GeoTile(i, 45.0, 7.0, e, 0.0, 100.0) for i, e in enumerate((-100.0, 0.0, 100.0))]
    vectors = np.eye(3, 8, dtype=np.float32)
    return write_pack(tmp_path / "pack", textured_canvas, tiles, vectors, model_id="m", tile_px=64,
                      stride_m=100.0, extractors=(OpenCvExtractor("sift"),))


def test_pack_features_load_near_the_window_only(pack_with_sift, textured_canvas):
    from skyfix.pack.tilepack import TilePack
    pack = TilePack.open(pack_with_sift)
    mf = pack.map_features("sift", OpenCvExtractor("sift").identity)
    assert isinstance(mf.xy_en_m, NpyRows)  # read per window, not at start
    xy, desc = mf.near(50.0, -20.0, 40.0)
    assert len(xy) > 20 and desc.shape == (len(xy), 128)
    assert np.all(np.abs(xy[:, 0] - 50.0) <= 40.0) and np.all(np.abs(xy[:, 1] + 20.0) <= 40.0)
    # Everything in that square is returned: compare with a scan of all features.
    allxy = mf.xy_en_m.rows(0, len(mf))
    inside = (np.abs(allxy[:, 0] - 50.0) <= 40.0) & (np.abs(allxy[:, 1] + 20.0) <= 40.0)
    assert len(xy) == int(inside.sum())


def test_pack_without_the_matchers_features_is_refused_with_the_command(pack_with_sift):
    from skyfix.pack.tilepack import TilePack
    pack = TilePack.open(pack_with_sift)
    with pytest.raises(PackError, match="skyfix tiles features .* --matcher orb"):
        pack.map_features("orb")


def test_features_from_another_extractor_are_refused(pack_with_sift):
    from skyfix.pack.tilepack import TilePack
    with pytest.raises(PackError, match="computed by opencv-sift.*recompute"):
        TilePack.open(pack_with_sift).map_features("sift", "opencv-sift-0.0.0")


def test_truncated_feature_file_is_refused(pack_with_sift):
    from skyfix.pack.tilepack import TilePack
    desc = pack_with_sift / "features" / "sift" / "desc.npy"
    desc.write_bytes(desc.read_bytes()[:-100])
    with pytest.raises(PackError, match="truncated or corrupt.*skyfix tiles features"):
        TilePack.open(pack_with_sift).map_features("sift")


def test_tiles_features_adds_a_matcher_and_keeps_the_pack_valid(pack_with_sift):
    from skyfix.cli import main
    from skyfix.pack.tilepack import TilePack
    assert main(["tiles", "features", str(pack_with_sift), "--matcher", "orb", "-q"]) == 0
    pack = TilePack.open(pack_with_sift)
    assert set(pack.manifest["features"]) == {"sift", "orb"}
    orb = pack.map_features("orb", OpenCvExtractor("orb").identity)
    assert len(orb) > 100 and orb.desc.dtype == np.uint8
    assert [p.name for p in pack_with_sift.glob(".*")] == [".verified.yaml"]  # no staging left behind


def test_navigator_refuses_a_pack_without_features_at_start(tmp_path, textured_canvas):
    from skyfix.config import NavConfig
    from skyfix.contracts import GeoTile
    from skyfix.edge.navigator import open_matcher
    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.build import write_pack
    tiles = [GeoTile(0, 45.0, 7.0, 0.0, 0.0, 100.0)]
    path = write_pack(tmp_path / "bare", textured_canvas, tiles, np.eye(1, 8, dtype=np.float32),
                      model_id="m", tile_px=64, stride_m=100.0)
    with pytest.raises(PackError, match="no map features for matcher 'sift'.*skyfix tiles features"):
        open_matcher(TilePack.open(path), NavConfig(keypoints="sift"))


def test_xfeat_export_matches_torch(xfeat_dir):
    card = yaml.safe_load((xfeat_dir / "features.yaml").read_text())
    assert card["parity"]["max_abs_diff"] < 1e-4
    ex = open_extractor("xfeat", xfeat_dir)
    img = np.random.default_rng(0).integers(0, 255, (200, 232, 3), dtype=np.uint8)
    f = ex.extract(img, 300)
    assert 0 < len(f) <= 300 and f.desc.shape == (len(f), 64)
    assert np.allclose(np.linalg.norm(f.desc, axis=1), 1.0, atol=1e-4)
    assert f.xy_px[:, 0].max() < 232 and f.xy_px[:, 1].max() < 200


def test_missing_xfeat_model_says_how_to_make_it(tmp_path):
    from skyfix.errors import SkyfixError
    with pytest.raises(SkyfixError, match="skyfix export features"):
        open_extractor("xfeat", tmp_path / "nothing")


@pytest.mark.data
def test_unknown_heading_is_searched_for_a_matcher_that_is_not_rotation_invariant(levir_a, xfeat_dir):
    """XFeat does not survive a 120 deg turn on its own; described at several turns it does."""
    ex = open_extractor("xfeat", xfeat_dir)
    matcher = MapMatcher(features_in_memory(levir_a, ex, 8000), ex, levir_a.gsd_m)
    crop = levir_a.render(-30.0, 40.0, 100.0, 200, 120.0)[0]
    plain = matcher.match(crop, 0.5, (-30.0, 40.0), 30.0)
    assert plain is None or plain.inliers < 15
    searched = matcher.match(crop, 0.5, (-30.0, 40.0), 30.0, described=matcher.describe(crop, heading_known=False))
    assert searched is not None and searched.inliers >= 15
    assert np.hypot(searched.east_m + 30.0, searched.north_m - 40.0) < 1.5
    assert abs(abs(searched.rotation_deg) - 120.0) < 2.0
