"""MapCanvas: a region's imagery resampled north-up onto a local ENU grid at one GSD.

Everything metric in skyfix (tiles, simulated views, refinement) reads the map through it, so
the source CRS is dealt with once. Pixel (col, row) has its centre at
east = east0_m + (col + 0.5) * gsd_m, north = north0_m - (row + 0.5) * gsd_m.
This module needs only numpy and OpenCV (a pack opens without rasterio).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from skyfix.geo import LocalFrame


class MapGrid:
    """Pixel <-> local metres of a north-up grid; needs gsd_m, east0_m, north0_m, width_px, height_px."""

    @property
    def width_m(self) -> float:
        return self.width_px * self.gsd_m

    @property
    def height_m(self) -> float:
        return self.height_px * self.gsd_m

    def bounds_en(self):
        """(east_min_m, north_min_m, east_max_m, north_max_m) of the canvas."""
        return (self.east0_m, self.north0_m - self.height_m,
                self.east0_m + self.width_m, self.north0_m)

    def ground_from_px(self) -> np.ndarray:
        """3x3 matrix: homogeneous pixel (col, row, 1) -> ground (east_m, north_m, 1)."""
        g = self.gsd_m
        return np.array([[g, 0.0, self.east0_m + 0.5 * g],
                         [0.0, -g, self.north0_m - 0.5 * g],
                         [0.0, 0.0, 1.0]])

    def px_from_en(self, east_m, north_m):
        """Local metres -> fractional pixel (col, row) (integer = pixel centre)."""
        col = (np.asarray(east_m) - self.east0_m) / self.gsd_m - 0.5
        row = (self.north0_m - np.asarray(north_m)) / self.gsd_m - 0.5
        return col, row


@dataclass
class MapCanvas(MapGrid):
    image_rgb: np.ndarray  # H x W x 3 uint8
    valid: np.ndarray      # H x W bool: False where the source had no data
    gsd_m: float
    frame: LocalFrame
    east0_m: float         # east of the left edge
    north0_m: float        # north of the top edge

    @property
    def width_px(self) -> int:
        return self.image_rgb.shape[1]

    @property
    def height_px(self) -> int:
        return self.image_rgb.shape[0]

    def read_px(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows r0:r1, cols c0:c1 (inside the canvas) as (uint8 RGB, bool valid)."""
        return self.image_rgb[r0:r1, c0:c1], self.valid[r0:r1, c0:c1]

    def overview(self, max_px: int) -> tuple[np.ndarray, float]:
        """The map shrunk to at most max_px on its longer side: (uint8 RGB, overview px per map px)."""
        scale = min(1.0, max_px / max(self.width_px, self.height_px))
        if scale == 1.0:
            return self.image_rgb.copy(), scale
        return cv2.resize(self.image_rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), scale

    def render(self, east_m: float, north_m: float, size_m: float, out_px: int,
               rotation_deg: float = 0.0):
        """Render a square of `size_m` centred at (east_m, north_m) as `out_px` x `out_px` RGB.

        rotation_deg rotates the square clockwise (its top towards that heading); 0 is north-up.
        Returns (image uint8 out_px x out_px x 3, valid_frac in 0..1).
        """
        scale = size_m / out_px / self.gsd_m  # canvas px per output px
        c, r = self.px_from_en(east_m, north_m)
        th = np.radians(rotation_deg)
        # Output pixel offset (u, v) from the centre -> canvas pixel, rotated by the heading.
        a = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) * scale
        half = (out_px - 1) / 2.0
        t = np.array([c, r]) - a @ np.array([half, half])
        m = np.hstack([a, t[:, None]])
        src = self.image_rgb
        if scale > 1.5:  # downsampling: low-pass first so the tile does not alias
            src = cv2.GaussianBlur(src, (0, 0), 0.5 * scale)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        img = cv2.warpAffine(src, m, (out_px, out_px), flags=flags, borderValue=(0, 0, 0))
        val = cv2.warpAffine(self.valid.astype(np.uint8), m, (out_px, out_px),
                             flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)
        return img, float(val.mean())
