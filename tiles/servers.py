"""Maps from tile servers: an XYZ/TMS template, a WMS or a WMTS, over a box, read through GDAL's
own WMS and WMTS drivers (rasterio) with their disk cache.

skyfix writes a GDAL service description (an XML file GDAL opens like a GeoTIFF) whose data
window is the box, and the build reads it by windows like any raster. GDAL fetches the tiles
(at most `max_connections` at once, with retries), keeps them in its cache, and a build run
again reads them from there: an interrupted build resumes without fetching again. skyfix adds a
bounded rate (tiles per second) and turns GDAL's HTTP errors into messages that say what failed.

No provider and no key is written in the code: a template may hold `{key}`, filled from the
environment variable SKYFIX_TILE_KEY or a key file, and never written into the pack.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional
from xml.sax.saxutils import escape

import numpy as np

from skyfix import geo
from skyfix.errors import ImageError
from skyfix.tiles.ortho import RasterioSource

log = logging.getLogger("skyfix.tiles")
TILE_PX = 256
KEY_ENV = "SKYFIX_TILE_KEY"
# GDAL's HTTP settings for the fetches (config options read from the environment): retries with
# a delay, a timeout per request, and a user agent that names skyfix.
HTTP_OPTIONS = {"GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "2", "GDAL_HTTP_TIMEOUT": "30",
                "GDAL_HTTP_USERAGENT": "skyfix (GDAL WMS driver)"}


def parse_bbox(text: str) -> tuple:
    """'W,S,E,N' in degrees -> (west, south, east, north); ImageError when it is not a box."""
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise ImageError(f"--bbox must be W,S,E,N in degrees, got {text!r}") from exc
    if not (-180 <= w < e <= 180 and -85.05 <= s < n <= 85.05):
        raise ImageError(f"--bbox {text}: need west < east within -180..180 and south < north within -85..85")
    return w, s, e, n


def read_key(key_file: Optional[str] = None) -> Optional[str]:
    """The provider's key: the first line of key_file, else $SKYFIX_TILE_KEY, else None."""
    if key_file:
        try:
            return Path(key_file).read_text().strip().splitlines()[0]
        except (OSError, IndexError) as exc:
            raise ImageError(f"cannot read the key file {key_file}: {exc}") from exc
    return os.environ.get(KEY_ENV) or None


def _fill_key(template: str, key: Optional[str]) -> str:
    if "{key}" not in template:
        return template
    if not key:
        raise ImageError(f"the URL template has {{key}} but no key was given: set {KEY_ENV} or pass --key-file")
    return template.replace("{key}", key)


def tile_range(bbox: tuple, zoom: int) -> tuple:
    """(x0, y0, x1, y1) inclusive slippy-map tile indices at `zoom` covering the box (degrees)."""
    if not 0 <= zoom <= 23:
        raise ImageError(f"--zoom must be 0-23, got {zoom}")
    w, s, e, n = bbox
    n_tiles = 1 << zoom
    half = geo.MERCATOR_HALF_WORLD_M
    xs, ys = geo.lonlat_to_mercator(np.array([w, e]), np.array([n, s]))
    col = np.floor((xs + half) / (2 * half) * n_tiles).astype(int)
    row = np.floor((half - ys) / (2 * half) * n_tiles).astype(int)
    col, row = np.clip(col, 0, n_tiles - 1), np.clip(row, 0, n_tiles - 1)
    return int(col[0]), int(row[0]), int(col[1]), int(row[1])


