"""A DEM (or DSM) into a pack: heights resampled onto the pack's local grid (pack/terrain.py).

The heights come from one or several rasters GDAL reads (GeoTIFF, VRT, in any CRS; one band of
heights in metres; a region spanning several DEM tiles gives them all, the first one that has a
height for a cell wins), or from a terrain tile server (an XYZ template of PNG tiles whose RGB
encodes the height: Terrarium or Mapbox terrain-RGB), fetched, cached, resumed and rate-limited
by the same code as imagery (tiles/servers.py). Either is read by windows and resampled block by
block like the orthophoto (tiles/ortho.warp_block), so a national DEM costs only the part under
the pack. Encoded tiles are decoded to metres before resampling (interpolating the colours would
mix the bytes of a height).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from skyfix.artifacts import file_digest
from skyfix.errors import ImageError, require
from skyfix.geo import LocalFrame
from skyfix.pack.terrain import TERRAIN_FILE, Terrain
from skyfix.tiles.ortho import CanvasLayout, SourceRaster, _native_ground_gsd_m, open_raster, warp_block

HEIGHT_RANGE_M = (-500.0, 9000.0)  # any ground on Earth, in metres: outside it, not a DEM in metres
TERRAIN_BLOCK_PX = 1024
# Height (m) from the 8-bit R, G, B of a terrain tile, per encoding (the encodings' own definitions:
# Mapzen/AWS Terrarium, Mapbox Terrain-RGB v1).
ENCODINGS = {
    "terrarium": lambda r, g, b: r * 256.0 + g + b / 256.0 - 32768.0,
    "mapbox": lambda r, g, b: -10000.0 + (r * 65536.0 + g * 256.0 + b) * 0.1,
}
# The vertical accuracy (m, 1 sigma, relative over a camera footprint) recorded when the user
# states none: a raster DEM given by hand is usually a national lidar or photogrammetric model
# (decimetres to a metre); the global terrain tile sets mix SRTM-class sources (metres).
ASSUMED_VERTICAL_ACCURACY_M = {"raster": 1.0, "server": 3.0}
TERRAIN_ZOOM = 14  # terrain tiles: about 7 m cells at mid latitudes; most servers stop at 14-15


def _filled(heights: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """heights with the invalid cells set to the median of the valid ones, so that bilinear
    resampling next to a hole stays finite (those cells are marked not valid by the caller,
    whose valid mask is eroded by one cell)."""
    heights[~valid] = float(np.median(heights[valid])) if valid.any() else 0.0
    return heights


class DemSource(SourceRaster):
    """One band of heights (m) read by windows; valid where GDAL's mask says so and finite."""

    pixel_shape = ()
    dtype = np.float32

    def __init__(self, path: Path):
        self.ds = open_raster(path, "DEM", f"DEM {path} has no CRS: skyfix cannot place its heights")
        super().__init__(self.ds.height, self.ds.width, tuple(self.ds.transform)[:6], self.ds.crs, path.name)

    def _read(self, r0, r1, c0, c1):
        from rasterio.windows import Window
        window = Window(c0, r0, c1 - c0, r1 - r0)
        try:
            z = self.ds.read(1, window=window, masked=True)
        except Exception as exc:  # rasterio raises several types for corrupt blocks
            raise ImageError(f"cannot read DEM {self.name} rows {r0}:{r1} cols {c0}:{c1}: {exc}") from exc
        heights = np.asarray(z.filled(np.nan), np.float32)
        valid = np.isfinite(heights) & ~np.ma.getmaskarray(z)
        return _filled(heights, valid), valid

    def close(self) -> None:
        self.ds.close()


