"""Pinhole camera geometry: render views from a map and rectify frames to it, over flat ground
(homographies) or over the pack's terrain (per-pixel maps).

The body attitude is aerospace roll/pitch/yaw (ZYX) in NED, yaw from north, clockwise. The camera
looks down along body z with the image top towards the nose. Ground points are always
(east_m, north_m), the order used everywhere in skyfix; homographies map homogeneous ground
(east_m, north_m, 1) <-> image (u_px, v_px, 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

# Columns: camera x (image right) = body right, camera y (image down) = body backward,
# camera z (optical axis) = body down.
BODY_FROM_CAM = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class PinholeCamera:
    width_px: int
    height_px: int
    fx_px: float
    fy_px: float
    cx_px: float
    cy_px: float
    dist_coeffs: tuple = ()  # OpenCV's lens distortion (k1, k2, p1, p2[, k3, ...]); () for none

    @classmethod
    def from_hfov(cls, width_px: int, height_px: int, hfov_deg: float) -> "PinholeCamera":
        f = width_px / 2 / np.tan(np.radians(hfov_deg) / 2)
        return cls(width_px, height_px, f, f, (width_px - 1) / 2, (height_px - 1) / 2)

    @classmethod
    def from_config(cls, cfg) -> "PinholeCamera":
        """From a CameraConfig: calibrated intrinsics when given, else the horizontal FOV."""
        dist = tuple(float(k) for k in getattr(cfg, "dist_coeffs", None) or ())
        if cfg.fx_px is None:
            cam = cls.from_hfov(cfg.width_px, cfg.height_px, cfg.hfov_deg)
            return cls(cam.width_px, cam.height_px, cam.fx_px, cam.fy_px, cam.cx_px, cam.cy_px, dist)
        return cls(cfg.width_px, cfg.height_px, cfg.fx_px, cfg.fy_px or cfg.fx_px,
                   cfg.cx_px if cfg.cx_px is not None else (cfg.width_px - 1) / 2,
                   cfg.cy_px if cfg.cy_px is not None else (cfg.height_px - 1) / 2, dist)

    def K(self) -> np.ndarray:
        return np.array([[self.fx_px, 0, self.cx_px], [0, self.fy_px, self.cy_px], [0, 0, 1.0]])


class Undistorter:
    """Frames of a lens with distortion -> the pinhole image of the same intrinsics, which is
    what every other stage assumes (remap tables made once). The identity without distortion."""

    def __init__(self, cam: PinholeCamera):
        self.maps = None
        if any(cam.dist_coeffs):
            self.maps = cv2.initUndistortRectifyMap(cam.K(), np.array(cam.dist_coeffs, np.float64), None, cam.K(),
                                                    (cam.width_px, cam.height_px), cv2.CV_16SC2)

    def __call__(self, image_rgb: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 as recorded -> H x W x 3 uint8 undistorted."""
        if self.maps is None:
            return image_rgb
        return cv2.remap(image_rgb, *self.maps, cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def world_from_body(roll_rad: float, pitch_rad: float, yaw_rad: float) -> np.ndarray:
    """3x3 rotation body -> NED world (ZYX: yaw, then pitch, then roll)."""
    cr, sr, cp, sp = np.cos(roll_rad), np.sin(roll_rad), np.cos(pitch_rad), np.sin(pitch_rad)
    cy, sy = np.cos(yaw_rad), np.sin(yaw_rad)
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


def image_from_ground(cam: PinholeCamera, roll_rad: float, pitch_rad: float, yaw_rad: float,
                      east_m: float, north_m: float, agl_m: float) -> np.ndarray:
    """3x3 homography: ground (east_m, north_m, 1) -> image (u, v, 1), camera at height agl_m
    above the ground point (east_m, north_m)."""
    r_cw = (world_from_body(roll_rad, pitch_rad, yaw_rad) @ BODY_FROM_CAM).T
    centre_ned = np.array([north_m, east_m, -agl_m])
    # x_img ~ K R_cw (P - C) with P = (N, E, 0) in NED: columns for east, north, and -C.
    m = np.column_stack([r_cw[:, 1], r_cw[:, 0], -r_cw @ centre_ned])
    return cam.K() @ m


def ground_of_pixel(h_img_ground: np.ndarray, u_px: float, v_px: float):
    """Ground (east_m, north_m) seen at image pixel (u_px, v_px)."""
    g = np.linalg.solve(h_img_ground, np.array([u_px, v_px, 1.0]))
    return g[0] / g[2], g[1] / g[2]


def ground_from_crop(centre_east_m: float, centre_north_m: float, size_m: float,
                     out_px: int) -> np.ndarray:
    """3x3: north-up crop pixel (col, row, 1) -> ground (east_m, north_m, 1); crop centred."""
    s = size_m / out_px
    return np.array([[s, 0.0, centre_east_m - size_m / 2 + 0.5 * s],
                     [0.0, -s, centre_north_m + size_m / 2 - 0.5 * s],
                     [0.0, 0.0, 1.0]])


def image_from_crop(cam: PinholeCamera, roll_rad: float, pitch_rad: float, yaw_rad: float,
                    agl_m: float, size_m: float, out_px: int):
    """(3x3 homography crop pixel -> frame pixel, (east_m, north_m) of the crop centre relative
    to the nadir): the north-up crop of size_m around the image-centre ray, for this attitude."""
    h_ig = image_from_ground(cam, roll_rad, pitch_rad, yaw_rad, 0.0, 0.0, agl_m)
    centre_e, centre_n = ground_of_pixel(h_ig, cam.cx_px, cam.cy_px)
    return h_ig @ ground_from_crop(centre_e, centre_n, size_m, out_px), (centre_e, centre_n)


def rectify(image_rgb: np.ndarray, cam: PinholeCamera, roll_rad: float, pitch_rad: float,
            yaw_rad: float, agl_m: float, size_m: float, out_px: int):
    """Warp a frame onto the ground: north-up square of size_m around the image-centre ray.

    Uses the estimated attitude and height (a wrong yaw leaves the crop rotated by the error, a
    wrong height scales it). Returns (crop uint8 out_px x out_px x 3, inside_frac: share of the
    crop the frame covers, (east_m, north_m) of the crop centre relative to the camera's nadir).
    """
    return rectify_mapped(image_rgb, cam, roll_rad, pitch_rad, yaw_rad, agl_m, size_m, out_px)[:3]


@dataclass(frozen=True)
class CropMap:
    """How a rectified crop was made: crop pixel -> frame pixel. Over flat ground a homography
    (`h`); over terrain, the frame pixel of every crop pixel (`map_x`, `map_y`, out_px x out_px)."""

    h: Optional[np.ndarray] = None
    map_x: Optional[np.ndarray] = None
    map_y: Optional[np.ndarray] = None

    def frame_px(self, crop_px: np.ndarray) -> np.ndarray:
        """Crop pixels (N x 2, col, row; fractional) -> frame pixels (N x 2)."""
        xy = np.asarray(crop_px, np.float64).reshape(-1, 2)
        if self.h is not None:
            return cv2.perspectiveTransform(xy.reshape(-1, 1, 2), self.h).reshape(-1, 2)
        n = self.map_x.shape[0]
        c = np.clip(xy[:, 0], 0, n - 1.000001)
        r = np.clip(xy[:, 1], 0, n - 1.000001)
        c0, r0 = np.floor(c).astype(int), np.floor(r).astype(int)
        fc, fr = c - c0, r - r0

        def sample(m):
            return ((m[r0, c0] * (1 - fc) + m[r0, c0 + 1] * fc) * (1 - fr)
                    + (m[r0 + 1, c0] * (1 - fc) + m[r0 + 1, c0 + 1] * fc) * fr)
        return np.column_stack([sample(self.map_x), sample(self.map_y)])


def rectify_mapped(image_rgb: np.ndarray, cam: PinholeCamera, roll_rad: float, pitch_rad: float,
                   yaw_rad: float, agl_m: float, size_m: float, out_px: int,
                   depth_m: Optional[Callable] = None):
    """`rectify`, and how: returns (crop, inside_frac, (east_m, north_m) of the crop centre
    relative to the nadir, CropMap). depth_m: f(east_m, north_m relative to the camera, arrays)
    -> the ground's depth below the camera (m; the terrain's heights), None for a plane agl_m
    below. Over terrain every crop pixel is the ground point it shows (a true orthophoto of the
    frame, as the map is), so the crop is a similarity of the map however steep the relief."""
    h, (centre_e, centre_n) = image_from_crop(cam, roll_rad, pitch_rad, yaw_rad, agl_m, size_m, out_px)
    src = image_rgb
    shrink = (size_m / out_px) / (agl_m / cam.fx_px)
    if shrink > 1.5:  # the crop is coarser than the frame: low-pass first against aliasing
        src = cv2.GaussianBlur(src, (0, 0), 0.5 * shrink)
    if depth_m is None:
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        crop = cv2.warpPerspective(src, h, (out_px, out_px), flags=flags, borderValue=(0, 0, 0))
        inside = cv2.warpPerspective(np.ones(image_rgb.shape[:2], np.uint8), h, (out_px, out_px),
                                     flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)
        return crop, float(inside.mean()), (centre_e, centre_n), CropMap(h=h)
    g = ground_from_crop(centre_e, centre_n, size_m, out_px)
    idx = np.arange(out_px, dtype=np.float64)
    east, north = np.meshgrid(g[0, 0] * idx + g[0, 2], g[1, 1] * idx + g[1, 2])
    down = np.asarray(depth_m(east, north), np.float64)
    down = np.where(np.isfinite(down) & (down > 1.0), down, agl_m)  # off the terrain: the plane
    r_cw = (world_from_body(roll_rad, pitch_rad, yaw_rad) @ BODY_FROM_CAM).T
    ned = np.stack([north, east, down], axis=-1) @ r_cw.T
    z = np.maximum(ned[..., 2], 1e-6)
    map_x = (cam.fx_px * ned[..., 0] / z + cam.cx_px).astype(np.float32)
    map_y = (cam.fy_px * ned[..., 1] / z + cam.cy_px).astype(np.float32)
    crop = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    seen = (map_x >= 0) & (map_y >= 0) & (map_x <= cam.width_px - 1) & (map_y <= cam.height_px - 1) & (ned[..., 2] > 0)
    crop[~seen] = 0
    return crop, float(seen.mean()), (centre_e, centre_n), CropMap(map_x=map_x, map_y=map_y)


# A crop is searched when the frame covers at least this share of it (the navigator's rule).
MIN_INSIDE_FRAC = 0.5


def lowest_agl_m(cam: PinholeCamera, tile_size_m: float, tilt_deg: float = 10.0,
                 min_inside: float = MIN_INSIDE_FRAC) -> float:
    """The lowest height (m above ground) from which a frame of `cam` covers `min_inside` of a
    north-up tile of `tile_size_m` at every heading (0-90 deg in 15 deg steps), level or pitched
    by `tilt_deg` (a vehicle in wind): below it a lost vehicle cannot search those tiles. The
    share grows with the height, so bisection."""
    ones = np.ones((cam.height_px, cam.width_px), np.uint8)

    def covers(agl_m: float) -> bool:
        for yaw_deg in range(0, 91, 15):
            for pitch_deg in (0.0, tilt_deg):
                h, _ = image_from_crop(cam, 0.0, np.radians(pitch_deg), np.radians(yaw_deg), agl_m, tile_size_m, 64)
                inside = cv2.warpPerspective(ones, h, (64, 64), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
                if inside.mean() < min_inside:
                    return False
        return True

    low_m, high_m = 0.01 * tile_size_m, 10.0 * tile_size_m
    for _ in range(30):
        mid_m = (low_m + high_m) / 2
        low_m, high_m = (low_m, mid_m) if covers(mid_m) else (mid_m, high_m)
    return high_m
