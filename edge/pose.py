"""Camera resection: where the camera is, from the image alone.

A match gives ground points (east_m, north_m, up_m) for pixels of the frame: up_m from the
pack's terrain, or 0 on flat ground. With the camera's intrinsics that fixes the camera's whole
pose (PnP), so the vehicle's position no longer depends on the autopilot's attitude.

Flat ground taken for sloped ground is what this cannot see: a plane tilted by the slope looks
the same as a camera tilted by it, and the planar solution moves the camera sideways by about
height x sin(slope) (21 m at 120 m over a 10 deg slope). With the terrain's heights the points
are not coplanar and the pose is the true one. That matters in the loop: the autopilot corrects
its attitude with skyfix's fixes, and a fix placed with that attitude (2 m per degree of tilt
at 120 m) would feed its own error back into it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from skyfix.edge.camera import BODY_FROM_CAM, CropMap, PinholeCamera

MIN_POINTS = 12
NED_FROM_ENU = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
# Matched points' errors are correlated: the fit's RMS understates them. 1.5 puts the resected
# position's 1-sigma at about twice the per-axis error measured over the bench integrity flights
# (docs/integrity.md); 2.0 claimed three times it.
NOISE_FACTOR = 1.5


@dataclass(frozen=True)
class CameraPose:
    east_m: float
    north_m: float
    up_m: float            # camera height above z = 0 of the points (the ground plane, or the terrain's datum)
    rms_px: float          # reprojection RMS of the points used
    n_points: int
    cov_en_m2: np.ndarray  # 2 x 2 covariance of (east_m, north_m) from the fit (see resect)
    world_from_cam: np.ndarray  # 3 x 3 rotation camera -> NED world, from the image alone

    def attitude_rad(self) -> tuple:
        """(roll_rad, pitch_rad, yaw_rad) of the body carrying this camera (ZYX, NED)."""
        return body_attitude(self.world_from_cam)


def image_px_of_crop_px(crop_px: np.ndarray, h_image_from_crop: np.ndarray) -> np.ndarray:
    """N x 2 crop pixels -> N x 2 frame pixels through the rectification homography."""
    return CropMap(h=h_image_from_crop).frame_px(crop_px)


def resect(cam: PinholeCamera, image_px: np.ndarray, ground_en_m: np.ndarray,
           ground_up_m: Optional[np.ndarray] = None) -> Optional[CameraPose]:
    """Camera position from N >= 12 image pixels (N x 2) and their ground points (N x 2
    east_m, north_m), at heights ground_up_m (N, m; None: flat ground, z = 0).

    World frame: x east, y north, z up. Coplanar points are solved by IPPE (the plane's own
    solver), points on relief by SQPnP (its global minimum); both refined by Levenberg-Marquardt.
    Returns None when the points do not determine a pose (too few, degenerate, behind)."""
    if len(image_px) < MIN_POINTS:
        return None
    up = np.zeros(len(ground_en_m)) if ground_up_m is None else np.asarray(ground_up_m, np.float64)
    if not np.isfinite(up).all():
        return None
    obj = np.column_stack([ground_en_m, up]).astype(np.float64)
    origin = obj.mean(axis=0)  # keep the numbers small
    obj -= origin
    img = image_px.astype(np.float64)
    planar = float(np.ptp(obj[:, 2])) < 1e-6
    try:
        ok, rvec, tvec = cv2.solvePnP(obj, img, cam.K(), None, flags=cv2.SOLVEPNP_IPPE if planar else cv2.SOLVEPNP_SQPNP)
    except cv2.error:  # degenerate point sets
        return None
    if not ok:
        return None
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, cam.K(), None, rvec, tvec)
    rot = cv2.Rodrigues(rvec)[0]
    centre = -rot.T @ tvec.ravel()
    if centre[2] <= float(obj[:, 2].max()):  # below the highest point it sees
        return None
    proj, jac = cv2.projectPoints(obj, rvec, tvec, cam.K(), None)
    proj = proj.reshape(-1, 2)
    rms = float(np.sqrt(np.mean(np.sum((proj - img) ** 2, axis=1))))
    cov = _centre_covariance(jac[:, :6], np.concatenate([rvec.ravel(), tvec.ravel()]), rms, len(img))
    if cov is None:
        return None
    return CameraPose(float(centre[0] + origin[0]), float(centre[1] + origin[1]), float(centre[2] + origin[2]), rms,
                      len(img), cov, NED_FROM_ENU @ rot.T)


def body_attitude(world_from_cam: np.ndarray) -> tuple:
    """(roll_rad, pitch_rad, yaw_rad) of the body whose camera (BODY_FROM_CAM) has this
    camera -> NED rotation; the inverse of camera.world_from_body(...) @ BODY_FROM_CAM."""
    r = world_from_cam @ BODY_FROM_CAM.T
    pitch = float(np.arcsin(np.clip(-r[2, 0], -1.0, 1.0)))
    return float(np.arctan2(r[2, 1], r[2, 2])), pitch, float(np.arctan2(r[1, 0], r[0, 0]))


def _camera_centre(params: np.ndarray) -> np.ndarray:
    return -cv2.Rodrigues(params[:3])[0].T @ params[3:]


def _centre_covariance(jac_px: np.ndarray, params: np.ndarray, rms_px: float, n: int,
                       noise_factor: float = NOISE_FACTOR) -> Optional[np.ndarray]:
    """2 x 2 covariance of the camera centre's (east, north) from the Gauss-Newton normal
    matrix of the pose fit (pixel noise = the fit's RMS, at least 0.3 px, x noise_factor because
    match errors are not independent), propagated through C = -R^T t. None if singular.
    Few or clustered points give a large covariance: that is the tilt/shift ambiguity."""
    sigma_px = max(rms_px, 0.3) * noise_factor * np.sqrt(n / max(n - 6, 1))
    normal = jac_px.T @ jac_px
    if np.linalg.cond(normal) > 1e12:
        return None
    cov_params = sigma_px ** 2 * np.linalg.inv(normal)
    eps = 1e-6
    base = _camera_centre(params)
    jc = np.column_stack([(_camera_centre(params + eps * np.eye(6)[i]) - base) / eps for i in range(6)])
    return (jc @ cov_params @ jc.T)[:2, :2]