class EncodedDemSource(SourceRaster):
    """Heights (m) decoded from an RGB raster of a terrain tile server (`encoding`: a key of
    ENCODINGS); valid where the tile server had a tile (missing tiles are no-data, never 0 m)."""

    pixel_shape = ()
    dtype = np.float32

    def __init__(self, image: SourceRaster, encoding: str):
        if encoding not in ENCODINGS:
            raise ImageError(f"unknown terrain encoding {encoding!r}; known: {', '.join(ENCODINGS)}")
        super().__init__(image.height_px, image.width_px, image.affine, image.crs, image.name)
        self.image, self.decode = image, ENCODINGS[encoding]

    def _read(self, r0, r1, c0, c1):
        rgb, valid = self.image.read(r0, r1, c0, c1)
        r, g, b = (rgb[..., k].astype(np.float64) for k in range(3))
        return _filled(self.decode(r, g, b).astype(np.float32), valid), valid

    def close(self) -> None:
        self.image.close()


def guess_encoding(template: str) -> str:
    """The terrain encoding a tile server's URL names ('terrarium' or 'mapbox'); ImageError
    asking for --dem-encoding when it names neither (a wrong guess gives wrong heights)."""
    url = template.lower()
    if "terrarium" in url:
        return "terrarium"
    if "terrain-rgb" in url or "mapbox" in url:
        return "mapbox"
    raise ImageError(f"cannot tell the terrain encoding of {template}: give --dem-encoding "
                     f"({' or '.join(ENCODINGS)})")


@dataclass(frozen=True)
class DemInput:
    """Where a pack's heights come from: raster files (`paths`), or a terrain tile server (`xyz`
    template, `zoom`, `encoding`: '' to tell it from the URL), and the heights' stated vertical
    accuracy (m, 1 sigma; None: ASSUMED_VERTICAL_ACCURACY_M, said in the pack)."""

    paths: tuple = ()
    xyz: str = ""
    zoom: int = TERRAIN_ZOOM
    encoding: str = ""
    key_file: Optional[str] = None
    accuracy_m: Optional[float] = None

    @classmethod
    def of(cls, dem) -> "DemInput":
        """A DemInput from a DemInput, one path or a list of paths."""
        if isinstance(dem, DemInput):
            return dem
        paths = [dem] if isinstance(dem, (str, Path)) else list(dem or [])
        return cls(paths=tuple(str(p) for p in paths))

    @classmethod
    def from_config(cls, tc, key_file: Optional[str] = None) -> Optional["DemInput"]:
        """The tiles config's terrain (tiles.dem, tiles.dem_xyz, ...), or None without one."""
        if not tc.dem and not tc.dem_xyz:
            return None
        if tc.dem and tc.dem_xyz:
            raise ImageError("give the terrain as DEM files (--dem) or a terrain tile server (--dem-xyz), not both")
        return cls(tuple(tc.dem), tc.dem_xyz, tc.dem_zoom, tc.dem_encoding, key_file, tc.dem_accuracy_m)

    @property
    def kind(self) -> str:
        return "server" if self.xyz else "raster"

    def vertical_accuracy(self) -> tuple:
        """(vertical accuracy m, whether the user stated it)."""
        if self.accuracy_m is not None:
            return float(self.accuracy_m), True
        return ASSUMED_VERTICAL_ACCURACY_M[self.kind], False

    def open(self, frame: LocalFrame, bounds_en: tuple, cache_root: Optional[Path] = None) -> list:
        """The height sources (SourceRaster of metres) over the local box bounds_en; ImageError
        when one cannot be read."""
        if not self.xyz:
            if not self.paths:
                raise ImageError("no DEM given")
            missing = [p for p in self.paths if not Path(p).is_file()]
            if missing:
                raise ImageError(f"DEM not found: {', '.join(missing)}")
            return [DemSource(Path(p)) for p in self.paths]
        from skyfix.tiles.servers import ServerSource, describe_server
        if cache_root is None:
            from skyfix.edge.models import cache_dir
            cache_root = cache_dir() / "terrain"
        lat, lon, _ = frame.to_lla(np.array([bounds_en[0], bounds_en[2]]), np.array([bounds_en[1], bounds_en[3]]))
        bbox = f"{lon[0]:.9f},{lat[0]:.9f},{lon[1]:.9f},{lat[1]:.9f}"
        service = describe_server("xyz", self.xyz, bbox, self.zoom, Path(cache_root), self.key_file)
        return [EncodedDemSource(ServerSource(service), self.encoding or guess_encoding(self.xyz))]

    def label(self) -> str:
        """What the pack records as the terrain's source (no key: the template is kept as given)."""
        if self.xyz:
            return f"{self.encoding or guess_encoding(self.xyz)} tiles {self.xyz.split('?')[0]} z{self.zoom}"
        return " + ".join(Path(p).name for p in self.paths)


