"""Read an orthophoto (GeoTIFF in any CRS, a VRT or several GeoTIFFs as one mosaic, an XYZ tile
folder, or a plain image with a GSD) and resample it north-up onto a local ENU grid.

Sources are read by pixel windows (`SourceRaster.read`), and the local grid is produced block by
block (`warp_block`), so a region of any size is resampled in bounded memory; `to_canvas`
assembles the blocks into one in-memory `MapCanvas` for maps that fit.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np

from skyfix import geo
from skyfix.errors import ImageError, require
from skyfix.geo import LocalFrame
from skyfix.pack.canvas import MapCanvas, MapGrid

log = logging.getLogger("skyfix.tiles")
WARP_GRID_PX = 32  # the CRS transform is evaluated every this many output pixels, interpolated between


class SourceRaster:
    """An image with its pixel -> CRS affine, read by windows. crs None: a non-georeferenced
    image in local metres. Subclasses implement `_read(r0, r1, c0, c1)` inside the raster."""

    pixel_shape: tuple = (3,)  # an RGB image; a DEM is () float32
    dtype = np.uint8

    def __init__(self, height_px: int, width_px: int, affine: tuple, crs, name: str):
        self.height_px, self.width_px = int(height_px), int(width_px)
        self.affine = affine   # GDAL order (a, b, c, d, e, f)
        self.crs = crs         # rasterio CRS, "EPSG:3857", or None for local metres
        self.name = name
        self.nodata_value: Optional[int] = None  # --nodata: pixels whose three 8-bit bands all equal it

    def crs_from_lonlat(self, lon_deg, lat_deg):
        return _transform(self.crs, "to", lon_deg, lat_deg)

    def lonlat_from_crs(self, x, y):
        return _transform(self.crs, "from", x, y)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixels rows r0:r1, cols c0:c1 as (uint8 H x W x 3, bool valid H x W); the part
        outside the raster comes back black and not valid."""
        rgb = np.zeros((r1 - r0, c1 - c0) + self.pixel_shape, self.dtype)
        valid = np.zeros((r1 - r0, c1 - c0), bool)
        a0, a1 = max(r0, 0), min(r1, self.height_px)
        b0, b1 = max(c0, 0), min(c1, self.width_px)
        if a0 < a1 and b0 < b1:
            img, val = self._read(a0, a1, b0, b1)
            if self.nodata_value is not None and img.ndim == 3:
                val = val & ~np.all(img == self.nodata_value, axis=2)
            rgb[a0 - r0:a1 - r0, b0 - c0:b1 - c0] = img
            valid[a0 - r0:a1 - r0, b0 - c0:b1 - c0] = val
        return rgb, valid

    def _read(self, r0, r1, c0, c1):
        raise NotImplementedError

    def close(self) -> None:
        pass


class ArraySource(SourceRaster):
    """A source already decoded in memory (plain images, stitched XYZ tiles)."""

    def __init__(self, image_rgb: np.ndarray, valid: np.ndarray, affine: tuple, crs, name: str):
        super().__init__(*valid.shape, affine, crs, name)
        self.image_rgb, self.valid = image_rgb, valid

    def _read(self, r0, r1, c0, c1):
        return self.image_rgb[r0:r1, c0:c1], self.valid[r0:r1, c0:c1]


def open_raster(path: Path, what: str, without_crs: str):
    """A raster opened through GDAL (rasterio) that has a CRS; ImageError naming `what` when it
    cannot be read, `without_crs` when it has no CRS."""
    rasterio = require("rasterio")
    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise ImageError(f"cannot read {what} {path}: {exc}") from exc
    if ds.crs is None:
        ds.close()
        raise ImageError(without_crs)
    return ds


