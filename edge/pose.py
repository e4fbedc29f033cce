"""Camera resection: where the camera is, from the image alone.

A match gives ground points (east_m, north_m, 0) for pixels of the frame. With the camera's
intrinsics that fixes the camera's whole pose (PnP on a plane), so the vehicle's position no
longer depends on the autopilot's attitude. That matters in the loop: the autopilot corrects
its attitude with skyfix's fixes, and a fix placed with that attitude (2 m per degree of tilt
at 120 m) would feed its own error back into it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from skyfix.edge.camera import PinholeCamera

MIN_POINTS = 12


@dataclass(frozen=True)
class CameraPose:
    east_m: float
    north_m: float
    agl_m: float           # camera height above the matched ground plane
    rms_px: float          # reprojection RMS of the points used
    n_points: int


def image_px_of_crop_px(crop_px: np.ndarray, h_image_from_crop: np.ndarray) -> np.ndarray:
    """N x 2 crop pixels -> N x 2 frame pixels through the rectification homography."""
    return cv2.perspectiveTransform(crop_px.reshape(-1, 1, 2).astype(np.float64), h_image_from_crop).reshape(-1, 2)


def resect(cam: PinholeCamera, image_px: np.ndarray, ground_en_m: np.ndarray,
           guess_en_agl: Optional[tuple] = None) -> Optional[CameraPose]:
    """Camera position from N >= 12 image pixels and their ground points (flat ground, z = 0).

    World frame: x east, y north, z up. guess_en_agl (east_m, north_m, agl_m) seeds the
    iterative solver (the telemetry pose); without it a planar initialisation is used.
    Returns None when the points do not determine a pose (too few, degenerate, behind)."""
    if len(image_px) < MIN_POINTS:
        return None
    obj = np.column_stack([ground_en_m, np.zeros(len(ground_en_m))]).astype(np.float64)
    origin = obj.mean(axis=0)  # keep the numbers small
    obj -= origin
    img = image_px.astype(np.float64)
    ok, rvec, tvec = cv2.solvePnP(obj, img, cam.K(), None, flags=cv2.SOLVEPNP_IPPE)
    if not ok:
        return None
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, cam.K(), None, rvec, tvec)
    rot = cv2.Rodrigues(rvec)[0]
    centre = -rot.T @ tvec.ravel()
    if centre[2] <= 0:
        return None
    proj = cv2.projectPoints(obj, rvec, tvec, cam.K(), None)[0].reshape(-1, 2)
    rms = float(np.sqrt(np.mean(np.sum((proj - img) ** 2, axis=1))))
    return CameraPose(float(centre[0] + origin[0]), float(centre[1] + origin[1]), float(centre[2]), rms, len(img))
