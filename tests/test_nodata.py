"""Map no-data: an untagged alpha band, a PNG's alpha, a no-data value given by hand. No-data is
never embedded: tiles over it are skipped and counted, and the build says how much was valid."""
import numpy as np
import pytest

from skyfix.config import load_config


def _rgba_geotiff(path, textured_canvas, tag_alpha: bool):
    """The textured map as an EPSG:32632 GeoTIFF with a fourth band: 0 (and black) over the west
    60 %, 255 elsewhere; photometric RGB with the fourth band tagged alpha or left undefined."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.enums import ColorInterp
    from rasterio.transform import from_origin
    rgb = np.transpose(textured_canvas.image_rgb[:600, :600], (2, 0, 1)).copy()
    alpha = np.full((600, 600), 255, np.uint8)
    alpha[:, :360] = 0
    rgb[:, :, :360] = 0
    tags = {"alpha": "YES"} if tag_alpha else {}  # GeoTIFF ExtraSamples: associated alpha, or unspecified
    with rasterio.open(path, "w", driver="GTiff", width=600, height=600, count=4, dtype="uint8", crs="EPSG:32632",
                       transform=from_origin(350000.0, 4990000.0, 1.0, 1.0), photometric="RGB", **tags) as ds:
        ds.write(np.concatenate([rgb, alpha[None]]))
    with rasterio.open(path) as ds:
        assert (ds.colorinterp[3] == ColorInterp.alpha) == tag_alpha
    return path


@pytest.mark.parametrize("tag_alpha", [False, True])
def test_an_rgba_map_with_or_without_the_alpha_tag_is_valid_only_where_alpha_is(tmp_path, textured_canvas,
                                                                               caplog, tag_alpha):
    from skyfix.tiles.ortho import read_source
    src = read_source(_rgba_geotiff(tmp_path / "rgba.tif", textured_canvas, tag_alpha))
    _, valid = src.read(0, 600, 0, 600)
    assert not valid[:, :360].any() and valid[:, 360:].all()
    assert ("not tagged as alpha" in caplog.text) == (not tag_alpha)  # said when it was guessed


def test_a_fourth_band_that_is_not_alpha_like_is_left_alone(tmp_path, textured_canvas):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    from skyfix.tiles.ortho import read_source
    bands = np.transpose(textured_canvas.image_rgb[:200, :200], (2, 0, 1))
    with rasterio.open(tmp_path / "nir.tif", "w", driver="GTiff", width=200, height=200, count=4, dtype="uint8",
                       crs="EPSG:32632", transform=from_origin(350000.0, 4990000.0, 1.0, 1.0)) as ds:
        ds.write(np.concatenate([bands, bands[:1]]))  # a near-infrared-like band: many values
    assert read_source(tmp_path / "nir.tif").read(0, 200, 0, 200)[1].all()


def test_a_pack_from_an_untagged_rgba_map_embeds_no_no_data(tmp_path, textured_canvas, tiny_onnx_dir):
    from skyfix.edge.embedders import open_embedder
    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.build import build_pack
    path = _rgba_geotiff(tmp_path / "rgba.tif", textured_canvas, tag_alpha=False)
    cfg = load_config(overrides={"tiles": {"tile_size_m": 100.0, "stride_m": 50.0, "features": ["sift"]}})
    said = []
    pack = TilePack.open(build_pack(path, tmp_path / "pack", cfg, open_embedder(tiny_onnx_dir, "sat"),
                                    progress=False, log=said.append))
    east_min = min(t[5] for t in pack.table)  # east_min_m of every tile
    west_edge, _, east_edge, _ = pack.manifest["region"]["bounds_en_m"]
    assert east_min >= west_edge + 0.6 * (east_edge - west_edge) - 2.0  # no tile reaches into the no-data
    import re
    valid_pct = [float(m.group(1)) for s in said for m in [re.search(r"map valid \(not no-data\): ([\d.]+) %", s)] if m]
    assert valid_pct and 30 < valid_pct[0] < 45, said  # 40 % of the raster, a little less of its local grid
    assert any("skipped" in s for s in said)
    # Nothing is described there either: every map keypoint sits on valid map pixels.
    xy, _ = pack.map_features("sift").near(0.5 * (west_edge + east_edge), 0.0, 1000.0)
    blocks = pack.map_blocks()
    cols, rows = blocks.px_from_en(xy[:, 0], xy[:, 1])
    _, valid = blocks.read_px(0, blocks.height_px, 0, blocks.width_px)
    on_valid = valid[np.clip(np.asarray(rows).astype(int), 0, blocks.height_px - 1),
                     np.clip(np.asarray(cols).astype(int), 0, blocks.width_px - 1)]
    assert len(xy) > 100 and on_valid.all(), f"{(~on_valid).sum()} of {len(xy)} keypoints on no-data"


def test_a_nodata_value_given_by_hand_and_a_png_alpha(tmp_path, textured_canvas):
    import cv2

    from skyfix.errors import ImageError
    from skyfix.tiles.ortho import read_source
    img = cv2.cvtColor(textured_canvas.image_rgb[:200, :200], cv2.COLOR_RGB2BGR)
    img[:100] = 0
    cv2.imwrite(str(tmp_path / "black.png"), img)
    assert read_source(tmp_path / "black.png", gsd_m=0.5).read(0, 200, 0, 200)[1].all()  # black is a colour
    valid = read_source(tmp_path / "black.png", gsd_m=0.5, nodata=0).read(0, 200, 0, 200)[1]
    assert not valid[:100].any() and valid[100:].mean() > 0.99
    rgba = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    rgba[:, :50, 3] = 0
    cv2.imwrite(str(tmp_path / "alpha.png"), rgba)
    valid = read_source(tmp_path / "alpha.png", gsd_m=0.5).read(0, 200, 0, 200)[1]
    assert not valid[:, :50].any() and valid[:, 50:].all()
    with pytest.raises(ImageError, match="0-255"):
        read_source(tmp_path / "black.png", gsd_m=0.5, nodata=300)
