"""Packs from tile servers: a real HTTP server on 127.0.0.1 serving XYZ tiles, read through GDAL's
WMS driver; errors, stalls, resuming from the cache, and keys kept out of the pack."""
import http.server
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from skyfix import geo
from skyfix.config import load_config
from skyfix.errors import ImageError
from tests.helpers import TileServer

SHARED_XYZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "colorado_z18" / "xyz"
ZOOM = 18


@pytest.fixture()
def png_tiles(tmp_path_factory, textured_canvas):
    """A generated 4 x 4 set of real PNG tiles at zoom 18 (from the textured map) and its box."""
    folder = tmp_path_factory.mktemp("xyz")
    x0, y0 = 52508, 100195
    img = cv2.resize(textured_canvas.image_rgb, (1024, 1024), interpolation=cv2.INTER_AREA)
    for i in range(4):
        for j in range(4):
            (folder / str(ZOOM) / str(x0 + i)).mkdir(parents=True, exist_ok=True)
            tile = img[j * 256:(j + 1) * 256, i * 256:(i + 1) * 256]
            cv2.imwrite(str(folder / str(ZOOM) / str(x0 + i) / f"{y0 + j}.png"), cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
    return folder, _inner_bbox(x0, y0, x0 + 3, y0 + 3)


def _inner_bbox(x0, y0, x1, y1) -> str:
    """The box of tiles x0..x1, y0..y1 shrunk by a tenth of a tile (so it selects exactly them)."""
    left, _, _, top = geo.xyz_tile_bounds_mercator(ZOOM, x0, y0)
    _, bottom, right, _ = geo.xyz_tile_bounds_mercator(ZOOM, x1, y1)
    inset = 0.1 * (right - left) / (x1 - x0 + 1)
    lon, lat = geo.mercator_to_lonlat(np.array([left + inset, right - inset]), np.array([bottom + inset, top - inset]))
    return f"{lon[0]:.9f},{lat[0]:.9f},{lon[1]:.9f},{lat[1]:.9f}"


@pytest.fixture()
def server(png_tiles):
    s = TileServer(png_tiles[0])
    yield s
    s.stop()


def _build(ortho, out, tiny_onnx_dir, log=None, **tiles):
    from skyfix.edge.embedders import open_embedder
    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.build import build_pack
    cfg = load_config(overrides={"tiles": {"tile_size_m": 100.0, "stride_m": 100.0, "features": [],
                                           "server_tiles_per_s": 1000.0, **tiles}})
    return TilePack.open(build_pack(ortho, out, cfg, open_embedder(tiny_onnx_dir, "sat"), progress=False,
                                    log=log or (lambda *_: None)))


def _service(server, bbox, tmp_path, **kw):
    from skyfix.tiles.servers import describe_server
    return describe_server("xyz", kw.pop("template", server.url), bbox, ZOOM, tmp_path / "cache", **kw)


def _same_pack(a, b, atol=1e-6):
    np.testing.assert_array_equal(a.table, b.table)
    np.testing.assert_allclose(np.asarray(a.index.reconstruct_n(0, len(a))),
                               np.asarray(b.index.reconstruct_n(0, len(b))), atol=atol)


def test_a_pack_from_the_server_equals_the_pack_from_the_local_folder(server, png_tiles, tmp_path, tiny_onnx_dir):
    pytest.importorskip("rasterio")
    folder, bbox = png_tiles
    local = _build(folder, tmp_path / "local", tiny_onnx_dir)
    remote = _build(_service(server, bbox, tmp_path), tmp_path / "remote", tiny_onnx_dir)
    _same_pack(remote, local)
    np.testing.assert_array_equal(remote.canvas().image_rgb, local.canvas().image_rgb)
    assert len(set(server.requests)) == 16
    # Built again (another pack from the same box): every tile comes from GDAL's cache.
    server.requests.clear()
    _build(_service(server, bbox, tmp_path), tmp_path / "again", tiny_onnx_dir)
    assert server.requests == []


@pytest.mark.skipif(not SHARED_XYZ.is_dir(), reason="../shared/data/colorado_z18/xyz is absent")
def test_the_colorado_tiles_from_a_server_build_the_pack_the_folder_builds(tmp_path, tiny_onnx_dir):
    """The shared Colorado tiles (JPEG data): the same tile table; the embeddings agree to the
    two JPEG decoders' difference (OpenCV's and GDAL's differ by a few levels in 16 % of pixels)."""
    pytest.importorskip("rasterio")
    s = TileServer(SHARED_XYZ)
    try:
        remote = _build(_service(s, _inner_bbox(52508, 100195, 52517, 100204), tmp_path), tmp_path / "remote",
                        tiny_onnx_dir, stride_m=200.0)
    finally:
        s.stop()
    local = _build(SHARED_XYZ, tmp_path / "local", tiny_onnx_dir, stride_m=200.0)
    np.testing.assert_array_equal(remote.table, local.table)
    a, b = (np.asarray(p.index.reconstruct_n(0, len(p))) for p in (remote, local))
    assert (np.sum(a * b, axis=1) > 0.995).all()


def test_a_failing_server_gives_a_clear_error_and_the_build_resumes_from_the_cache(server, png_tiles, tmp_path,
                                                                                   tiny_onnx_dir):
    pytest.importorskip("rasterio")
    folder, bbox = png_tiles
    service = _service(server, bbox, tmp_path)
    server.fail = {f"/{ZOOM}/52511/100198.png"}  # the last tile of the first map block read
    said = []
    with pytest.raises(ImageError, match=r"tile server http://127\.0\.0\.1:\d+/.*run the same command again"):
        _build(service, tmp_path / "pack", tiny_onnx_dir, log=said.append)
    assert "run the same command again to resume" in said[-1]
    fetched = set(server.requests) - server.fail
    assert len(fetched) >= 8
    server.fail, server.requests = set(), []
    pack = _build(service, tmp_path / "pack", tiny_onnx_dir)
    assert not set(server.requests) & fetched  # what was fetched before came from the cache
    _same_pack(pack, _build(folder, tmp_path / "local", tiny_onnx_dir))


def test_a_stalled_server_times_out_with_a_clear_error(server, png_tiles, tmp_path, tiny_onnx_dir, monkeypatch):
    pytest.importorskip("rasterio")
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    server.stall_s = 3.0
    t0 = time.monotonic()
    with pytest.raises(ImageError, match="tile server"):
        _build(_service(server, png_tiles[1], tmp_path), tmp_path / "pack", tiny_onnx_dir)
    assert time.monotonic() - t0 < 60


def test_the_key_comes_from_the_environment_or_a_file_and_stays_out_of_the_pack(server, png_tiles, tmp_path,
                                                                                 tiny_onnx_dir, monkeypatch):
    pytest.importorskip("rasterio")
    folder, bbox = png_tiles
    server.key = "s3cret"
    template = server.url + "?key={key}"
    monkeypatch.delenv("SKYFIX_TILE_KEY", raising=False)
    with pytest.raises(ImageError, match="no key was given"):
        _service(server, bbox, tmp_path, template=template)
    monkeypatch.setenv("SKYFIX_TILE_KEY", "wrong")
    with pytest.raises(ImageError, match="tile server"):
        _build(_service(server, bbox, tmp_path, template=template), tmp_path / "bad", tiny_onnx_dir)
    (tmp_path / "key.txt").write_text("s3cret\n")
    pack = _build(_service(server, bbox, tmp_path, template=template, key_file=str(tmp_path / "key.txt")),
                  tmp_path / "pack", tiny_onnx_dir, imagery_source=template.split("?")[0])
    assert len(pack) == 16  # 4 x 4 tiles of 256 px at 0.46 m/px: 100 m tiles every 100 m
    stored = "".join(p.read_text(errors="ignore") for p in pack.path.rglob("*") if p.suffix in (".yaml", ".csv"))
    assert "s3cret" not in stored


def test_boxes_and_templates_are_checked(tmp_path):
    from skyfix.tiles.servers import describe_server, parse_bbox
    for bad in ("1,2,3", "10,50,5,51", "a,b,c,d", "0,-89,1,0"):
        with pytest.raises(ImageError, match="bbox"):
            parse_bbox(bad)
    with pytest.raises(ImageError, match="must hold"):
        describe_server("xyz", "http://h/{z}/{x}.png", "8,47,8.01,47.01", 18, tmp_path)
    with pytest.raises(ImageError, match="needs --zoom"):
        describe_server("xyz", "http://h/{z}/{x}/{y}.png", "8,47,8.01,47.01", None, tmp_path)


def test_a_wms_layer_is_read_over_the_box(png_tiles, tmp_path):
    """A WMS on 127.0.0.1 answering GetMap from the generated tiles (EPSG:3857): the source GDAL
    reads over the box is the tiles' image at the asked resolution, fetched with the layer asked."""
    pytest.importorskip("rasterio")
    from urllib.parse import parse_qs

    from skyfix.tiles.ortho import read_source
    from skyfix.tiles.servers import describe_server
    folder, bbox = png_tiles
    x0, y0 = 52508, 100195
    stitched = _stitched(folder, x0, y0)
    left, _, _, top = geo.xyz_tile_bounds_mercator(ZOOM, x0, y0)
    _, bottom, right, _ = geo.xyz_tile_bounds_mercator(ZOOM, x0 + 3, y0 + 3)
    px_m = (right - left) / 1024
    asked = []

    class Wms(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server API)
            q = {k.upper(): v[0] for k, v in parse_qs(self.path.partition("?")[2]).items()}
            asked.append(q)
            w, h = int(q["WIDTH"]), int(q["HEIGHT"])
            bx0, by0, bx1, by1 = (float(v) for v in q["BBOX"].split(","))
            # GetMap: the box's pixels from the stitched tiles (an affine warp in Mercator metres).
            sx, sy = (bx1 - bx0) / w / px_m, (by1 - by0) / h / px_m
            m = np.array([[sx, 0, (bx0 - left) / px_m + 0.5 * sx - 0.5], [0, sy, (top - by1) / px_m + 0.5 * sy - 0.5]])
            img = cv2.warpAffine(stitched, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            data = cv2.imencode(".png", img)[1].tobytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Wms)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        service = describe_server("wms", f"http://127.0.0.1:{httpd.server_address[1]}/wms?", bbox, None,
                                  tmp_path / "cache", layer="ortho", gsd_m=0.5)
        src = read_source(service, tiles_per_s=1000.0)
        rgb, valid = src.read(0, src.height_px, 0, src.width_px)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert asked and all(q["LAYERS"] == "ortho" and q["SRS"] == "EPSG:3857" and q["REQUEST"] == "GetMap" for q in asked)
    assert valid.all() and rgb.shape[0] > 500 and _covers_the_box(src, bbox, slack_m=2.0)
    assert _mean_difference_from_tiles(src, rgb, stitched, left, top, px_m) < 6.0


def _covers_the_box(src, bbox: str, slack_m: float) -> bool:
    """The source's Mercator extent is the box's, within slack_m."""
    w, s_, e, n = (float(v) for v in bbox.split(","))
    xs, ys = geo.lonlat_to_mercator(np.array([w, e]), np.array([s_, n]))
    a = src.affine
    got = (a[2], a[5] + src.height_px * a[4], a[2] + src.width_px * a[0], a[5])
    return bool(np.allclose(got, (xs[0], ys[0], xs[1], ys[1]), atol=slack_m))


def _stitched(folder, x0: int, y0: int) -> np.ndarray:
    """The 4 x 4 generated tiles from (x0, y0) as one BGR image."""
    return np.vstack([np.hstack([cv2.imread(str(folder / str(ZOOM) / str(x0 + i) / f"{y0 + j}.png"))
                                 for i in range(4)]) for j in range(4)])


def _mean_difference_from_tiles(src, rgb, stitched_bgr, left, top, px_m) -> float:
    """Mean absolute difference between what a source read and the same ground in the stitched
    tiles (Mercator origin left, top; px_m metres per tile pixel), resampled to its grid."""
    a = src.affine
    cols = ((a[2] + (np.arange(src.width_px) + 0.5) * a[0]) - left) / px_m - 0.5
    rows = (top - (a[5] + (np.arange(src.height_px) + 0.5) * a[4])) / px_m - 0.5
    expect = cv2.remap(stitched_bgr, *np.meshgrid(cols.astype(np.float32), rows.astype(np.float32)), cv2.INTER_LINEAR)
    return float(np.abs(rgb.astype(int) - cv2.cvtColor(expect, cv2.COLOR_BGR2RGB)).mean())


WMTS_CAPABILITIES = """<?xml version="1.0" encoding="UTF-8"?>
<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1" version="1.0.0">
 <Contents>
  <Layer>
   <ows:Identifier>ortho</ows:Identifier>
   <Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style>
   <Format>image/png</Format>
   <TileMatrixSetLink><TileMatrixSet>GoogleMapsCompatible</TileMatrixSet></TileMatrixSetLink>
   <ResourceURL format="image/png" resourceType="tile" template="{base}/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png"/>
  </Layer>
  <TileMatrixSet>
   <ows:Identifier>GoogleMapsCompatible</ows:Identifier>
   <ows:SupportedCRS>urn:ogc:def:crs:EPSG::3857</ows:SupportedCRS>
   <TileMatrix>
    <ows:Identifier>18</ows:Identifier>
    <ScaleDenominator>{scale!r}</ScaleDenominator>
    <TopLeftCorner>-20037508.342789244 20037508.342789244</TopLeftCorner>
    <TileWidth>256</TileWidth><TileHeight>256</TileHeight>
    <MatrixWidth>262144</MatrixWidth><MatrixHeight>262144</MatrixHeight>
   </TileMatrix>
  </TileMatrixSet>
 </Contents>
</Capabilities>
"""


def test_a_wmts_layer_is_read_over_the_box(server, png_tiles, tmp_path):
    """A WMTS on 127.0.0.1 (GetCapabilities, RESTful tiles of the Web Mercator set at zoom 18):
    GDAL's WMTS driver reads the box from its tiles, as they are."""
    pytest.importorskip("rasterio")
    from skyfix.tiles.ortho import read_source
    from skyfix.tiles.servers import describe_server
    folder, bbox = png_tiles
    base = server.url.split("/{z}")[0]
    server.capabilities = WMTS_CAPABILITIES.format(base=base, scale=559082264.0287178 / 2 ** ZOOM)
    service = describe_server("wmts", f"{base}/wmts", bbox, None, tmp_path / "cache", layer="ortho")
    src = read_source(service, tiles_per_s=1000.0)
    rgb, valid = src.read(0, src.height_px, 0, src.width_px)
    x0, y0 = 52508, 100195
    stitched = _stitched(folder, x0, y0)
    left, _, _, top = geo.xyz_tile_bounds_mercator(ZOOM, x0, y0)
    assert "/wmts" in server.requests and any(r.startswith(f"/{ZOOM}/") for r in server.requests)
    assert valid.mean() > 0.95 and rgb.shape[0] > 500 and _covers_the_box(src, bbox, slack_m=2 * src.affine[0])
    assert _mean_difference_from_tiles(src, rgb, stitched, left, top, src.affine[0]) < 3.0


def test_a_box_west_of_greenwich_is_read_as_the_user_types_it(tmp_path, capsys):
    """`--bbox -107.89,38.98,-107.87,38.99` (a space, a minus sign first): parsed as the box, not
    taken for an option. The build then fails on the server (nothing listens there), not on the
    command line."""
    from skyfix.cli import _join_negative_values, main
    assert _join_negative_values(["tiles", "build", "--bbox", "-107.89,38.98,-107.87,38.99", "-q"]) == \
        ["tiles", "build", "--bbox=-107.89,38.98,-107.87,38.99", "-q"]
    assert _join_negative_values(["--bbox", "--zoom"]) == ["--bbox", "--zoom"]
    code = main(["tiles", "build", "--xyz", "http://127.0.0.1:9/{z}/{x}/{y}.png", "--bbox",
                 "-107.8910,38.9880,-107.8900,38.9890", "--zoom", "18", "--out", str(tmp_path / "p"), "-q"])
    err = capsys.readouterr().err
    assert "expected one argument" not in err and code != 0 and "tile server" in err
