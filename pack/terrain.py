"""A pack's terrain: ground heights on a north-up grid of the pack's local frame.

Stored as `terrain.npy` (float32 rows x cols, NaN where the DEM had no data) with its grid in
the manifest's `terrain` entry; memory-mapped, so only the pages under the points asked for are
read, whatever the region's size. Heights are those of the DEM the pack was built with (metres
above its vertical datum, usually mean sea level); a DSM (surface with buildings and trees)
works the same way. Written by `skyfix tiles build --dem` / `skyfix tiles terrain`
(tiles/terrain.py). This module needs numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from skyfix.errors import PackError
from skyfix.geo import LocalFrame
from skyfix.pack.canvas import MapGrid
from skyfix.pack.schema import NUMBER, check_shape

TERRAIN_FILE = "terrain.npy"
TERRAIN_SHAPE = {"gsd_m": NUMBER, "east0_m": NUMBER, "north0_m": NUMBER, "width_px": int, "height_px": int,
                 "min_m": NUMBER, "max_m": NUMBER, "median_m": NUMBER, "source": str}


@dataclass
class Terrain(MapGrid):
    """Ground heights (m above the DEM's datum) on a north-up grid: cell (col, row) has its
    centre at east0_m + (col + 0.5) * gsd_m, north0_m - (row + 0.5) * gsd_m."""

    heights_m: np.ndarray  # rows x cols float32, NaN = no data (may be a memory map)
    gsd_m: float
    east0_m: float
    north0_m: float
    frame: LocalFrame
    median_m: float        # the median height of the valid cells: the guess where nothing is known
    source: str = ""
    # Heights' error (m, 1 sigma) relative over a camera footprint: its horizontal effect enters
    # the published accuracy (edge/navigator.py). Packs from before it was recorded: the raster default.
    vertical_accuracy_m: float = 1.0
    vertical_accuracy_stated: bool = False

    @property
    def width_px(self) -> int:
        return self.heights_m.shape[1]

    @property
    def height_px(self) -> int:
        return self.heights_m.shape[0]

    def height_m(self, east_m, north_m) -> np.ndarray:
        """Bilinear ground heights (m) at local points (arrays of any shape, or scalars; NaN
        outside the grid or next to a no-data cell)."""
        col, row = self.px_from_en(east_m, north_m)
        col, row = np.atleast_1d(np.asarray(col, float)), np.atleast_1d(np.asarray(row, float))
        inside = (col >= 0) & (row >= 0) & (col <= self.width_px - 1) & (row <= self.height_px - 1)
        c0 = np.clip(np.floor(col), 0, max(self.width_px - 2, 0)).astype(np.int64)
        r0 = np.clip(np.floor(row), 0, max(self.height_px - 2, 0)).astype(np.int64)
        c1, r1 = np.minimum(c0 + 1, self.width_px - 1), np.minimum(r0 + 1, self.height_px - 1)
        fc, fr = np.clip(col - c0, 0, 1), np.clip(row - r0, 0, 1)
        h = self.heights_m
        z = ((h[r0, c0] * (1 - fc) + h[r0, c1] * fc) * (1 - fr) + (h[r1, c0] * (1 - fc) + h[r1, c1] * fc) * fr)
        z = np.where(inside, z, np.nan).astype(np.float64)
        return z.reshape(np.shape(east_m)) if np.ndim(east_m) else z[0]

    def height_at(self, east_m: float, north_m: float) -> Optional[float]:
        """The ground height (m) at one point, or None where the terrain does not say."""
        z = float(self.height_m(east_m, north_m))
        return z if np.isfinite(z) else None

    def manifest_entry(self) -> dict:
        """The manifest's `terrain` entry for these heights."""
        valid = self.heights_m[np.isfinite(self.heights_m)]
        lo, hi = (float(valid.min()), float(valid.max())) if valid.size else (0.0, 0.0)
        return {"gsd_m": float(self.gsd_m), "east0_m": float(self.east0_m), "north0_m": float(self.north0_m),
                "width_px": int(self.width_px), "height_px": int(self.height_px), "min_m": lo, "max_m": hi,
                "median_m": float(self.median_m), "valid_frac": float(valid.size / max(self.heights_m.size, 1)),
                "source": self.source, "vertical_accuracy_m": float(self.vertical_accuracy_m),
                "vertical_accuracy_stated": bool(self.vertical_accuracy_stated)}


def open_terrain(pack_dir: Path, entry: dict, frame: LocalFrame) -> Terrain:
    """The terrain of a pack from its manifest entry (memory-mapped); PackError when the file
    does not match it."""
    check_shape(entry, TERRAIN_SHAPE, f"{pack_dir}/manifest.yaml terrain")
    try:
        heights = np.load(pack_dir / TERRAIN_FILE, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PackError(f"pack {pack_dir}: {TERRAIN_FILE} cannot be read ({exc}); add it again with "
                        "`skyfix tiles terrain PACK --dem DEM`") from exc
    if heights.dtype != np.float32 or heights.shape != (entry["height_px"], entry["width_px"]):
        raise PackError(f"pack {pack_dir}: {TERRAIN_FILE} is {heights.dtype} {heights.shape}, the manifest says "
                        f"float32 {entry['height_px']} x {entry['width_px']}")
    accuracy_m = entry.get("vertical_accuracy_m", Terrain.vertical_accuracy_m)
    if not isinstance(accuracy_m, (int, float)) or isinstance(accuracy_m, bool) or not 0 <= accuracy_m < 1000:
        raise PackError(f"{pack_dir}/manifest.yaml terrain: vertical_accuracy_m {accuracy_m!r} is not a height in metres")
    return Terrain(heights, float(entry["gsd_m"]), float(entry["east0_m"]), float(entry["north0_m"]), frame,
                   float(entry["median_m"]), str(entry["source"]), float(accuracy_m),
                   bool(entry.get("vertical_accuracy_stated", False)))
