"""A DEM (or DSM) into a pack: heights resampled onto the pack's local grid (pack/terrain.py).

The DEM is any raster GDAL reads (GeoTIFF, VRT, in any CRS), one band of heights in metres. It
is read by windows and resampled block by block like the orthophoto (tiles/ortho.warp_block),
so a national DEM costs only the part under the pack.
"""
from __future__ import annotations

import os
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
        # Filled so that bilinear resampling next to a hole stays finite; those cells are
        # marked not valid below (the valid mask is eroded by one cell).
        heights[~valid] = float(np.median(heights[valid])) if valid.any() else 0.0
        return heights, valid

    def close(self) -> None:
        self.ds.close()


def terrain_heights(dem_path: str | Path, frame: LocalFrame, bounds_en: tuple,
                    gsd_m: Optional[float] = None) -> Terrain:
    """Heights of the DEM over the local box bounds_en = (east_min, north_min, east_max,
    north_max) m, on a north-up grid of gsd_m (default: the DEM's own ground pixel, at least
    1 m). NaN where the DEM has no data (and next to it). ImageError when the DEM cannot be read,
    does not cover the box, or holds values that are not heights in metres."""
    path = Path(dem_path)
    if not path.is_file():
        raise ImageError(f"DEM not found: {path}")
    src = DemSource(path)
    try:
        native = _native_ground_gsd_m(src, frame)
        gsd = float(gsd_m or max(round(native, 2), 1.0))
        e0, n0, e1, n1 = bounds_en
        layout = CanvasLayout(frame, gsd, float(e0), float(n1), int(np.ceil((e1 - e0) / gsd)) + 1,
                              int(np.ceil((n1 - n0) / gsd)) + 1, native)
        heights = np.full((layout.height_px, layout.width_px), np.nan, np.float32)
        for br, bc in layout.blocks(TERRAIN_BLOCK_PX):
            r0, c0 = br * TERRAIN_BLOCK_PX, bc * TERRAIN_BLOCK_PX
            r1, c1 = min(r0 + TERRAIN_BLOCK_PX, layout.height_px), min(c0 + TERRAIN_BLOCK_PX, layout.width_px)
            z, valid = warp_block(src, layout, r0, r1, c0, c1)
            valid = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
            heights[r0:r1, c0:c1] = np.where(valid, z, np.nan)
    finally:
        src.close()
    good = heights[np.isfinite(heights)]
    if good.size == 0:
        raise ImageError(f"DEM {path.name} has no heights over the pack's map (another region, or all no-data)")
    lo, hi = float(good.min()), float(good.max())
    if lo < HEIGHT_RANGE_M[0] or hi > HEIGHT_RANGE_M[1]:
        raise ImageError(f"DEM {path.name}: heights {lo:.0f}..{hi:.0f} over the map are not ground heights in "
                         f"metres ({HEIGHT_RANGE_M[0]:.0f}..{HEIGHT_RANGE_M[1]:.0f}); is it a DEM, in metres?")
    return Terrain(heights, gsd, layout.east0_m, layout.north0_m, frame, float(np.median(good)), path.name)


def add_terrain(pack_dir: str | Path, dem_path: str | Path, gsd_m: Optional[float] = None, log=print) -> dict:
    """Resample a DEM over a pack's map and add (or replace) it as the pack's terrain. Everything
    is computed and written under temporary names first; the heights and then the manifest are
    renamed into place at the end. Returns the manifest entry."""
    from skyfix.pack.tilepack import TilePack, replace_manifest
    pack = TilePack.open(pack_dir)
    terrain = terrain_heights(dem_path, pack.frame, tuple(pack.manifest["region"]["bounds_en_m"]), gsd_m)
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
    log(f"terrain from {entry['source']}: {entry['width_px']} x {entry['height_px']} cells of {entry['gsd_m']:g} m, "
        f"heights {entry['min_m']:.0f}..{entry['max_m']:.0f} m (median {entry['median_m']:.0f})")
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
