"""Geodesy for skyfix: WGS84 <-> ECEF <-> local ENU, haversine, Web Mercator, raster affines.

Conventions: angles in degrees where the name says `_deg`, metres in `_m`; arrays broadcast.
A `LocalFrame` is a local tangent plane (east, north, up) at an origin; skyfix works in it for
everything metric (tile grid, search windows, filter) because regions are a few km across.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WGS84_A_M = 6378137.0
WGS84_F = 1.0 / 298.257223563
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)
EARTH_MEAN_RADIUS_M = 6371008.8
MERCATOR_HALF_WORLD_M = np.pi * WGS84_A_M  # 20037508.34 m


def lla_to_ecef(lat_deg, lon_deg, alt_m=0.0):
    """WGS84 geodetic -> ECEF metres. Returns (x_m, y_m, z_m) arrays."""
    lat, lon = np.radians(lat_deg), np.radians(lon_deg)
    n = WGS84_A_M / np.sqrt(1.0 - WGS84_E2 * np.sin(lat) ** 2)
    x = (n + alt_m) * np.cos(lat) * np.cos(lon)
    y = (n + alt_m) * np.cos(lat) * np.sin(lon)
    z = (n * (1.0 - WGS84_E2) + alt_m) * np.sin(lat)
    return x, y, z


def ecef_to_lla(x_m, y_m, z_m):
    """ECEF metres -> WGS84 (lat_deg, lon_deg, alt_m); a few fixed-point iterations, < 1 mm."""
    x_m, y_m, z_m = np.asarray(x_m, float), np.asarray(y_m, float), np.asarray(z_m, float)
    lon = np.arctan2(y_m, x_m)
    p = np.hypot(x_m, y_m)
    lat = np.arctan2(z_m, p * (1.0 - WGS84_E2))
    for _ in range(6):
        n = WGS84_A_M / np.sqrt(1.0 - WGS84_E2 * np.sin(lat) ** 2)
        alt = p / np.cos(lat) - n
        lat = np.arctan2(z_m, p * (1.0 - WGS84_E2 * n / (n + alt)))
    n = WGS84_A_M / np.sqrt(1.0 - WGS84_E2 * np.sin(lat) ** 2)
    alt = p / np.cos(lat) - n
    return np.degrees(lat), np.degrees(lon), alt


@dataclass(frozen=True)
class LocalFrame:
    """A local east-north-up tangent plane at (lat0_deg, lon0_deg, alt0_m)."""

    lat0_deg: float
    lon0_deg: float
    alt0_m: float = 0.0

    def _rotation(self) -> np.ndarray:
        lat, lon = np.radians(self.lat0_deg), np.radians(self.lon0_deg)
        sl, cl, so, co = np.sin(lat), np.cos(lat), np.sin(lon), np.cos(lon)
        # Rows: east, north, up unit vectors expressed in ECEF.
        return np.array([[-so, co, 0.0], [-sl * co, -sl * so, cl], [cl * co, cl * so, sl]])

    def to_enu(self, lat_deg, lon_deg, alt_m=0.0):
        """WGS84 -> local (east_m, north_m, up_m)."""
        x, y, z = lla_to_ecef(lat_deg, lon_deg, alt_m)
        x0, y0, z0 = lla_to_ecef(self.lat0_deg, self.lon0_deg, self.alt0_m)
        d = np.stack(np.broadcast_arrays(x - x0, y - y0, z - z0))
        e, n, u = np.tensordot(self._rotation(), d, axes=1)
        return e, n, u

    def to_lla(self, east_m, north_m, up_m=0.0):
        """Local (east_m, north_m, up_m) -> WGS84 (lat_deg, lon_deg, alt_m)."""
        enu = np.stack(np.broadcast_arrays(np.asarray(east_m, float), np.asarray(north_m, float),
                                           np.asarray(up_m, float)))
        d = np.tensordot(self._rotation().T, enu, axes=1)
        x0, y0, z0 = lla_to_ecef(self.lat0_deg, self.lon0_deg, self.alt0_m)
        return ecef_to_lla(d[0] + x0, d[1] + y0, d[2] + z0)


def haversine_m(lat1_deg, lon1_deg, lat2_deg, lon2_deg):
    """Great-circle distance in metres on the mean Earth sphere (good to ~0.3 %)."""
    p1, p2 = np.radians(lat1_deg), np.radians(lat2_deg)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2_deg) - np.asarray(lon1_deg))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2.0 * EARTH_MEAN_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def lonlat_to_mercator(lon_deg, lat_deg):
    """WGS84 -> EPSG:3857 (x_m, y_m)."""
    x = WGS84_A_M * np.radians(lon_deg)
    y = WGS84_A_M * np.log(np.tan(np.pi / 4 + np.radians(lat_deg) / 2))
    return x, y


def mercator_to_lonlat(x_m, y_m):
    """EPSG:3857 (x_m, y_m) -> WGS84 (lon_deg, lat_deg)."""
    lon = np.degrees(np.asarray(x_m, float) / WGS84_A_M)
    lat = np.degrees(2 * np.arctan(np.exp(np.asarray(y_m, float) / WGS84_A_M)) - np.pi / 2)
    return lon, lat


def xyz_tile_bounds_mercator(z: int, x: int, y: int):
    """Bounds (x_min_m, y_min_m, x_max_m, y_max_m) of slippy-map tile z/x/y in EPSG:3857."""
    size_m = 2 * MERCATOR_HALF_WORLD_M / (1 << z)
    x_min = -MERCATOR_HALF_WORLD_M + x * size_m
    y_max = MERCATOR_HALF_WORLD_M - y * size_m
    return x_min, y_max - size_m, x_min + size_m, y_max


def pixel_to_xy(affine, col, row):
    """Raster affine (a, b, c, d, e, f as GDAL/rasterio) : pixel (col, row) -> CRS (x, y).

    Pixel (0, 0) is the top-left corner of the top-left pixel; add 0.5 for pixel centres.
    """
    a, b, c, d, e, f = affine[:6]
    col, row = np.asarray(col, float), np.asarray(row, float)
    return a * col + b * row + c, d * col + e * row + f


def xy_to_pixel(affine, x, y):
    """Inverse of `pixel_to_xy`: CRS (x, y) -> pixel (col, row), fractional."""
    a, b, c, d, e, f = affine[:6]
    det = a * e - b * d
    x, y = np.asarray(x, float) - c, np.asarray(y, float) - f
    return (e * x - b * y) / det, (-d * x + a * y) / det
