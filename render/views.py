"""Simulated drone views of a map: pinhole rendering with attitude, plus photometric change."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import cv2
import numpy as np

from skyfix.edge.camera import BODY_FROM_CAM, PinholeCamera, ground_of_pixel, image_from_ground, world_from_body
from skyfix.pack.canvas import MapCanvas

if TYPE_CHECKING:
    from skyfix.pack.blocks import MapBlocks


@dataclass(frozen=True)
class ViewPose:
    """True pose of a simulated camera over the map's local frame."""

    east_m: float
    north_m: float
    agl_m: float
    roll_rad: float
    pitch_rad: float
    yaw_rad: float


def render_view(canvas: "MapCanvas | MapBlocks", cam: PinholeCamera, pose: ViewPose,
                terrain: Optional[Callable] = None):
    """Render what the camera sees, from an in-memory canvas or a pack's map blocks (only the
    blocks under the view's footprint are read). Returns (image uint8 H x W x 3, valid_frac
    in 0..1, (east_m, north_m) of the ground point under the image centre: the view's true
    position). terrain: heights above the datum, f(east_m, north_m) -> m (arrays); the camera
    is pose.agl_m above the datum, and each pixel's ray meets the relief (the map draped on it)."""
    if terrain is not None:
        return _render_over_relief(canvas, cam, pose, terrain)
    h_ig = image_from_ground(cam, pose.roll_rad, pose.pitch_rad, pose.yaw_rad,
                             pose.east_m, pose.north_m, pose.agl_m)
    if not isinstance(canvas, MapCanvas):
        corners = np.array([ground_of_pixel(h_ig, u, v) for u in (0, cam.width_px) for v in (0, cam.height_px)])
        canvas = _region_seen(canvas, corners[:, 0], corners[:, 1], pose)
    h = h_ig @ canvas.ground_from_px()  # canvas pixel -> image pixel
    size = (cam.width_px, cam.height_px)
    img = cv2.warpPerspective(canvas.image_rgb, h, size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    val = cv2.warpPerspective(canvas.valid.astype(np.uint8), h, size, flags=cv2.INTER_NEAREST)
    return img, float(val.mean()), ground_of_pixel(h_ig, cam.cx_px, cam.cy_px)


RELIEF_ITERATIONS = 8  # ray-relief intersection by fixed point: converges for slopes under the rays' own


def _render_over_relief(canvas, cam: PinholeCamera, pose: ViewPose, terrain: Callable):
    """render_view over relief: every pixel's ray is intersected with the terrain (fixed-point
    iteration on the height), and the map is sampled where it lands (cv2.remap)."""
    u, v = np.meshgrid(np.arange(cam.width_px, dtype=np.float64), np.arange(cam.height_px, dtype=np.float64))
    # Every pixel centre, and last the principal point (the view's true position).
    pixels = np.stack([np.append(u.ravel(), cam.cx_px), np.append(v.ravel(), cam.cy_px), np.ones(u.size + 1)])
    rays_cam = np.linalg.solve(cam.K(), pixels)
    ned = world_from_body(pose.roll_rad, pose.pitch_rad, pose.yaw_rad) @ BODY_FROM_CAM @ rays_cam
    d_e, d_n, d_down = ned[1], ned[0], np.maximum(ned[2], 1e-6)  # rays above the horizon: far away
    z = np.zeros(u.size + 1)
    for _ in range(RELIEF_ITERATIONS):
        t = (pose.agl_m - z) / d_down
        east, north = pose.east_m + t * d_e, pose.north_m + t * d_n
        z = np.minimum(terrain(east, north), pose.agl_m - 1.0)
    if not isinstance(canvas, MapCanvas):
        canvas = _region_seen(canvas, east, north, pose)
    centre_en = (float(east[-1]), float(north[-1]))
    cols, rows = canvas.px_from_en(east[:-1], north[:-1])
    map_x = np.asarray(cols, np.float32).reshape(u.shape)
    map_y = np.asarray(rows, np.float32).reshape(u.shape)
    img = cv2.remap(canvas.image_rgb, map_x, map_y, cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    val = cv2.remap(canvas.valid.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST, borderValue=0)
    return img, float(val.mean()), centre_en


def synthetic_terrain(relief_m: float, wavelength_m: float = 400.0, seed: int = 0) -> Callable:
    """Smooth hills: heights above the datum (m) as f(east_m, north_m), a sum of three waves with
    random directions and phases, scaled to span about relief_m peak to peak, 0 at (0, 0)."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(0, np.pi, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    scales = wavelength_m * np.array([1.0, 0.7, 1.6])

    def raw(east_m, north_m):
        e, n = np.asarray(east_m, float), np.asarray(north_m, float)
        return sum(np.sin(2 * np.pi * (e * np.cos(a) + n * np.sin(a)) / lam + ph)
                   for a, ph, lam in zip(angles, phases, scales)) / 3.0

    offset = float(raw(0.0, 0.0))
    return lambda east_m, north_m: relief_m / 2 * (raw(east_m, north_m) - offset)


def _region_seen(blocks, east_m: np.ndarray, north_m: np.ndarray, pose: ViewPose) -> MapCanvas:
    """The map around the ground points a view sees (at most 4 x the height away, for views near
    the horizon), as an in-memory canvas."""
    reach = 4 * pose.agl_m
    east = np.clip(east_m, pose.east_m - reach, pose.east_m + reach)
    north = np.clip(north_m, pose.north_m - reach, pose.north_m + reach)
    cols, rows = blocks.px_from_en(east, north)
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


# ---- matching cases with a known answer ------------------------------------------------------------
MATCH_SUCCESS_PX = 3.0  # a match is right when the crop centre lands within this many map pixels


def match_pairs(map_canvas: MapCanvas, frame_canvas: MapCanvas, n: int, rotation_deg: float, seed: int = 0,
                size_m: float = 100.0, offset_m: float = 20.0):
    """n drone-like crops from frame_canvas with a known truth on map_canvas: a random centre,
    rotation within +-rotation_deg, scale 0.8-1.25 (the assumed height is wrong by that much),
    the prior off by up to offset_m, photometric change. Yields (crop uint8 H x W x 3, truth_en,
    prior_en, wrong_en), positions (east_m, north_m): wrong_en is a prior 230-400 m away whose
    search window cannot overlap the crop (None when the map is too small around this point),
    for the chance-consensus null. Used by `skyfix bench match` and the features' parity gate."""
    rng = np.random.default_rng(seed)
    e0, n0, e1, n1 = map_canvas.bounds_en()
    crop_px = int(round(size_m / map_canvas.gsd_m))
    margin = size_m * 1.25 + offset_m
    for _ in range(n):
        e, nn = rng.uniform(e0 + margin, e1 - margin), rng.uniform(n0 + margin, n1 - margin)
        scale, rot = rng.uniform(0.8, 1.25), rng.uniform(-rotation_deg, rotation_deg)
        crop = frame_canvas.render(e, nn, size_m * scale, crop_px, rot)[0]
        crop = photometric(crop, rng, strength=1.0)
        prior = (e + rng.uniform(-offset_m, offset_m), nn + rng.uniform(-offset_m, offset_m))
        wrong = None
        for _ in range(50):
            ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(230, 400)
            we, wn = e + dist * np.cos(ang), nn + dist * np.sin(ang)
            if e0 + size_m < we < e1 - size_m and n0 + size_m < wn < n1 - size_m:
                wrong = (we, wn)
                break
        yield crop, (e, nn), prior, wrong


def match_error_px(match, truth_en: tuple, gsd_m: float) -> float:
    """Distance in map pixels between a Match's crop centre and the truth (inf without a match)."""
    return np.inf if match is None else float(np.hypot(match.east_m - truth_en[0], match.north_m - truth_en[1]) / gsd_m)


def match_is_right(match, truth_en: tuple, gsd_m: float, min_inliers: int) -> bool:
    """A match with at least min_inliers whose crop centre is within MATCH_SUCCESS_PX of the truth."""
    return match is not None and match.inliers >= min_inliers and match_error_px(match, truth_en, gsd_m) < MATCH_SUCCESS_PX