def xyz_service_xml(url_template: str, bbox: tuple, zoom: int, cache_dir: Path, max_connections: int = 2) -> str:
    """A GDAL WMS service description of the XYZ tiles (TMS minidriver, Y from the top) covering
    the box at `zoom`: its data window is those tiles, so the raster GDAL opens is the box's
    tiles only. Missing tiles (HTTP 404) are no-data; other HTTP errors fail the read."""
    x0, y0, x1, y1 = tile_range(bbox, zoom)
    left, _, _, top = geo.xyz_tile_bounds_mercator(zoom, x0, y0)
    _, bottom, right, _ = geo.xyz_tile_bounds_mercator(zoom, x1, y1)
    url = url_template.replace("{z}", "${z}").replace("{x}", "${x}").replace("{y}", "${y}")
    return f"""<GDAL_WMS>
  <Service name="TMS"><ServerUrl>{escape(url)}</ServerUrl></Service>
  <DataWindow>
    <UpperLeftX>{float(left)!r}</UpperLeftX><UpperLeftY>{float(top)!r}</UpperLeftY>
    <LowerRightX>{float(right)!r}</LowerRightX><LowerRightY>{float(bottom)!r}</LowerRightY>
    <SizeX>{(x1 - x0 + 1) * TILE_PX}</SizeX><SizeY>{(y1 - y0 + 1) * TILE_PX}</SizeY>
    <TileLevel>{zoom}</TileLevel><TileX>{x0}</TileX><TileY>{y0}</TileY><YOrigin>top</YOrigin>
  </DataWindow>
  <Projection>EPSG:3857</Projection>
  <BlockSizeX>{TILE_PX}</BlockSizeX><BlockSizeY>{TILE_PX}</BlockSizeY>
  <BandsCount>4</BandsCount>
  <OverviewCount>0</OverviewCount>
  <MaxConnections>{int(max_connections)}</MaxConnections>
  <ZeroBlockHttpCodes>204,404</ZeroBlockHttpCodes>
  <Cache><Path>{escape(str(cache_dir))}</Path></Cache>
</GDAL_WMS>
"""


def wms_service_xml(url: str, layer: str, bbox: tuple, gsd_m: float, cache_dir: Path, image_format: str = "image/jpeg",
                    max_connections: int = 2) -> str:
    """A GDAL WMS service description of a WMS layer (GetMap, EPSG:3857) over the box, at about
    gsd_m metres per pixel on the ground, fetched in 512-pixel blocks."""
    w, s, e, n = bbox
    xs, ys = geo.lonlat_to_mercator(np.array([w, e]), np.array([s, n]))
    # Mercator metres per ground metre at the box's latitude: 1 / cos(lat).
    px_m = gsd_m / math.cos(math.radians((s + n) / 2))
    size_x, size_y = int(math.ceil((xs[1] - xs[0]) / px_m)), int(math.ceil((ys[1] - ys[0]) / px_m))
    return f"""<GDAL_WMS>
  <Service name="WMS"><Version>1.1.1</Version><ServerUrl>{escape(url)}</ServerUrl>
    <SRS>EPSG:3857</SRS><ImageFormat>{escape(image_format)}</ImageFormat><Layers>{escape(layer)}</Layers></Service>
  <DataWindow>
    <UpperLeftX>{float(xs[0])!r}</UpperLeftX><UpperLeftY>{float(ys[1])!r}</UpperLeftY>
    <LowerRightX>{float(xs[1])!r}</LowerRightX><LowerRightY>{float(ys[0])!r}</LowerRightY>
    <SizeX>{size_x}</SizeX><SizeY>{size_y}</SizeY>
  </DataWindow>
  <Projection>EPSG:3857</Projection>
  <BlockSizeX>512</BlockSizeX><BlockSizeY>512</BlockSizeY>
  <BandsCount>3</BandsCount>
  <OverviewCount>0</OverviewCount>
  <MaxConnections>{int(max_connections)}</MaxConnections>
  <Cache><Path>{escape(str(cache_dir))}</Path></Cache>
</GDAL_WMS>
"""


def wmts_service_xml(capabilities_url: str, layer: str, bbox: tuple, cache_dir: Path, matrix_set: str = "",
                     tile_matrix: str = "") -> str:
    """A GDAL WMTS service description of a layer of a WMTS (its GetCapabilities URL) over the
    box, in a Web Mercator tile matrix set (`matrix_set`, default the first GDAL finds), at its
    finest tile matrix or `tile_matrix`."""
    w, s, e, n = bbox
    xs, ys = geo.lonlat_to_mercator(np.array([w, e]), np.array([s, n]))
    optional = "".join(f"<{tag}>{escape(value)}</{tag}>" for tag, value in
                       (("TileMatrixSet", matrix_set), ("TileMatrix", tile_matrix)) if value)
    return f"""<GDAL_WMTS>
  <GetCapabilitiesUrl>{escape(capabilities_url)}</GetCapabilitiesUrl>
  <Layer>{escape(layer)}</Layer>{optional}
  <DataWindow>
    <UpperLeftX>{float(xs[0])!r}</UpperLeftX><UpperLeftY>{float(ys[1])!r}</UpperLeftY>
    <LowerRightX>{float(xs[1])!r}</LowerRightX><LowerRightY>{float(ys[0])!r}</LowerRightY>
  </DataWindow>
  <BandsCount>4</BandsCount>
  <ZeroBlockHttpCodes>204,404</ZeroBlockHttpCodes>
  <Cache><Path>{escape(str(cache_dir))}</Path></Cache>
</GDAL_WMTS>
"""