def _resample(src: SourceRaster, layout: CanvasLayout) -> np.ndarray:
    """The source's heights on the layout's grid, NaN where it has none (and next to a hole)."""
    heights = np.full((layout.height_px, layout.width_px), np.nan, np.float32)
    for br, bc in layout.blocks(TERRAIN_BLOCK_PX):
        r0, c0 = br * TERRAIN_BLOCK_PX, bc * TERRAIN_BLOCK_PX
        r1, c1 = min(r0 + TERRAIN_BLOCK_PX, layout.height_px), min(c0 + TERRAIN_BLOCK_PX, layout.width_px)
        z, valid = warp_block(src, layout, r0, r1, c0, c1)
        valid = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
        heights[r0:r1, c0:c1] = np.where(valid, z, np.nan)
    return heights


def terrain_heights(dem, frame: LocalFrame, bounds_en: tuple, gsd_m: Optional[float] = None,
                    cache_root: Optional[Path] = None, log=print) -> Terrain:
    """Heights of the DEM(s) over the local box bounds_en = (east_min, north_min, east_max,
    north_max) m, on a north-up grid of gsd_m (default: the finest DEM's own ground pixel, at
    least 1 m). `dem`: a path, a list of paths or a DemInput; where several have a height for a
    cell, the first one's is kept. NaN where none has data (and next to a hole). ImageError when
    a DEM cannot be read, none covers the box, or the values are not heights in metres."""
    dem = DemInput.of(dem)
    sources = dem.open(frame, bounds_en, cache_root)
    try:
        natives = [_native_ground_gsd_m(src, frame) for src in sources]
        gsd = float(gsd_m or max(round(min(natives), 2), 1.0))
        e0, n0, e1, n1 = bounds_en
        width, height = int(np.ceil((e1 - e0) / gsd)) + 1, int(np.ceil((n1 - n0) / gsd)) + 1
        heights = np.full((height, width), np.nan, np.float32)
        for src, native in zip(sources, natives):  # each low-passed for its own ground pixel
            layout = CanvasLayout(frame, gsd, float(e0), float(n1), width, height, native)
            z = _resample(src, layout)
            _check_heights(z, src.name, dem)
            if len(sources) > 1 and not np.isfinite(z).any():
                log(f"warning: DEM {src.name} has no heights over the pack's map: not used")
            heights = np.where(np.isfinite(heights), heights, z)
    finally:
        for src in sources:
            src.close()
    good = heights[np.isfinite(heights)]
    if good.size == 0:
        raise ImageError(f"DEM {dem.label()} has no heights over the pack's map (another region, or all no-data)")
    accuracy_m, stated = dem.vertical_accuracy()
    return Terrain(heights, gsd, layout.east0_m, layout.north0_m, frame, float(np.median(good)), dem.label(),
                   accuracy_m, stated)


def _check_heights(z: np.ndarray, name: str, dem: DemInput) -> None:
    """ImageError when the finite values of z are not ground heights in metres (HEIGHT_RANGE_M)."""
    good = z[np.isfinite(z)]
    if not good.size:
        return
    lo, hi = float(good.min()), float(good.max())
    if lo < HEIGHT_RANGE_M[0] or hi > HEIGHT_RANGE_M[1]:
        hint = (f"is the encoding {dem.encoding or guess_encoding(dem.xyz)} right (--dem-encoding), and are the "
                "tiles lossless PNG?") if dem.xyz else "is it a DEM, in metres?"
        raise ImageError(f"DEM {name}: heights {lo:.0f}..{hi:.0f} over the map are not ground heights in "
                         f"metres ({HEIGHT_RANGE_M[0]:.0f}..{HEIGHT_RANGE_M[1]:.0f}); {hint}")


