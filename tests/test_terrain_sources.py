"""Terrain wherever it can be had: terrain-RGB tiles (Terrarium, Mapbox) from a real HTTP server
on 127.0.0.1 through the tile-server code, several DEM files for one region, and the vertical and
map accuracies a pack records."""
import math

import cv2
import numpy as np
import pytest

from skyfix import geo
from skyfix.errors import ImageError
from tests.helpers import TileServer

ZOOM = 16


def _heights(east_m, north_m):
    """The ground the tiles encode: 1480-1530 m, a slope and a ripple (m)."""
    e, n = np.asarray(east_m, float), np.asarray(north_m, float)
    return 1500.0 + 0.04 * e + 12.0 * np.sin(n / 90.0)


def _encode(h: np.ndarray, encoding: str) -> np.ndarray:
    """H x W heights (m) -> H x W x 3 uint8 RGB in the encoding's own definition."""
    if encoding == "terrarium":
        v = h + 32768.0
        r, g = np.floor(v / 256.0), np.floor(v) % 256
        b = np.floor((v - np.floor(v)) * 256.0)
    else:
        v = np.round((h + 10000.0) * 10.0)
        r, g, b = np.floor(v / 65536.0), np.floor(v / 256.0) % 256, v % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def _terrain_tiles(folder, frame, encoding: str, skip=()) -> list:
    """PNG terrain tiles at ZOOM over the local box -320..320 m of `frame`, each pixel the
    encoded height at its centre; tiles in `skip` left out (a hole). Returns the tiles written."""
    lat, lon, _ = frame.to_lla(np.array([-320.0, 320.0]), np.array([-320.0, 320.0]))
    from skyfix.tiles.servers import tile_range
    x0, y0, x1, y1 = tile_range((lon[0], lat[0], lon[1], lat[1]), ZOOM)
    written = []
    for x in range(x0, x1 + 1):
        for y in range(y0, y1 + 1):
            if (x, y) in skip:
                continue
            left, bottom, right, top = geo.xyz_tile_bounds_mercator(ZOOM, x, y)
            step = (right - left) / 256
            mx, my = np.meshgrid(left + (np.arange(256) + 0.5) * step, top - (np.arange(256) + 0.5) * step)
            plon, plat = geo.mercator_to_lonlat(mx, my)
            e, n, _ = frame.to_enu(plat, plon)
            (folder / str(ZOOM) / str(x)).mkdir(parents=True, exist_ok=True)
            rgb = _encode(_heights(e, n), encoding)
            cv2.imwrite(str(folder / str(ZOOM) / str(x) / f"{y}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            written.append((x, y))
    return written


@pytest.fixture()
def frame():
    return geo.LocalFrame(45.0, 7.0)


BOX = (-280.0, -280.0, 280.0, 280.0)


@pytest.mark.parametrize("encoding", ["terrarium", "mapbox"])
def test_terrain_rgb_tiles_from_a_server_decode_to_the_known_heights(tmp_path, frame, encoding):
    pytest.importorskip("rasterio")
    from skyfix.tiles.terrain import DemInput, terrain_heights
    _terrain_tiles(tmp_path / "tiles", frame, encoding)
    server = TileServer(tmp_path / "tiles")
    try:
        dem = DemInput(xyz=server.url, zoom=ZOOM, encoding=encoding)
        t = terrain_heights(dem, frame, BOX, cache_root=tmp_path / "cache")
    finally:
        server.stop()
    rng = np.random.default_rng(0)
    e, n = rng.uniform(-250, 250, 300), rng.uniform(-250, 250, 300)
    # Bilinear on cells of about 1.7 m over a ripple of 12 m per 90 m: a few centimetres.
    assert t.height_m(e, n) == pytest.approx(_heights(e, n), abs=0.25)
    assert encoding in t.source and "127.0.0.1" in t.source
    assert t.vertical_accuracy_m == 3.0 and not t.vertical_accuracy_stated  # a server's, assumed


def test_a_missing_terrain_tile_is_no_data_and_bad_tiles_are_clear_errors(tmp_path, frame):
    pytest.importorskip("rasterio")
    from skyfix.tiles.terrain import DemInput, guess_encoding, terrain_heights
    from skyfix.tiles.servers import tile_range
    _terrain_tiles(tmp_path / "tiles", frame, "terrarium")

    def tile_under(east_m, north_m):
        lat, lon, _ = frame.to_lla(east_m, north_m)
        x, y, _, _ = tile_range((float(lon), float(lat), float(lon) + 1e-9, float(lat) + 1e-9), ZOOM)
        return tmp_path / "tiles" / str(ZOOM) / str(x) / f"{y}.png"

    tile_under(-250.0, 250.0).unlink()  # the north-west corner's tile is missing on the server
    server = TileServer(tmp_path / "tiles")
    try:
        t = terrain_heights(DemInput(xyz=server.url, zoom=ZOOM, encoding="terrarium"), frame, BOX,
                            cache_root=tmp_path / "cache1")
        assert t.height_at(-250.0, 250.0) is None  # the hole is no-data, never 0 m
        assert t.height_at(250.0, -250.0) == pytest.approx(_heights(250.0, -250.0), abs=0.25)
        good = t.heights_m[np.isfinite(t.heights_m)]
        assert good.min() > 1400.0  # no silent zeros (a decoded black tile would be -32768 m)
        # The wrong encoding gives no ground heights: refused, naming the option.
        with pytest.raises(ImageError, match="dem-encoding"):
            terrain_heights(DemInput(xyz=server.url, zoom=ZOOM, encoding="mapbox"), frame, BOX,
                            cache_root=tmp_path / "cache2")
        # A tile that is not an image: a clear error naming the server.
        tile_under(250.0, -250.0).write_bytes(b"<html>quota exceeded</html>")
        with pytest.raises(ImageError, match="tile server"):
            terrain_heights(DemInput(xyz=server.url, zoom=ZOOM, encoding="terrarium"), frame, BOX,
                            cache_root=tmp_path / "cache3")
    finally:
        server.stop()
    assert guess_encoding("https://s3.amazonaws.com/elevation-tiles-prod/terrarium/{z}/{x}/{y}.png") == "terrarium"
    assert guess_encoding("https://api.mapbox.com/v4/mapbox.terrain-rgb/{z}/{x}/{y}.pngraw") == "mapbox"
    with pytest.raises(ImageError, match="--dem-encoding"):
        guess_encoding("https://example.com/dem/{z}/{x}/{y}.png")


def test_several_dem_files_cover_one_region(tmp_path, frame):
    """A region spanning two DEM tiles (west and east halves, in two CRSs): the pack's terrain
    is whole; a DEM file elsewhere is said and left out."""
    pytest.importorskip("rasterio")
    from skyfix.tiles.terrain import terrain_heights, write_dem
    west = write_dem(tmp_path / "west.tif", frame, (-300.0, -300.0, 0.0, 300.0), _heights, cell_m=4.0)
    east = write_dem(tmp_path / "east.tif", frame, (0.0, -300.0, 300.0, 300.0), _heights, cell_m=4.0, crs="EPSG:3857")
    far = write_dem(tmp_path / "far.tif", frame, (5000.0, 5000.0, 5400.0, 5400.0), _heights, cell_m=4.0)
    said = []
    t = terrain_heights([west, east, far], frame, BOX, log=said.append)
    rng = np.random.default_rng(1)
    e, n = rng.uniform(-270, 270, 300), rng.uniform(-270, 270, 300)
    assert t.height_m(e, n) == pytest.approx(_heights(e, n), abs=0.3)
    assert np.isfinite(t.heights_m[2:-2, 2:-2]).all()  # no seam between the two files
    assert any("far.tif" in s and "not used" in s for s in said)
    assert t.source == "west.tif + east.tif + far.tif"
    one = terrain_heights(west, frame, BOX)
    assert np.isnan(one.height_m(200.0, 0.0)) and math.isfinite(one.height_m(-200.0, 0.0))


def test_the_command_line_adds_server_terrain_and_states_accuracies(tmp_path, frame, textured_canvas, monkeypatch,
                                                                     capsys):
    """As a user types it: `tiles terrain PACK --dem-xyz URL ...` (the encoding read from the
    URL), then `tiles accuracy` and `tiles inspect` saying what the pack states."""
    pytest.importorskip("rasterio")
    from skyfix.cli import main
    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.build import tile_grid, write_pack
    from tests.helpers import unit_vectors
    assert textured_canvas.frame.lat0_deg == frame.lat0_deg and textured_canvas.frame.lon0_deg == frame.lon0_deg
    tiles, _ = tile_grid(textured_canvas, 100.0, 100.0)
    pack = write_pack(tmp_path / "pack", textured_canvas, tiles, unit_vectors(len(tiles), 16), model_id="x",
                      tile_px=64, stride_m=100.0)
    _terrain_tiles(tmp_path / "tiles" / "terrarium", frame, "terrarium")
    server = TileServer(tmp_path / "tiles")
    monkeypatch.setenv("SKYFIX_CACHE", str(tmp_path / "cache"))
    try:
        url = server.url.replace("{z}", "terrarium/{z}")
        assert main(["tiles", "terrain", str(pack), "--dem-xyz", url, "--dem-zoom", str(ZOOM),
                     "--dem-accuracy-m", "2"]) == 0
    finally:
        server.stop()
    t = TilePack.open(pack).terrain
    assert t.height_at(100.0, -50.0) == pytest.approx(float(_heights(100.0, -50.0)), abs=0.25)
    assert main(["tiles", "accuracy", str(pack), "--map-accuracy-m", "0.5"]) == 0
    capsys.readouterr()
    assert main(["tiles", "inspect", str(pack)]) == 0
    said = capsys.readouterr().out
    assert "map 0.5 m" in said and "vertical accuracy 2 m (stated)" in said and "terrarium tiles" in said
    assert main(["tiles", "terrain", str(pack)]) != 0  # neither --dem nor --dem-xyz: a message, not a trace