def service_file(xml: str, folder: Path) -> Path:
    """Write the service description into folder/service.xml, only when it changed (its time
    stamp is part of what a resumed build must share with the interrupted one)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "service.xml"
    if not path.is_file() or path.read_text() != xml:
        path.write_text(xml)
    return path


def server_folder(cache_root: Path, *parts) -> Path:
    """The cache folder of one service and box: named by a digest of what defines it (without
    the key), so a new box or zoom never reads another's tiles."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]
    return cache_root / digest


class ServerSource(RasterioSource):
    """A tile server opened through a GDAL service description: windows are read through GDAL
    (which fetches and caches the tiles); at most `tiles_per_s` tiles are fetched per second
    (tiles already in the cache cost nothing), and an HTTP failure becomes an ImageError that
    names the server and says the build resumes from the cache."""

    def __init__(self, path: Path, tiles_per_s: float = 8.0):
        for k, v in HTTP_OPTIONS.items():
            os.environ.setdefault(k, v)
        super().__init__(path)
        self.name, self.tiles_per_s = server_name(path), float(tiles_per_s)
        self.cache = path.parent / "cache"

    def _cached(self) -> int:
        return sum(len(files) for _, _, files in os.walk(self.cache)) if self.cache.is_dir() else 0

    def _read(self, r0, r1, c0, c1):
        before = self._cached()
        t0 = time.monotonic()
        try:
            out = super()._read(r0, r1, c0, c1)
        except ImageError as exc:
            raise ImageError(f"tile server {self.name}: {exc.args[0].split(': ', 1)[-1]} (tiles fetched so far are "
                             "cached: run the same command again to resume)") from exc
        fetched = self._cached() - before
        wait_s = fetched / self.tiles_per_s - (time.monotonic() - t0)
        if wait_s > 0:
            time.sleep(wait_s)
        return out


def describe_server(kind: str, template: str, bbox_text: str, zoom: Optional[int], cache_root: Path,
                    key_file: Optional[str] = None, layer: str = "", gsd_m: Optional[float] = None,
                    max_connections: int = 2) -> Path:
    """Write the GDAL service description of an XYZ template (kind 'xyz', needs zoom), a WMS
    (kind 'wms', needs layer and gsd_m) or a WMTS (kind 'wmts': its GetCapabilities URL, needs
    layer) over the box 'W,S,E,N', with its tile cache, under
    cache_root; returns its path, which `skyfix tiles build` reads like a GeoTIFF (read_source).
    The file holds the key where the template asks for one: it is written readable by its owner
    only."""
    bbox = parse_bbox(bbox_text)
    folder = server_folder(cache_root, kind, template, bbox, zoom, layer, gsd_m)
    url = _fill_key(template, read_key(key_file))
    if kind == "xyz":
        if zoom is None:
            raise ImageError("--xyz needs --zoom")
        for part in ("{z}", "{x}", "{y}"):
            if part not in template:
                raise ImageError(f"the XYZ template must hold {{z}}, {{x}} and {{y}}; {part} is missing: {template}")
        xml = xyz_service_xml(url, bbox, zoom, folder / "cache", max_connections)
    elif kind == "wms":
        if not layer or not gsd_m:
            raise ImageError("--wms needs --layer and --gsd-m")
        xml = wms_service_xml(url, layer, bbox, gsd_m, folder / "cache", max_connections=max_connections)
    elif kind == "wmts":
        if not layer:
            raise ImageError("--wmts needs --layer")
        xml = wmts_service_xml(url, layer, bbox, folder / "cache")
    else:
        raise ImageError(f"unknown tile service kind {kind!r}")
    path = service_file(xml, folder)
    path.chmod(0o600)
    return path


def server_name(service_xml: Path) -> str:
    """The server's URL without its query string (which may hold a key), from a description."""
    import re
    m = re.search(r"<(?:ServerUrl|GetCapabilitiesUrl)>(.*?)</(?:ServerUrl|GetCapabilitiesUrl)>", service_xml.read_text(),
                  re.S)
    return (m.group(1) if m else service_xml.name).split("?")[0].replace("${", "{")
