import numpy as np
import pytest
import yaml

from skyfix.errors import ModelMismatch, PackError
from skyfix.tiles.build import tile_grid
from skyfix.pack.tilepack import TilePack
from skyfix.tiles.build import write_pack

from tests.helpers import unit_vectors

DIM = 16


@pytest.fixture()
def pack_dir(tmp_path, textured_canvas):
    tiles, skipped = tile_grid(textured_canvas, 100.0, 50.0)
    vectors = unit_vectors(len(tiles))
    out = write_pack(tmp_path / "pack", textured_canvas, tiles, vectors, model_id="test-model",
                     tile_px=64, stride_m=50.0)
    return out, tiles, vectors


def test_grid_covers_the_map(textured_canvas):
    tiles, skipped = tile_grid(textured_canvas, 100.0, 50.0)
    assert skipped == 0 and len(tiles) == 11 * 11  # (600 - 100) / 50 + 1 per axis
    assert tiles[0].east_m == pytest.approx(-250) and tiles[0].north_m == pytest.approx(250)
    assert [t.tile_id for t in tiles] == list(range(len(tiles)))


def test_grid_skips_nodata(textured_canvas):
    import dataclasses
    valid = textured_canvas.valid.copy()
    valid[:, :300] = False  # the west half has no data
    tiles, skipped = tile_grid(dataclasses.replace(textured_canvas, valid=valid), 100.0, 50.0)
    assert skipped > 0 and all(t.east_m - 50 >= 0 for t in tiles)


def test_pack_round_trip(pack_dir, textured_canvas):
    out, tiles, vectors = pack_dir
    pack = TilePack.open(out, expect_model_id="test-model", expect_dim=DIM)
    assert len(pack) == len(tiles) and pack.model_id == "test-model"
    t = pack.tile(17)
    assert (t.east_m, t.north_m) == pytest.approx((tiles[17].east_m, tiles[17].north_m))
    assert (t.lat_deg, t.lon_deg) == pytest.approx((tiles[17].lat_deg, tiles[17].lon_deg), abs=1e-8)
    np.testing.assert_array_equal(pack.canvas().image_rgb, textured_canvas.image_rgb)
    # Global search is exact inner product: compare with numpy.
    q = unit_vectors(3, seed=1)
    scores, ids = pack.search(q, k=5)
    ref = np.argsort(-(q @ vectors.T), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, ref)


def test_window_search_returns_only_tiles_inside_radius(pack_dir):
    out, tiles, vectors = pack_dir
    pack = TilePack.open(out)
    q = unit_vectors(4, seed=2)
    east, north, radius = 60.0, -40.0, 90.0
    scores, ids = pack.search(q, k=10, near=(east, north, radius))
    inside = {t.tile_id for t in tiles if np.hypot(t.east_m - east, t.north_m - north) <= radius}
    assert 0 < len(inside) < 10  # fewer tiles in the window than k: the rest is padding
    for row_ids, row_scores in zip(ids, scores):
        found = set(row_ids[row_ids >= 0].tolist())
        assert found == inside
        assert np.all(np.isneginf(row_scores[row_ids < 0]))
    # Best in window equals the brute-force best over the window's tiles.
    window = np.array(sorted(inside))
    np.testing.assert_array_equal(ids[:, 0], window[np.argmax(q @ vectors[window].T, axis=1)])
    # A window with no tile gives no result rather than a global answer.
    s, i = pack.search(q, k=3, near=(5000.0, 5000.0, 10.0))
    assert np.all(i == -1)


def test_missing_pack_refused(tmp_path):
    with pytest.raises(PackError, match="manifest.yaml not found"):
        TilePack.open(tmp_path)


