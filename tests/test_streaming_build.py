"""The streaming ground-station build: windowed reads, map blocks read on demand, mosaics, resume."""
import os

import numpy as np
import pytest

from skyfix.errors import PackError
from skyfix.pack.blocks import MapBlocks, write_canvas_blocks


def _same_pixels(a, b):
    """Equal up to OpenCV's fixed-point interpolation (a window shifts the coordinates' origin)."""
    diff = np.abs(a.astype(int) - b)
    return diff.max() <= 1 and diff.mean() < 0.01


def _blocks_of(canvas, tmp_path, block_px):
    """The canvas stored as blocks of block_px, opened as MapBlocks."""
    write_canvas_blocks(tmp_path, canvas, block_px)
    return MapBlocks(tmp_path, canvas.gsd_m, canvas.frame, canvas.east0_m, canvas.north0_m,
                     canvas.width_px, canvas.height_px, block_px, cache_blocks=3)


def test_map_blocks_render_as_the_canvas(textured_canvas, tmp_path):
    blocks = _blocks_of(textured_canvas, tmp_path, 128)  # 5 x 5 blocks, a cache of 3
    for east, north, size, px, rot in [(0, 0, 100, 64, 0), (-260, 250, 80, 96, 30), (128.5, -3, 250, 48, 0)]:
        a, va = textured_canvas.render(east, north, size, px, rot)
        b, vb = blocks.render(east, north, size, px, rot)
        assert _same_pixels(a, b)
        assert va == pytest.approx(vb)
    np.testing.assert_array_equal(blocks.whole().image_rgb, textured_canvas.image_rgb)
    img, valid = blocks.read_px(-10, 20, 590, 610)  # beyond the map: black and not valid
    assert valid[:10].sum() == 0 and valid[10:, :10].all() and not valid[:, 10:].any()


def test_a_corrupt_block_is_refused_where_it_is_read(textured_canvas, tmp_path):
    blocks = _blocks_of(textured_canvas, tmp_path, 128)
    path = tmp_path / "map" / "0_0.png"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PackError, match="0_0 is truncated or corrupt"):
        blocks.render(-250, 250, 50, 32)
    assert blocks.render(200, -200, 50, 32)[1] == 1.0  # the rest of the map still reads


@pytest.fixture(scope="module")
def utm_geotiffs(tmp_path_factory, textured_canvas):
    """The textured map as a UTM GeoTIFF (EPSG:32632, 1 m/px), whole and cut into three of its
    four quadrants (a mosaic with a hole)."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin
    from rasterio.windows import Window
    folder = tmp_path_factory.mktemp("utm")
    img = np.transpose(textured_canvas.image_rgb, (2, 0, 1))
    profile = dict(driver="GTiff", dtype="uint8", count=3, crs="EPSG:32632", tiled=True,
                   blockxsize=128, blockysize=128)
    x0, y0 = 350000.0, 4990000.0
    whole = folder / "whole.tif"
    with rasterio.open(whole, "w", width=600, height=600, transform=from_origin(x0, y0, 1.0, 1.0), **profile) as ds:
        ds.write(img)
    parts = []
    for i, (r, c) in enumerate([(0, 0), (0, 300), (300, 0)]):
        parts.append(folder / f"part{i}.tif")
        with rasterio.open(parts[-1], "w", width=300, height=300, transform=from_origin(x0 + c, y0 - r, 1.0, 1.0),
                           **profile) as ds:
            ds.write(img[:, r:r + 300, c:c + 300], window=Window(0, 0, 300, 300))
    return whole, parts


def test_windowed_resampling_reads_windows_and_matches_the_whole(utm_geotiffs):
    from skyfix.tiles.ortho import canvas_layout, iter_blocks, read_source, to_canvas
    src = read_source(utm_geotiffs[0])
    reads = []
    original = src.read
    src.read = lambda r0, r1, c0, c1: (reads.append((r1 - r0) * (c1 - c0)), original(r0, r1, c0, c1))[1]
    layout = canvas_layout(src)
    assert layout.gsd_m == pytest.approx(1.0, abs=0.01)
    whole = to_canvas(src, block_px=1024)
    assert max(reads) > 600 * 600  # one block covers the map: one read of all of it
    reads.clear()
    tiles = list(iter_blocks(src, layout, 128))
    assert len(tiles) == len(layout.blocks(128)) and max(reads) < 150 * 150  # block-sized windows only
    for br, bc, rgb, valid in tiles:
        assert _same_pixels(rgb, whole.image_rgb[br * 128:br * 128 + 128, bc * 128:bc * 128 + 128])
    src.close()


def test_several_geotiffs_are_one_mosaic(utm_geotiffs, tmp_path):
    from skyfix.tiles.ortho import load_canvas
    whole, parts = load_canvas(utm_geotiffs[0]), load_canvas(utm_geotiffs[1])
    assert parts.image_rgb.shape == whole.image_rgb.shape
    assert parts.valid.sum() / whole.valid.sum() == pytest.approx(0.75, abs=0.01)  # a quadrant missing
    both = parts.valid & whole.valid
    assert np.abs(parts.image_rgb[both].astype(int) - whole.image_rgb[both]).mean() < 0.5
    assert not parts.valid[-100:, -100:].any()


class _Interrupting:
    """A wrapper of an embedder that fails after `fail_after` batches (a killed build)."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.fail_after, self.calls = inner, fail_after, 0
        self.model_id, self.input_px, self.backend = inner.model_id, inner.input_px, inner.backend

    def embed(self, images):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("build stopped")
        return self.inner.embed(images)


