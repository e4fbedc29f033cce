"""Read an orthophoto (GeoTIFF in any CRS, an XYZ tile folder, or a plain image with a GSD)
and resample it north-up onto a local ENU `MapCanvas`."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from skyfix import geo
from skyfix.errors import ImageError, require
from skyfix.geo import LocalFrame
from skyfix.tiles.canvas import MapCanvas


@dataclass
class SourceRaster:
    """An image with its pixel -> CRS affine. crs None: a non-georeferenced image in local metres."""

    image_rgb: np.ndarray
    valid: np.ndarray
    affine: tuple           # GDAL order (a, b, c, d, e, f)
    crs: Optional[object]   # rasterio CRS, "EPSG:3857", or None for local metres
    name: str

    def crs_from_lonlat(self, lon_deg, lat_deg):
        return _transform(self.crs, "to", lon_deg, lat_deg)

    def lonlat_from_crs(self, x, y):
        return _transform(self.crs, "from", x, y)


def _epsg(crs) -> Optional[int]:
    if isinstance(crs, str):
        return int(crs.split(":")[1])
    return crs.to_epsg() if crs is not None else None


def _transform(crs, direction: str, a, b):
    """lon/lat <-> CRS coordinates; closed forms for EPSG:4326/3857, rasterio for the rest."""
    epsg = _epsg(crs)
    if epsg == 4326:
        return np.asarray(a, float), np.asarray(b, float)
    if epsg == 3857:
        return geo.lonlat_to_mercator(a, b) if direction == "to" else geo.mercator_to_lonlat(a, b)
    warp = require("rasterio.warp")
    src, dst = ("EPSG:4326", crs) if direction == "to" else (crs, "EPSG:4326")
    shape = np.shape(a)
    x, y = warp.transform(src, dst, np.ravel(a).tolist(), np.ravel(b).tolist())
    return np.reshape(x, shape), np.reshape(y, shape)


def _to_rgb(bands: np.ndarray) -> np.ndarray:
    """bands C x H x W (1, 3 or 4 channels) -> H x W x 3 uint8."""
    if bands.dtype != np.uint8:
        lo, hi = np.percentile(bands[:3], (1, 99))
        bands = np.clip((bands.astype(np.float32) - lo) / max(hi - lo, 1e-6) * 255, 0, 255)
        bands = bands.astype(np.uint8)
    if bands.shape[0] == 1:
        bands = np.repeat(bands, 3, axis=0)
    return np.ascontiguousarray(np.transpose(bands[:3], (1, 2, 0)))


def read_geotiff(path: Path) -> SourceRaster:
    rasterio = require("rasterio")
    try:
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise ImageError(f"{path} has no CRS; pass --gsd-m to use it as a local image")
            bands = ds.read()
            valid = ds.dataset_mask() > 0
            return SourceRaster(_to_rgb(bands), valid, tuple(ds.transform)[:6], ds.crs, path.name)
    except rasterio.errors.RasterioIOError as exc:
        raise ImageError(f"cannot read GeoTIFF {path}: {exc}") from exc


def read_xyz_folder(path: Path, zoom: Optional[int] = None) -> SourceRaster:
    """Stitch a slippy-map folder `{z}/{x}/{y}.png|jpg` (one zoom level) into a Web Mercator raster."""
    zooms = sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    if not zooms:
        raise ImageError(f"{path}: no {{z}}/{{x}}/{{y}} tile folders found")
    z = zoom if zoom is not None else zooms[-1]
    tiles = {}
    for f in (path / str(z)).glob("*/*"):
        m = re.fullmatch(r"(\d+)\.(png|jpe?g|webp)", f.name, re.I)
        if m and f.parent.name.isdigit():
            tiles[(int(f.parent.name), int(m.group(1)))] = f
    if not tiles:
        raise ImageError(f"{path}/{z}: no tile images")
    xs, ys = [k[0] for k in tiles], [k[1] for k in tiles]
    x0, y0 = min(xs), min(ys)
    first = imread_rgb(next(iter(tiles.values())))
    size = first.shape[0]
    w, h = (max(xs) - x0 + 1) * size, (max(ys) - y0 + 1) * size
    image = np.zeros((h, w, 3), np.uint8)
    valid = np.zeros((h, w), bool)
    for (x, y), f in tiles.items():
        r, c = (y - y0) * size, (x - x0) * size
        image[r:r + size, c:c + size] = imread_rgb(f)
        valid[r:r + size, c:c + size] = True
    xmin, _, xmax, ymax = geo.xyz_tile_bounds_mercator(z, x0, y0)
    px = (xmax - xmin) / size
    return SourceRaster(image, valid, (px, 0.0, xmin, 0.0, -px, ymax), "EPSG:3857", path.name)


def imread_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB H x W x 3, or raise ImageError."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"cannot decode image {path} (missing, corrupt or unsupported)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image_px(path: str | Path, px: int, centre_square: bool = False) -> np.ndarray:
    """An image file as uint8 RGB px x px x 3 (area-resampled; optionally its centre square first)."""
    img = imread_rgb(path)
    if centre_square:
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(img, (px, px), interpolation=cv2.INTER_AREA)


def read_local_image(path: Path, gsd_m: float) -> SourceRaster:
    """A plain image without georeferencing: pixel (0, 0) at local (0, 0), north up."""
    img = imread_rgb(path)
    h, w = img.shape[:2]
    # Local metres centred on the image: x east, y north.
    affine = (gsd_m, 0.0, -w * gsd_m / 2, 0.0, -gsd_m, h * gsd_m / 2)
    return SourceRaster(img, np.ones((h, w), bool), affine, None, path.name)


def read_source(path: str | Path, gsd_m: Optional[float] = None) -> SourceRaster:
    """Open an orthophoto: a folder is XYZ tiles, .tif/.tiff is a GeoTIFF; with `gsd_m`, any
    image (PNG, JPEG, TIFF) is read as a local, north-up, non-georeferenced map."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"orthophoto not found: {path}")
    if path.is_dir():
        return read_xyz_folder(path)
    if gsd_m is not None and path.suffix.lower() not in (".tif", ".tiff"):
        return read_local_image(path, gsd_m)
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_geotiff(path)
    raise ImageError(f"{path}: not a GeoTIFF or XYZ folder; for a plain image pass --gsd-m")