def test_truncated_index_refused(pack_dir):
    out, _, _ = pack_dir
    data = (out / "index.faiss").read_bytes()
    (out / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(PackError, match="index.faiss has .* bytes.*truncated"):
        TilePack.open(out)


def test_corrupt_file_refused(pack_dir):
    out, _, _ = pack_dir
    raw = bytearray((out / "tiles.csv").read_bytes())
    raw[-5] = ord("9") if raw[-5] != ord("9") else ord("8")
    (out / "tiles.csv").write_bytes(bytes(raw))
    with pytest.raises(PackError, match="checksum"):
        TilePack.open(out)


def test_model_and_dim_mismatch_refused(pack_dir):
    out, _, _ = pack_dir
    with pytest.raises(ModelMismatch, match="embedded by model test-model.*other-model"):
        TilePack.open(out, expect_model_id="other-model")
    with pytest.raises(ModelMismatch, match="dim 16"):
        TilePack.open(out, expect_dim=512)
    with pytest.raises(ModelMismatch, match="query dim"):
        TilePack.open(out).search(unit_vectors(1, d=8), k=1)


def test_schema_version_refused(pack_dir):
    out, _, _ = pack_dir
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    manifest["schema_version"] = 99
    (out / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(PackError, match="schema version 99"):
        TilePack.open(out)


def test_failed_write_keeps_existing_pack(pack_dir, textured_canvas):
    out, tiles, vectors = pack_dir
    with pytest.raises(PackError):
        write_pack(out, textured_canvas, tiles, vectors[:3], model_id="x", tile_px=64, stride_m=50.0)
    assert TilePack.open(out).model_id == "test-model"


def test_inspect_cli_exit_codes(pack_dir, tmp_path, capsys):
    from skyfix.cli import main
    out, _, _ = pack_dir
    assert main(["tiles", "inspect", str(out)]) == 0
    assert "test-model" in capsys.readouterr().out
    assert main(["tiles", "inspect", str(tmp_path / "nope")]) != 0


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_window_search_scores_only_the_window_for_every_index_kind(kind):
    """On 12k synthetic tiles: the window's tiles only, ranked as exact scoring of their stored
    vectors ranks them (approximations for IVF-PQ), padded when the window is small."""
    from skyfix.pack.tilepack import _enable_reconstruct, make_index, window_search
    vectors = unit_vectors(12000, d=32, seed=3)
    index = make_index(kind, vectors)
    _enable_reconstruct(index)
    window = np.arange(500, 540)
    q = unit_vectors(3, d=32, seed=4)
    scores, ids = window_search(index, window, q, 10)
    assert np.all(np.isin(ids, window)) and np.all(np.diff(scores, axis=1) <= 0)
    if kind != "ivfpq":  # flat / HNSW keep the vectors: the ranking is the exact one
        expected = window[np.argsort(-(q @ vectors[window].T), axis=1)[:, :10]]
        assert np.array_equal(ids, expected)
    scores, ids = window_search(index, window[:4], q, 10)
    assert np.all(ids[:, 4:] == -1) and np.all(np.isinf(scores[:, 4:]))
    # Searching with a stored vector finds it first (recall sanity, not a benchmark).
    _, ids = index.search(vectors[:20], 1)
    assert np.mean(ids[:, 0] == np.arange(20)) >= (0.9 if kind != "ivfpq" else 0.5)


def test_tile_grid_finds_exactly_the_tiles_within_the_radius():
    from skyfix.pack.tilepack import TileGrid
    rng = np.random.default_rng(0)
    east, north = rng.uniform(-5000, 5000, 20000), rng.uniform(-3000, 3000, 20000)
    grid = TileGrid(east, north, 100.0)
    for e, n, r in ((0.0, 0.0, 250.0), (-4990.0, 2990.0, 300.0), (9000.0, 0.0, 100.0), (123.0, -77.0, 1500.0)):
        expected = np.flatnonzero((east - e) ** 2 + (north - n) ** 2 <= r * r)
        assert np.array_equal(grid.within(e, n, r), expected)


def test_ivfpq_refuses_small_regions():
    from skyfix.pack.tilepack import make_index
    with pytest.raises(PackError, match="at least 10000 tiles"):
        make_index("ivfpq", unit_vectors(100))


def test_compact_index_pack_reranks_with_its_exact_vectors(tmp_path, textured_canvas):
    """An IVF-PQ pack keeps its exact vectors (vectors.npy): global and window searches re-rank
    the compact index's candidates with them, so they return exact scores; a truncated vectors
    file refuses the pack."""
    from skyfix.contracts import GeoTile
    from skyfix.pack.tilepack import VECTORS_FILE, TilePack
    from skyfix.tiles.build import write_pack
    n, side = 12000, 110
    vectors = unit_vectors(n, d=32, seed=5)
    tiles = [GeoTile(i, 45.0, 7.0, -275.0 + 5.0 * (i % side), -275.0 + 5.0 * (i // side), 20.0) for i in range(n)]
    out = write_pack(tmp_path / "big", textured_canvas, tiles, vectors, model_id="m", tile_px=32, stride_m=5.0,
                     index_kind="ivfpq")
    pack = TilePack.open(out)
    assert pack.vectors is not None and pack.vectors.shape == (n, 32)
    q = unit_vectors(5, d=32, seed=6)
    scores, ids = pack.search(q, 10)
    exact = q @ vectors.T
    for row in range(5):  # scores are the exact ones of the ids returned
        assert np.allclose(scores[row], exact[row, ids[row]], atol=1e-5)
    top_exact = np.argsort(-exact, axis=1)[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, top_exact)]) >= 0.8
    scores, ids = pack.search(q, 10, near=(0.0, 0.0, 30.0))
    window = pack.ids_within(0.0, 0.0, 30.0)
    assert np.array_equal(ids, window[np.argsort(-(q @ vectors[window].T), axis=1)[:, :10]])
    data = (out / VECTORS_FILE).read_bytes()
    (out / VECTORS_FILE).write_bytes(data[:len(data) // 2])
    with pytest.raises(PackError, match="vectors.npy"):
        TilePack.open(out)


def test_checksums_are_not_recomputed_for_unchanged_files_but_inspect_does(pack_dir, monkeypatch):
    import os
    from skyfix import artifacts
    out, _, _ = pack_dir
    TilePack.open(out)  # the first open hashes every file and records it
    hashed = []
    real = artifacts.file_digest
    monkeypatch.setattr(artifacts, "file_digest", lambda p: (hashed.append(p), real(p))[1])
    TilePack.open(out)
    assert hashed == []  # sizes and times unchanged: no file read again
    index = out / "index.faiss"
    st = index.stat()
    data = bytearray(index.read_bytes())
    data[-5] ^= 0xFF  # same size; then the old modification time is put back
    index.write_bytes(bytes(data))
    os.utime(index, ns=(st.st_atime_ns, st.st_mtime_ns))
    TilePack.open(out)  # what the stamp vouches for is not re-read at start ...
    with pytest.raises(PackError, match="index.faiss checksum differs"):
        TilePack.open(out, full_check=True)  # ... `skyfix tiles inspect` re-reads everything
    index.write_bytes(bytes(data))  # a rewrite changes the modification time: hashed again
    with pytest.raises(PackError, match="index.faiss checksum differs"):
        TilePack.open(out)