def test_an_interrupted_build_resumes_and_gives_the_same_pack(utm_geotiffs, tmp_path, tiny_onnx_dir, monkeypatch):
    from skyfix.config import load_config
    from skyfix.edge.embedders import open_embedder
    from skyfix.tiles import build, embed
    from skyfix.pack.tilepack import TilePack
    monkeypatch.setattr(embed, "EMBED_CHUNK", 16)
    cfg = load_config(overrides={"tiles": {"tile_size_m": 100.0, "stride_m": 50.0, "batch_size": 8,
                                           "features": ["sift"], "min_agl_m": 0.0}})  # the main tiles' chunks
    sat = open_embedder(tiny_onnx_dir, "sat")
    quiet = dict(progress=False, log=lambda *_: None)
    ref = TilePack.open(build.build_pack(utm_geotiffs[1], tmp_path / "ref", cfg, _Interrupting(sat), **quiet))
    assert len(ref) > 40 and not ((ref.east_m >= 50) & (ref.north_m <= -50)).any()  # none in the hole
    first, said = _Interrupting(sat, fail_after=7), []  # dies in the fourth chunk of 16 tiles
    with pytest.raises(KeyboardInterrupt):
        build.build_pack(utm_geotiffs[1], tmp_path / "pack", cfg, first, progress=False, log=said.append)
    assert "run the same command again to resume" in said[-1]
    assert not (tmp_path / "pack").exists() and (tmp_path / ".pack.partial").is_dir()
    again = _Interrupting(sat)
    pack = TilePack.open(build.build_pack(utm_geotiffs[1], tmp_path / "pack", cfg, again, **quiet))
    assert again.calls == -(-len(ref) // 8) - 6  # the three finished chunks (6 batches) were not redone
    assert not (tmp_path / ".pack.partial").exists()
    np.testing.assert_array_equal(pack.table, ref.table)
    q = np.asarray(ref.index.reconstruct_n(0, len(ref)))
    np.testing.assert_allclose(np.asarray(pack.index.reconstruct_n(0, len(pack))), q, atol=1e-6)
    np.testing.assert_array_equal(pack.canvas().image_rgb, ref.canvas().image_rgb)
    assert pack.manifest["features"]["sift"]["count"] == ref.manifest["features"]["sift"]["count"] > 0


def test_a_build_of_other_inputs_does_not_resume(utm_geotiffs, tmp_path, tiny_onnx_dir):
    from skyfix.config import load_config
    from skyfix.edge.embedders import open_embedder
    from skyfix.tiles.build import build_pack
    cfg = load_config(overrides={"tiles": {"tile_size_m": 100.0, "stride_m": 100.0, "features": []}})
    sat = open_embedder(tiny_onnx_dir, "sat")
    with pytest.raises(KeyboardInterrupt):
        build_pack(utm_geotiffs[1], tmp_path / "pack", cfg, _Interrupting(sat, fail_after=0), progress=False,
                   log=lambda *_: None)
    lines = []
    build_pack(utm_geotiffs[0], tmp_path / "pack", cfg, sat, progress=False, log=lines.append)
    assert any("starting afresh" in line for line in lines)


def test_a_two_worker_dask_cluster_builds_the_same_pack(utm_geotiffs, tmp_path, tiny_onnx_dir, monkeypatch):
    pytest.importorskip("distributed")
    from skyfix.config import load_config
    from skyfix.edge.embedders import open_embedder
    from skyfix.tiles import build, embed
    from skyfix.pack.tilepack import TilePack
    monkeypatch.setattr(embed, "EMBED_CHUNK", 16)  # several shards for two workers
    cfg = load_config(overrides={"tiles": {"tile_size_m": 100.0, "stride_m": 50.0, "features": []}})
    sat = open_embedder(tiny_onnx_dir, "sat")
    quiet = dict(progress=False, log=lambda *_: None, model_source=str(tiny_onnx_dir))
    ref = TilePack.open(build.build_pack(utm_geotiffs[0], tmp_path / "ref", cfg, sat, **quiet))
    here, environ = _Interrupting(sat), dict(os.environ)  # counts what the build itself embedded
    pack = TilePack.open(build.build_pack(utm_geotiffs[0], tmp_path / "pack", cfg, here, cluster="local:2", **quiet))
    assert dict(os.environ) == environ  # the cluster's worker settings did not leak into this process
    assert here.calls == 0  # every shard was embedded by the cluster's workers, the low level's too
    assert [lv.tile_size_m for lv in pack.levels] == [lv.tile_size_m for lv in ref.levels] and pack.levels
    np.testing.assert_array_equal(pack.table, ref.table)
    np.testing.assert_allclose(pack.index.reconstruct_n(0, len(pack)), ref.index.reconstruct_n(0, len(ref)), atol=1e-5)


def test_cluster_spec_is_checked():
    from skyfix.errors import SkyfixError
    from skyfix.tiles.distributed import parse_cluster
    assert parse_cluster("local:2") == (2, None) and parse_cluster("tcp://10.0.0.5:8786") == (None, "tcp://10.0.0.5:8786")
    for bad in ("local:0", "local:x", "10.0.0.5"):
        with pytest.raises(SkyfixError, match="local:N"):
            parse_cluster(bad)


def test_simulated_views_and_overviews_from_blocks_match_the_canvas(textured_canvas, tmp_path):
    from skyfix.edge.camera import PinholeCamera
    from skyfix.render.views import ViewPose, render_view
    blocks = _blocks_of(textured_canvas, tmp_path, 128)
    cam = PinholeCamera.from_hfov(320, 240, 70.0)
    for pose in (ViewPose(10.0, -20.0, 120.0, 0.05, -0.08, 0.7), ViewPose(-200.0, 230.0, 150.0, 0.0, 0.2, 3.0)):
        a, va, ca = render_view(textured_canvas, cam, pose)
        b, vb, cb = render_view(blocks, cam, pose)
        assert _same_pixels(a, b) and va == pytest.approx(vb, abs=1e-3) and ca == pytest.approx(cb)
    small, scale = blocks.overview(200)
    ref, ref_scale = textured_canvas.overview(200)
    assert scale == ref_scale == pytest.approx(200 / 600) and small.shape == ref.shape == (200, 200, 3)
    # Shrunk block by block vs whole: blocks land within a pixel, far closer than a 1-px shift.
    one_px_off = np.abs(ref[:, 1:].astype(int) - ref[:, :-1]).mean()
    assert np.abs(small.astype(int) - ref).mean() < 0.5 * one_px_off


def test_inspect_verifies_every_map_block(textured_canvas, tmp_path):
    from skyfix.cli import main
    from skyfix.tiles.build import tile_grid
    from skyfix.tiles.build import write_pack
    tiles, _ = tile_grid(textured_canvas, 200.0, 200.0)
    out = write_pack(tmp_path / "pack", textured_canvas, tiles, np.eye(len(tiles), 8, dtype=np.float32),
                     model_id="m", tile_px=32, stride_m=200.0)
    assert main(["tiles", "inspect", str(out)]) == 0
    (out / "map" / "0_0.png").write_bytes(b"not a png")
    assert main(["tiles", "inspect", str(out)]) == 2  # the block is only read at inspect, or when a window needs it


def test_a_truncated_geotiff_is_a_clear_error(utm_geotiffs, tmp_path):
    from skyfix.errors import ImageError
    from skyfix.tiles.ortho import load_canvas
    bad = tmp_path / "cut.tif"
    bad.write_bytes(utm_geotiffs[0].read_bytes()[:60_000])  # the header and the first blocks only
    with pytest.raises(ImageError, match="cut.tif"):
        load_canvas(bad)


def test_an_mbtiles_map_reads_as_the_geotiff_it_was_made_from(tmp_path, textured_canvas):
    """MBTiles (GDAL's driver, EPSG:3857 tiles with alpha) is an --ortho input: the same pixels
    as the GeoTIFF it was written from, valid where the tiles have data."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    from skyfix.tiles.ortho import read_source
    img = np.transpose(textured_canvas.image_rgb[:512, :512], (2, 0, 1))
    profile = dict(width=512, height=512, count=3, dtype="uint8", crs="EPSG:3857",
                   transform=from_origin(-12010000.0, 4720000.0, 0.5971642834779395, 0.5971642834779395))
    with rasterio.open(tmp_path / "map.tif", "w", driver="GTiff", **profile) as ds:
        ds.write(img)
    with rasterio.open(tmp_path / "map.mbtiles", "w", driver="MBTiles", TILE_FORMAT="PNG", **profile) as ds:
        ds.write(img)
    tif, mbt = read_source(tmp_path / "map.tif"), read_source(tmp_path / "map.mbtiles")
    # MBTiles snaps to its zoom's tile grid: compare at the same map coordinates.
    dx = round((tif.affine[2] - mbt.affine[2]) / tif.affine[0])
    dy = round((mbt.affine[5] - tif.affine[5]) / tif.affine[0])
    rgb_t, valid_t = tif.read(0, 512, 0, 512)
    rgb_m, valid_m = mbt.read(dy, dy + 512, dx, dx + 512)
    assert valid_t.all() and valid_m[8:-8, 8:-8].all()
    diff = np.abs(rgb_t.astype(int) - rgb_m.astype(int))[8:-8, 8:-8]
    assert diff.mean() < 3.0, diff.mean()
