"""Simulated drone views of a map: pinhole rendering with attitude, plus photometric change."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from skyfix.edge.camera import PinholeCamera, ground_of_pixel, image_from_ground
from skyfix.tiles.canvas import MapCanvas

if TYPE_CHECKING:
    from skyfix.tiles.blocks import MapBlocks


@dataclass(frozen=True)
class ViewPose:
    """True pose of a simulated camera over the map's local frame."""

    east_m: float
    north_m: float
    agl_m: float
    roll_rad: float
    pitch_rad: float
    yaw_rad: float


def render_view(canvas: "MapCanvas | MapBlocks", cam: PinholeCamera, pose: ViewPose):
    """Render what the camera sees, from an in-memory canvas or a pack's map blocks (only the
    blocks under the view's footprint are read). Returns (image uint8 H x W x 3, valid_frac
    in 0..1, (east_m, north_m) of the ground point under the image centre: the view's true
    position)."""
    h_ig = image_from_ground(cam, pose.roll_rad, pose.pitch_rad, pose.yaw_rad,
                             pose.east_m, pose.north_m, pose.agl_m)
    if not isinstance(canvas, MapCanvas):
        canvas = _footprint_region(canvas, h_ig, cam, pose)
    h = h_ig @ canvas.ground_from_px()  # canvas pixel -> image pixel
    size = (cam.width_px, cam.height_px)
    img = cv2.warpPerspective(canvas.image_rgb, h, size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    val = cv2.warpPerspective(canvas.valid.astype(np.uint8), h, size, flags=cv2.INTER_NEAREST)
    return img, float(val.mean()), ground_of_pixel(h_ig, cam.cx_px, cam.cy_px)


def _footprint_region(blocks, h_ig: np.ndarray, cam: PinholeCamera, pose: ViewPose) -> MapCanvas:
    """The map around the ground the image's corners see (at most 4 x the height away, for
    views near the horizon), as an in-memory canvas."""
    corners = np.array([ground_of_pixel(h_ig, u, v) for u in (0, cam.width_px) for v in (0, cam.height_px)])
    reach = 4 * pose.agl_m
    corners = np.clip(corners, [pose.east_m - reach, pose.north_m - reach], [pose.east_m + reach, pose.north_m + reach])
    cols, rows = blocks.px_from_en(corners[:, 0], corners[:, 1])
    return blocks.region_px(int(np.floor(rows.min())) - 2, int(np.ceil(rows.max())) + 3,
                            int(np.floor(cols.min())) - 2, int(np.ceil(cols.max())) + 3)


def photometric(image_rgb: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Brightness, contrast, hue/saturation shift, blur and sensor noise, scaled by strength."""
    img = image_rgb.astype(np.float32)
    contrast = 1 + strength * rng.uniform(-0.25, 0.25)
    brightness = strength * rng.uniform(-25, 25)
    img = (img - img.mean()) * contrast + img.mean() + brightness
    hsv = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + strength * rng.uniform(-8, 8)) % 180
    hsv[..., 1] *= 1 + strength * rng.uniform(-0.2, 0.2)
    img = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    sigma = strength * rng.uniform(0, 1.2)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.normal(0, strength * rng.uniform(0, 6), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