class RasterioSource(SourceRaster):
    """A GeoTIFF or GDAL VRT, kept open and read by windows (only the window is decoded)."""

    def __init__(self, path: Path):
        self.ds = open_raster(path, "GeoTIFF", f"{path} has no CRS; pass --source-gsd-m to use it as a local image")
        super().__init__(self.ds.height, self.ds.width, tuple(self.ds.transform)[:6], self.ds.crs, path.name)
        self.alpha_band = self._untagged_alpha()
        self.stretch = None
        if self.ds.dtypes[0] != "uint8":
            # One contrast stretch for the whole raster, from a decimated read, so that windows
            # read separately join without seams.
            step = max(1, max(self.height_px, self.width_px) // 1024)
            sample = self.ds.read(indexes=list(range(1, min(self.ds.count, 3) + 1)),
                                  out_shape=(min(self.ds.count, 3), max(1, self.height_px // step),
                                             max(1, self.width_px // step)))
            self.stretch = tuple(float(v) for v in np.percentile(sample, (1, 99)))

    def _untagged_alpha(self) -> Optional[int]:
        """The 1-based index of a fourth band that is not tagged as alpha but holds only 0 and
        255 with some 0 (an RGBA orthophoto whose writer lost the tag): read as alpha, said once.
        GDAL's own masks (alpha, nodata, mask bands) are honoured by dataset_mask already."""
        from rasterio.enums import ColorInterp
        if self.ds.count != 4 or self.ds.colorinterp[3] == ColorInterp.alpha or self.ds.dtypes[3] != "uint8":
            return None
        step = max(1, max(self.height_px, self.width_px) // 1024)
        sample = self.ds.read(4, out_shape=(max(1, self.height_px // step), max(1, self.width_px // step)))
        values = np.unique(sample)
        if not set(values.tolist()) <= {0, 255} or 0 not in values:
            return None
        log.warning("%s: band 4 is not tagged as alpha but holds only 0 and 255 (%.0f %% zero): read as "
                    "alpha, no-data where 0 (--nodata sets no-data by hand)", self.name, 100 * np.mean(sample == 0))
        return 4

    def _read(self, r0, r1, c0, c1):
        from rasterio.windows import Window
        window = Window(c0, r0, c1 - c0, r1 - r0)
        try:
            bands = self.ds.read(window=window)
            valid = self.ds.dataset_mask(window=window) > 0
        except Exception as exc:  # rasterio raises several types for corrupt blocks
            raise ImageError(f"cannot read {self.name} rows {r0}:{r1} cols {c0}:{c1}: {exc}") from exc
        if self.alpha_band is not None:
            valid &= bands[self.alpha_band - 1] > 0
        return _to_rgb(bands, self.stretch), valid

    def close(self) -> None:
        self.ds.close()


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


def _to_rgb(bands: np.ndarray, stretch: Optional[tuple] = None) -> np.ndarray:
    """bands C x H x W (1, 3 or 4 channels) -> H x W x 3 uint8; other dtypes are stretched
    linearly from stretch = (low, high) (default: this array's 1st and 99th percentiles)."""
    if bands.dtype != np.uint8:
        lo, hi = stretch or np.percentile(bands[:3], (1, 99))
        bands = np.clip((bands.astype(np.float32) - lo) / max(hi - lo, 1e-6) * 255, 0, 255)
        bands = bands.astype(np.uint8)
    if bands.shape[0] == 1:
        bands = np.repeat(bands, 3, axis=0)
    return np.ascontiguousarray(np.transpose(bands[:3], (1, 2, 0)))


def read_geotiff(path: Path) -> RasterioSource:
    """Open a GeoTIFF (a COG too), a GDAL .vrt or an MBTiles file (its highest zoom) for windowed
    reads; ImageError if it cannot be read."""
    return RasterioSource(Path(path))


def mosaic_vrt(paths: Sequence[Path], out: Path) -> Path:
    """Write a GDAL VRT that mosaics several GeoTIFFs of one CRS and band layout into one
    raster at the finest of their resolutions (later files drawn over earlier ones). Returns out."""
    rasterio = require("rasterio")
    metas = []
    for p in paths:
        try:
            with rasterio.open(p) as ds:
                if ds.crs is None:
                    raise ImageError(f"{p} has no CRS; a mosaic needs georeferenced GeoTIFFs")
                if ds.transform.b != 0 or ds.transform.d != 0:
                    raise ImageError(f"{p} is rotated; mosaic only north-up GeoTIFFs")
                metas.append((Path(p).resolve(), ds.crs, ds.count, ds.dtypes[0], ds.bounds,
                              ds.width, ds.height, ds.transform.a, -ds.transform.e, ds.block_shapes[0]))
        except rasterio.errors.RasterioIOError as exc:
            raise ImageError(f"cannot read GeoTIFF {p}: {exc}") from exc
    crs, count, dtype = metas[0][1], metas[0][2], metas[0][3]
    for m in metas[1:]:
        if m[1] != crs or m[2] != count or m[3] != dtype:
            raise ImageError(f"{m[0]}: CRS/bands/type {m[1]}/{m[2]}/{m[3]} differ from {metas[0][0]}'s "
                             f"{crs}/{count}/{dtype}; reproject them to one CRS first")
    res_x, res_y = min(m[7] for m in metas), min(m[8] for m in metas)
    left, right = min(m[4].left for m in metas), max(m[4].right for m in metas)
    bottom, top = min(m[4].bottom for m in metas), max(m[4].top for m in metas)
    width, height = int(np.ceil((right - left) / res_x)), int(np.ceil((top - bottom) / res_y))
    gdal_type = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}.get(dtype)
    if gdal_type is None:
        raise ImageError(f"{metas[0][0]}: pixel type {dtype} is not supported in a mosaic")
    def source(meta, band: str, data_type: str, use_mask: bool) -> str:
        """One input's rectangle in the mosaic, read from its `band` ('1', ... or 'mask,1')."""
        path, _, _, _, bnd, w, h, _, _, (by, bx) = meta
        x0, y0 = (bnd.left - left) / res_x, (top - bnd.top) / res_y
        return (f'<ComplexSource><SourceFilename relativeToVRT="0">{path}</SourceFilename>'
                f'<SourceBand>{band}</SourceBand><SourceProperties RasterXSize="{w}" RasterYSize="{h}" '
                f'DataType="{data_type}" BlockXSize="{bx}" BlockYSize="{by}"/>'
                f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                f'<DstRect xOff="{x0:.6f}" yOff="{y0:.6f}" xSize="{(bnd.right - bnd.left) / res_x:.6f}" '
                f'ySize="{(bnd.top - bnd.bottom) / res_y:.6f}"/>'
                f'{"<UseMaskBand>true</UseMaskBand>" if use_mask else ""}</ComplexSource>')

    bands = [f'<VRTRasterBand dataType="{gdal_type}" band="{b}">'
             f'{"".join(source(m, str(b), gdal_type, True) for m in metas)}</VRTRasterBand>'
             for b in range(1, count + 1)]
    # The mask: where any input has data (each input's own mask, alpha or nodata), so the gaps
    # between inputs read as no data rather than black ground.
    bands.append(f'<MaskBand><VRTRasterBand dataType="Byte">'
                 f'{"".join(source(m, "mask,1", "Byte", False) for m in metas)}</VRTRasterBand></MaskBand>')
    out.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
                   f'<SRS>{crs.to_wkt()}</SRS>'
                   f'<GeoTransform>{left!r}, {res_x!r}, 0.0, {top!r}, 0.0, {-res_y!r}</GeoTransform>'
                   f'{"".join(bands)}</VRTDataset>\n')
    return out


def read_xyz_folder(path: Path, zoom: Optional[int] = None) -> ArraySource:
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
    first = imread_rgb_valid(next(iter(tiles.values())))[0]
    size = first.shape[0]
    w, h = (max(xs) - x0 + 1) * size, (max(ys) - y0 + 1) * size
    image = np.zeros((h, w, 3), np.uint8)
    valid = np.zeros((h, w), bool)
    for (x, y), f in tiles.items():
        r, c = (y - y0) * size, (x - x0) * size
        image[r:r + size, c:c + size], valid[r:r + size, c:c + size] = imread_rgb_valid(f)
    xmin, _, xmax, ymax = geo.xyz_tile_bounds_mercator(z, x0, y0)
    px = (xmax - xmin) / size
    return ArraySource(image, valid, (px, 0.0, xmin, 0.0, -px, ymax), "EPSG:3857", path.name)


def imread_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB H x W x 3, or raise ImageError."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"cannot decode image {path} (missing, corrupt or unsupported)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def imread_rgb_valid(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB H x W x 3, bool valid H x W) of an image file: valid where its alpha channel
    (a transparent PNG, a tile server's empty tile) is not 0, everywhere without one."""
    if Path(path).suffix.lower() in (".jpg", ".jpeg"):  # no alpha possible: decode once, as imread_rgb does
        rgb = imread_rgb(path)
        return rgb, np.ones(rgb.shape[:2], bool)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"cannot decode image {path} (missing, corrupt or unsupported)")
    if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB), img[:, :, 3] > 0
    if img.dtype == np.uint8 and img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB), np.ones(img.shape, bool)
    if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), np.ones(img.shape[:2], bool)
    rgb = imread_rgb(path)  # other depths: OpenCV's own conversion to 8-bit colour
    return rgb, np.ones(rgb.shape[:2], bool)


def read_image_px(path: str | Path, px: int, centre_square: bool = False) -> np.ndarray:
    """An image file as uint8 RGB px x px x 3 (area-resampled; optionally its centre square first)."""
    img = imread_rgb(path)
    if centre_square:
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(img, (px, px), interpolation=cv2.INTER_AREA)


def read_local_image(path: Path, gsd_m: float) -> ArraySource:
    """A plain image without georeferencing: pixel (0, 0) at local (0, 0), north up."""
    img, valid = imread_rgb_valid(path)
    h, w = img.shape[:2]
    # Local metres centred on the image: x east, y north.
    affine = (gsd_m, 0.0, -w * gsd_m / 2, 0.0, -gsd_m, h * gsd_m / 2)
    return ArraySource(img, valid, affine, None, path.name)


# Read through GDAL (rasterio) by windows: GeoTIFF and cloud-optimised GeoTIFF, VRT, MBTiles.
GEOTIFF_SUFFIXES = (".tif", ".tiff", ".vrt", ".mbtiles")


def read_source(path, gsd_m: Optional[float] = None, mosaic_dir: Optional[Path] = None,
                nodata: Optional[int] = None, tiles_per_s: float = 8.0) -> SourceRaster:
    """Open an orthophoto: a folder is XYZ tiles, .tif/.tiff/.vrt is read by windows through
    rasterio; with `gsd_m`, any image (PNG, JPEG) is read as a local, north-up,
    non-georeferenced map. A list of several GeoTIFFs is one mosaic (a VRT written into
    `mosaic_dir`, default a new temporary folder). No-data: GDAL's masks, nodata values and
    alpha bands, a PNG's alpha, an untagged fourth band of only 0 and 255, and `nodata` (0-255:
    pixels whose three bands all equal it)."""
    src = _open_source(path, gsd_m, mosaic_dir)
    if hasattr(src, "tiles_per_s"):  # a tile server: its fetch rate
        src.tiles_per_s = float(tiles_per_s)
    if nodata is not None:
        if not 0 <= nodata <= 255:
            raise ImageError(f"--nodata must be 0-255 (the map's 8-bit value), got {nodata}")
        src.nodata_value = int(nodata)
    return src


def _open_source(path, gsd_m: Optional[float], mosaic_dir: Optional[Path]) -> SourceRaster:
    if isinstance(path, (list, tuple)):
        paths = [Path(p) for p in path]
        if len(paths) > 1:
            for p in paths:
                if not p.is_file() or p.suffix.lower() not in (".tif", ".tiff"):
                    raise ImageError(f"{p}: a mosaic is made of GeoTIFF files (.tif)")
            import tempfile
            folder = Path(mosaic_dir or tempfile.mkdtemp(prefix="skyfix-mosaic-"))
            return read_geotiff(mosaic_vrt(paths, folder / "mosaic.vrt"))
        path = paths[0]
    path = Path(path)
    if not path.exists():
        raise ImageError(f"orthophoto not found: {path}")
    if path.is_dir():
        return read_xyz_folder(path)
    if gsd_m is not None and path.suffix.lower() not in GEOTIFF_SUFFIXES:
        return read_local_image(path, gsd_m)
    if path.suffix.lower() in GEOTIFF_SUFFIXES:
        return read_geotiff(path)
    if path.suffix.lower() == ".xml":  # a tile server's GDAL description (tiles/servers.py)
        from skyfix.tiles.servers import ServerSource
        return ServerSource(path)
    raise ImageError(f"{path}: not a GeoTIFF, VRT, MBTiles, tile server description or XYZ folder; for a plain "
                     "image pass --source-gsd-m")


@dataclass
class CanvasLayout(MapGrid):
    """The local grid a source is resampled onto: pixel (col, row) has its centre at
    east = east0_m + (col + 0.5) * gsd_m, north = north0_m - (row + 0.5) * gsd_m."""

    frame: LocalFrame
    gsd_m: float
    east0_m: float
    north0_m: float
    width_px: int
    height_px: int
    native_gsd_m: float    # the source's ground pixel size at its centre

    def blocks(self, block_px: int) -> list[tuple[int, int]]:
        """(block_row, block_col) of every block_px square covering the grid, row-major."""
        return [(r, c) for r in range(-(-self.height_px // block_px)) for c in range(-(-self.width_px // block_px))]


def _native_ground_gsd_m(src: SourceRaster, frame: LocalFrame) -> float:
    cols = np.array([src.width_px / 2, src.width_px / 2 + 1])
    rows = np.array([src.height_px / 2, src.height_px / 2])
    e, n = _en_from_src_px(src, frame, cols, rows)
    return float(np.hypot(e[1] - e[0], n[1] - n[0]))


def canvas_layout(src: SourceRaster, gsd_m: Optional[float] = None,
                  frame: Optional[LocalFrame] = None) -> CanvasLayout:
    """The local ENU grid for `src` at `gsd_m` (default: native): its origin is `frame` when given
    (to share a pack's frame), else the raster centre (georeferenced) or (0, 0) for a local image;
    its extent is the bounding box of the raster outline."""
    h, w = src.height_px, src.width_px
    if frame is None and src.crs is not None:
        cx, cy = geo.pixel_to_xy(src.affine, w / 2, h / 2)
        lon0, lat0 = src.lonlat_from_crs(cx, cy)
        frame = LocalFrame(float(lat0), float(lon0))
    frame = frame or LocalFrame(0.0, 0.0)
    native = _native_ground_gsd_m(src, frame)
    gsd = float(gsd_m or round(native, 3))
    t = np.linspace(0, 1, 64)
    cols = np.concatenate([t * w, np.full_like(t, w), t * w, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), t * h])
    e_out, n_out = _en_from_src_px(src, frame, cols, rows)
    east0, north0 = float(e_out.min()), float(n_out.max())
    return CanvasLayout(frame, gsd, east0, north0, int(np.ceil((e_out.max() - east0) / gsd)),
                        int(np.ceil((north0 - n_out.min()) / gsd)), native)


def _interp_matrix(n_out: int, samples: np.ndarray) -> np.ndarray:
    """n_out x len(samples) weights of linear interpolation at 0..n_out-1 between sample positions."""
    pos = np.arange(n_out, dtype=np.float64)
    return np.stack([np.interp(pos, samples, np.eye(len(samples))[j]) for j in range(len(samples))], axis=1)


def warp_block(src: SourceRaster, layout: CanvasLayout, r0: int, r1: int, c0: int, c1: int):
    """Rows r0:r1, cols c0:c1 of the local grid resampled from `src` (bilinear; low-passed first
    when the grid is coarser than the source). Returns (H x W x 3 uint8 for an image, H x W
    float32 for a DEM; bool valid H x W).

    The CRS transform is evaluated on a lattice every WARP_GRID_PX pixels and interpolated
    between (projections are smooth at that scale), and only the source window under the block
    is read, so memory follows the block, not the map."""
    h, w = r1 - r0, c1 - c0
    rs = np.unique(np.r_[np.arange(0, h, WARP_GRID_PX), h - 1]).astype(float)
    cs = np.unique(np.r_[np.arange(0, w, WARP_GRID_PX), w - 1]).astype(float)
    cc, rr = np.meshgrid(c0 + cs, r0 + rs)
    g = layout.gsd_m
    scol, srow = _src_px_from_en(src, layout.frame, layout.east0_m + (cc + 0.5) * g,
                                 layout.north0_m - (rr + 0.5) * g)
    wr, wc = _interp_matrix(h, rs), _interp_matrix(w, cs)
    map_x, map_y = wr @ (scol - 0.5) @ wc.T, wr @ (srow - 0.5) @ wc.T
    blur = 0.5 * g / layout.native_gsd_m if g / layout.native_gsd_m > 1.5 else 0.0
    pad = int(np.ceil(3 * blur)) + 2
    x0, x1 = int(np.floor(map_x.min())) - pad, int(np.ceil(map_x.max())) + pad + 1
    y0, y1 = int(np.floor(map_y.min())) - pad, int(np.ceil(map_y.max())) + pad + 1
    if x1 <= 0 or y1 <= 0 or x0 >= src.width_px or y0 >= src.height_px:
        return np.zeros((h, w) + src.pixel_shape, src.dtype), np.zeros((h, w), bool)
    # A block at the map's edge maps partly outside the raster: read no further than the pad beyond it.
    x0, y0 = max(x0, -pad), max(y0, -pad)
    x1, y1 = min(x1, src.width_px + pad), min(y1, src.height_px + pad)
    image, valid = src.read(y0, y1, x0, x1)
    if blur:  # downsampling: low-pass first to avoid aliasing
        image = cv2.GaussianBlur(image, (0, 0), blur)
    mx, my = (map_x - x0).astype(np.float32), (map_y - y0).astype(np.float32)
    out = cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    val = cv2.remap(valid.astype(np.uint8), mx, my, cv2.INTER_NEAREST, borderValue=0)
    return out, val > 0


def iter_blocks(src: SourceRaster, layout: CanvasLayout, block_px: int,
                skip: Optional[set] = None) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(block_row, block_col, rgb, valid) for every block of the layout, row-major, except those
    in `skip`; edge blocks are cut to the grid."""
    for br, bc in layout.blocks(block_px):
        if skip and (br, bc) in skip:
            continue
        r0, c0 = br * block_px, bc * block_px
        yield (br, bc, *warp_block(src, layout, r0, min(r0 + block_px, layout.height_px),
                                   c0, min(c0 + block_px, layout.width_px)))


def to_canvas(src: SourceRaster, gsd_m: Optional[float] = None,
              frame: Optional[LocalFrame] = None, block_px: int = 2048) -> MapCanvas:
    """Resample a source raster north-up onto a local ENU grid at `gsd_m` (default: native), in
    memory (see `canvas_layout` for the grid; large regions go block by block through
    `iter_blocks` instead, as `skyfix tiles build` does)."""
    lay = canvas_layout(src, gsd_m, frame)
    image = np.zeros((lay.height_px, lay.width_px, 3), np.uint8)
    valid = np.zeros((lay.height_px, lay.width_px), bool)
    for br, bc, rgb, val in iter_blocks(src, lay, block_px):
        h, w = val.shape
        image[br * block_px:br * block_px + h, bc * block_px:bc * block_px + w] = rgb
        valid[br * block_px:br * block_px + h, bc * block_px:bc * block_px + w] = val
    return MapCanvas(image, valid, lay.gsd_m, lay.frame, lay.east0_m, lay.north0_m)


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


def load_canvas(path, gsd_m: Optional[float] = None, *,
                source_gsd_m: Optional[float] = None, frame: Optional[LocalFrame] = None) -> MapCanvas:
    """Read an orthophoto and return it as a MapCanvas (see `read_source`, `to_canvas`)."""
    src = read_source(path, source_gsd_m)
    try:
        return to_canvas(src, gsd_m, frame)
    finally:
        src.close()