def _native_ground_gsd_m(src: SourceRaster, frame: Optional[LocalFrame]) -> float:
    h, w = src.valid.shape
    cols, rows = np.array([w / 2, w / 2 + 1]), np.array([h / 2, h / 2])
    x, y = geo.pixel_to_xy(src.affine, cols, rows)
    if src.crs is None:
        return float(np.hypot(x[1] - x[0], y[1] - y[0]))
    lon, lat = src.lonlat_from_crs(x, y)
    e, n, _ = frame.to_enu(lat, lon)
    return float(np.hypot(e[1] - e[0], n[1] - n[0]))


def to_canvas(src: SourceRaster, gsd_m: Optional[float] = None,
              frame: Optional[LocalFrame] = None) -> MapCanvas:
    """Resample a source raster north-up onto a local ENU grid at `gsd_m` (default: native).

    The ENU origin is `frame` when given (to share a pack's frame), else the raster centre
    (georeferenced) or (0, 0) for a local image.
    """
    h, w = src.valid.shape
    if frame is None and src.crs is not None:
        cx, cy = geo.pixel_to_xy(src.affine, w / 2, h / 2)
        lon0, lat0 = src.lonlat_from_crs(cx, cy)
        frame = LocalFrame(float(lat0), float(lon0))
    frame = frame or LocalFrame(0.0, 0.0)
    native = _native_ground_gsd_m(src, frame)
    gsd = float(gsd_m or round(native, 3))
    # Canvas extent: bounding box of the raster outline in local metres.
    t = np.linspace(0, 1, 64)
    cols = np.concatenate([t * w, np.full_like(t, w), t * w, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), t * h])
    e_out, n_out = _en_from_src_px(src, frame, cols, rows)
    east0, north0 = float(e_out.min()), float(n_out.max())
    out_w = int(np.ceil((e_out.max() - east0) / gsd))
    out_h = int(np.ceil((north0 - n_out.min()) / gsd))
    cc, rr = np.meshgrid(np.arange(out_w), np.arange(out_h))
    east, north = east0 + (cc + 0.5) * gsd, north0 - (rr + 0.5) * gsd
    scol, srow = _src_px_from_en(src, frame, east, north)
    map_x, map_y = (scol - 0.5).astype(np.float32), (srow - 0.5).astype(np.float32)
    image = src.image_rgb
    if gsd / native > 1.5:  # downsampling: low-pass first to avoid aliasing
        image = cv2.GaussianBlur(image, (0, 0), 0.5 * gsd / native)
    out = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    valid = cv2.remap(src.valid.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST, borderValue=0)
    return MapCanvas(out, valid > 0, gsd, frame, east0, north0)


def _en_from_src_px(src: SourceRaster, frame: LocalFrame, cols, rows):
    x, y = geo.pixel_to_xy(src.affine, cols, rows)
    if src.crs is None:
        return x, y
    lon, lat = src.lonlat_from_crs(x, y)
    e, n, _ = frame.to_enu(lat, lon)
    return e, n


def _src_px_from_en(src: SourceRaster, frame: LocalFrame, east, north):
    if src.crs is None:
        x, y = east, north
    else:
        lat, lon, _ = frame.to_lla(east, north)
        x, y = src.crs_from_lonlat(lon, lat)
    return geo.xy_to_pixel(src.affine, x, y)


def load_canvas(path: str | Path, gsd_m: Optional[float] = None, *,
                source_gsd_m: Optional[float] = None, frame: Optional[LocalFrame] = None) -> MapCanvas:
    """Read an orthophoto and return it as a MapCanvas (see `read_source`, `to_canvas`)."""
    return to_canvas(read_source(path, source_gsd_m), gsd_m, frame)
