import numpy as np
import pytest

from skyfix import geo
from skyfix.geo import LocalFrame
from tests.conftest import COLORADO_TIF, need_shared


def test_lla_ecef_round_trip():
    lat, lon, alt = np.array([38.98, -33.9, 89.0]), np.array([-107.88, 151.2, 0.0]), np.array([2500.0, 10.0, -30.0])
    back = geo.ecef_to_lla(*geo.lla_to_ecef(lat, lon, alt))
    np.testing.assert_allclose(back[0], lat, atol=1e-9)
    np.testing.assert_allclose(back[1], lon, atol=1e-9)
    np.testing.assert_allclose(back[2], alt, atol=1e-4)


def test_local_frame_round_trip_and_scale():
    frame = LocalFrame(38.985, -107.884, 2400.0)
    e, n = np.array([0.0, 500.0, -1200.0, 3000.0]), np.array([0.0, -800.0, 250.0, 3000.0])
    lat, lon, alt = frame.to_lla(e, n, 0.0)
    e2, n2, u2 = frame.to_enu(lat, lon, alt)
    np.testing.assert_allclose(e2, e, atol=1e-6)
    np.testing.assert_allclose(n2, n, atol=1e-6)
    # A local distance matches the great-circle distance to within the sphere's error (~0.5 %).
    d = geo.haversine_m(lat[0], lon[0], lat[1], lon[1])
    assert d == pytest.approx(np.hypot(500, 800), rel=5e-3)


def test_haversine_known_distance():
    # One degree of latitude is about 111.2 km on the mean sphere.
    assert geo.haversine_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(111195, rel=1e-4)


def test_mercator_round_trip_and_tiles():
    lon, lat = np.array([-107.891235, 12.5]), np.array([38.990370, -45.0])
    back = geo.mercator_to_lonlat(*geo.lonlat_to_mercator(lon, lat))
    np.testing.assert_allclose(back, [lon, lat], atol=1e-10)
    x0, y0, x1, y1 = geo.xyz_tile_bounds_mercator(0, 0, 0)
    assert (x0, y1) == pytest.approx((-geo.MERCATOR_HALF_WORLD_M, geo.MERCATOR_HALF_WORLD_M))
    assert x1 - x0 == pytest.approx(2 * geo.MERCATOR_HALF_WORLD_M)


def test_affine_pixel_round_trip():
    affine = (0.5, 0.1, 1000.0, -0.05, -0.5, 2000.0)
    x, y = geo.pixel_to_xy(affine, np.array([0, 10.5, 300]), np.array([0, 7.25, 99]))
    col, row = geo.xy_to_pixel(affine, x, y)
    np.testing.assert_allclose([col, row], [[0, 10.5, 300], [0, 7.25, 99]], atol=1e-9)


def test_colorado_geotiff_corners_match_known_coordinates():
    """Pixel <-> ground on the real GeoTIFF against the corners stated in the data README."""
    pytest.importorskip("rasterio")
    from skyfix.tiles.ortho import read_geotiff
    src = read_geotiff(need_shared(COLORADO_TIF))
    h, w = src.height_px, src.width_px
    x, y = geo.pixel_to_xy(src.affine, np.array([0, w]), np.array([0, h]))
    lon, lat = src.lonlat_from_crs(x, y)
    np.testing.assert_allclose(lat, [38.990370, 38.979695], atol=2e-6)   # ~0.2 m
    np.testing.assert_allclose(lon, [-107.891235, -107.877502], atol=2e-6)
    col, row = geo.xy_to_pixel(src.affine, *src.crs_from_lonlat(lon, lat))
    np.testing.assert_allclose([col, row], [[0, w], [0, h]], atol=1e-6)