def add_terrain(pack_dir: str | Path, dem, gsd_m: Optional[float] = None, log=print,
                cache_root: Optional[Path] = None) -> dict:
    """Resample the DEM(s) `dem` (a path, paths or a DemInput) over a pack's map and add (or
    replace) them as the pack's terrain. Everything is computed and written under temporary
    names first; the heights and then the manifest are renamed into place at the end. Returns
    the manifest entry."""
    from skyfix.pack.tilepack import TilePack, replace_manifest
    pack = TilePack.open(pack_dir)
    terrain = terrain_heights(dem, pack.frame, tuple(pack.manifest["region"]["bounds_en_m"]), gsd_m, cache_root, log)
    entry = terrain.manifest_entry()
    tmp = pack.path / ".terrain.npy.tmp"
    with open(tmp, "wb") as f:
        np.save(f, terrain.heights_m)
    os.replace(tmp, pack.path / TERRAIN_FILE)
    manifest = dict(pack.manifest)
    manifest["terrain"] = entry
    manifest["files"] = {**manifest["files"], TERRAIN_FILE: file_digest(pack.path / TERRAIN_FILE)}
    replace_manifest(pack.path, manifest)
    if entry["valid_frac"] < 0.999:
        log(f"warning: the DEM covers {100 * entry['valid_frac']:.1f} % of the map; where it does not, skyfix "
            "assumes flat ground")
    said = "stated" if entry["vertical_accuracy_stated"] else "assumed: state it with --dem-accuracy-m"
    log(f"terrain from {entry['source']}: {entry['width_px']} x {entry['height_px']} cells of {entry['gsd_m']:g} m, "
        f"heights {entry['min_m']:.0f}..{entry['max_m']:.0f} m (median {entry['median_m']:.0f}), vertical accuracy "
        f"{entry['vertical_accuracy_m']:g} m ({said})")
    return entry


def write_dem(path: str | Path, frame: LocalFrame, bounds_en: tuple, heights_fn, cell_m: float = 5.0,
              crs: str = "EPSG:4326") -> Path:
    """Write heights_fn(east_m, north_m) -> m over the local box bounds_en (plus one cell) as a
    one-band float32 GeoTIFF DEM in `crs` (EPSG:4326 or EPSG:3857), cells of about cell_m: the
    simulator's synthetic relief as the DEM a user would give. Returns the path."""
    rasterio = require("rasterio")
    from rasterio.transform import from_bounds
    from skyfix.tiles.ortho import _transform
    e0, n0, e1, n1 = (bounds_en[0] - cell_m, bounds_en[1] - cell_m, bounds_en[2] + cell_m, bounds_en[3] + cell_m)
    lat, lon, _ = frame.to_lla(np.array([e0, e1]), np.array([n0, n1]))
    x, y = _transform(crs, "to", lon, lat)
    width, height = int(np.ceil((e1 - e0) / cell_m)), int(np.ceil((n1 - n0) / cell_m))
    transform = from_bounds(x[0], y[0], x[1], y[1], width, height)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    cx = transform.a * cols + transform.b * rows + transform.c
    cy = transform.d * cols + transform.e * rows + transform.f
    lon_c, lat_c = _transform(crs, "from", cx, cy)
    east, north, _ = frame.to_enu(lat_c, lon_c)
    z = np.asarray(heights_fn(east, north), np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="float32", crs=crs,
                       transform=transform, nodata=-9999.0) as ds:
        ds.write(z, 1)
    return Path(path)
