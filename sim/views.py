"""Simulated drone views of a map: pinhole rendering with attitude, plus photometric change."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from skyfix.edge.camera import PinholeCamera, ground_of_pixel, image_from_ground
from skyfix.tiles.canvas import MapCanvas


@dataclass(frozen=True)
class ViewPose:
    """True pose of a simulated camera over the map's local frame."""

    east_m: float
    north_m: float
    agl_m: float
    roll_rad: float
    pitch_rad: float
    yaw_rad: float


def render_view(canvas: MapCanvas, cam: PinholeCamera, pose: ViewPose):
    """Render what the camera sees. Returns (image uint8 H x W x 3, valid_frac in 0..1,
    (east_m, north_m) of the ground point under the image centre: the view's true position)."""
    h_ig = image_from_ground(cam, pose.roll_rad, pose.pitch_rad, pose.yaw_rad,
                             pose.east_m, pose.north_m, pose.agl_m)
    h = h_ig @ canvas.ground_from_px()  # canvas pixel -> image pixel
    size = (cam.width_px, cam.height_px)
    img = cv2.warpPerspective(canvas.image_rgb, h, size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    val = cv2.warpPerspective(canvas.valid.astype(np.uint8), h, size, flags=cv2.INTER_NEAREST)
    return img, float(val.mean()), ground_of_pixel(h_ig, cam.cx_px, cam.cy_px)


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
