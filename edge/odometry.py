"""Visual odometry between consecutive frames: how far the camera moved, in metres, from the
images alone, with the same local features and geometry step as the map matching.

Nadir frames at a known height: the previous frame is treated as a small "map" whose pixels are
agl / f metres apart (x right, y down -> east-like, north-like in the previous camera's axes),
the current frame is matched against it, and `refine.fit_match` places the current image centre
in it. The shift is therefore in the previous camera's axes (rotate by its heading for east /
north), and the rotation is the yaw change between the frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from skyfix.edge.camera import BODY_FROM_CAM, PinholeCamera, world_from_body
from skyfix.edge.features import Extractor, match_descriptors
from skyfix.edge.refine import MATCH_RULES, fit_match


@dataclass(frozen=True)
class FrameShift:
    right_m: float       # camera motion along the previous image's x axis (right)
    forward_m: float     # ... along its -y axis (towards the image top, the nose)
    yaw_change_deg: float
    inliers: int

    @property
    def distance_m(self) -> float:
        return float(np.hypot(self.right_m, self.forward_m))


def frame_shift(prev_rgb: np.ndarray, cur_rgb: np.ndarray, extractor: Extractor, cam: PinholeCamera,
                agl_m: float, max_features: int = 2000, ransac_px: float = 3.0,
                min_inliers: int = 15) -> Optional[FrameShift]:
    """The camera's motion between two nadir frames (uint8 H x W x 3, the camera's size) at
    agl_m metres above flat ground, or None when fewer than min_inliers points agree."""
    gsd_m = agl_m / cam.fx_px
    a = extractor.extract(prev_rgb, max_features)
    b = extractor.extract(cur_rgb, max_features)
    iq, it = match_descriptors(b.desc, a.desc, extractor.binary, *MATCH_RULES[extractor.name])
    if iq.size < min_inliers:
        return None
    # The previous frame as ground: centred on its principal point, north = up the image.
    prev_en = np.column_stack([(a.xy_px[it, 0] - cam.cx_px) * gsd_m, (cam.cy_px - a.xy_px[it, 1]) * gsd_m])
    h, w = cur_rgb.shape[:2]
    m, _ = fit_match(b.xy_px[iq], prev_en, (w, h), gsd_m, (0.0, 0.0), gsd_m, ransac_px)
    if m is None or m.inliers < min_inliers:
        return None
    # fit_match places the current image's centre pixel; move to the principal point's offset.
    centre_off = np.array([(w - 1) / 2 - cam.cx_px, cam.cy_px - (h - 1) / 2]) * gsd_m
    return FrameShift(float(m.east_m - centre_off[0]), float(m.north_m - centre_off[1]),
                      float(m.rotation_deg), m.inliers)


def camera_motion(prev_px: np.ndarray, cur_px: np.ndarray, cam: PinholeCamera, agl_m: float,
                  world_from_cam_prev: np.ndarray, ransac_px: float = 3.0,
                  min_inliers: int = 15) -> Optional[tuple]:
    """The camera's displacement between two frames over flat ground, from matched raw image
    pixels (N x 2 each, previous and current frame): (north_m, east_m, inliers, rms_px, down_m),
    or None.

    The frame-to-frame homography is decomposed (OpenCV) into the rotation and the translation
    between the two cameras, taking the solution whose ground normal points down from the
    previous camera; the translation is scaled by its height and turned into the world by its
    attitude. So the telemetry's attitude only turns the displacement (a 1 deg error turns it
    by 1 deg), where differencing two telemetry-rectified crops would take in each frame's
    attitude error in full (agl * tan(error): 2 m per degree at 120 m)."""
    if len(prev_px) < min_inliers:
        return None
    h, mask = cv2.findHomography(prev_px.astype(np.float32), cur_px.astype(np.float32), cv2.RANSAC, ransac_px)
    if h is None or mask is None or int(mask.sum()) < min_inliers:
        return None
    inl = mask.ravel().astype(bool)
    proj = cv2.perspectiveTransform(prev_px[inl].reshape(-1, 1, 2).astype(np.float64), h).reshape(-1, 2)
    rms_px = float(np.sqrt(np.mean(np.sum((proj - cur_px[inl]) ** 2, axis=1))))
    _, rotations, translations, normals = cv2.decomposeHomographyMat(h, cam.K())
    up_in_cam = world_from_cam_prev.T @ np.array([0.0, 0.0, -1.0])  # NED: up is -down
    best = int(np.argmin([float(n.ravel() @ up_in_cam) for n in normals]))
    centre_cur = -rotations[best].T @ translations[best].ravel()  # in the previous camera's axes
    d_ned = world_from_cam_prev @ centre_cur * agl_m
    return float(d_ned[0]), float(d_ned[1]), int(inl.sum()), rms_px, float(d_ned[2])


def refine_shifts(prev_grey: np.ndarray, cur_grey: np.ndarray, prev_px: np.ndarray, cur_px: np.ndarray,
                  half_px: int = 5, search_px: int = 2, min_score: float = 0.6) -> np.ndarray:
    """Sub-pixel positions (N x 2, col,row) in cur_grey of matched keypoints prev_px -> cur_px
    (N x 2 each) of two grey uint8 images. A learned extractor's keypoints sit on its pixel
    grid and their matched shifts lock to it (XFeat on the twice-upscaled crop: odometry came out
    13.9 % long over 4 m shifts), while the ground moves by fractions of a pixel. So each
    previous keypoint's (2 half_px + 1)^2 patch is correlated (normalised) with cur_grey within
    +-search_px of its match, and the peak refined by a parabola on each axis; where the patch
    leaves either image or the peak is weak or on the search border, the match stays as given."""
    out = cur_px.astype(np.float64).copy()
    h, w = prev_grey.shape
    r, s = half_px, search_px
    p_int, c_int = np.round(prev_px).astype(int), np.round(cur_px).astype(int)
    inside = ((p_int >= r).all(axis=1) & (p_int[:, 0] < w - r) & (p_int[:, 1] < h - r)
              & (c_int >= r + s).all(axis=1) & (c_int[:, 0] < w - r - s) & (c_int[:, 1] < h - r - s))
    idx = np.nonzero(inside)[0]
    if idx.size == 0:
        return out
    # Every match at once (one OpenCV call per match took 37.6 ms per frame in the SIL, this 17.2).
    k, kw = np.arange(-r, r + 1), np.arange(-r - s, r + s + 1)
    patch = prev_grey.astype(np.float32)[p_int[idx, 1, None, None] + k[None, :, None],
                                         p_int[idx, 0, None, None] + k[None, None, :]]
    window = cur_grey.astype(np.float32)[c_int[idx, 1, None, None] + kw[None, :, None],
                                         c_int[idx, 0, None, None] + kw[None, None, :]]
    patch -= patch.mean(axis=(1, 2), keepdims=True)
    patch_norm = np.sqrt((patch * patch).sum(axis=(1, 2)))
    side = 2 * s + 1
    score = np.empty((len(idx), side, side), np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):  # a flat patch or window: NaN, skipped below
        for j in range(side):
            for i in range(side):
                c = window[:, j:j + 2 * r + 1, i:i + 2 * r + 1]
                c = c - c.mean(axis=(1, 2), keepdims=True)
                score[:, j, i] = (patch * c).sum(axis=(1, 2)) / (patch_norm * np.sqrt((c * c).sum(axis=(1, 2))))
    flat = np.nan_to_num(score.reshape(len(idx), -1), nan=-np.inf)
    best = np.argmax(flat, axis=1)
    j, i = best // side, best % side
    rows = np.arange(len(idx))
    ok = (flat[rows, best] >= min_score) & (j > 0) & (j < 2 * s) & (i > 0) & (i < 2 * s)
    rows, j, i = rows[ok], j[ok], i[ok]
    dy = _parabola_peak(score[rows, j - 1, i], score[rows, j, i], score[rows, j + 1, i])
    dx = _parabola_peak(score[rows, j, i - 1], score[rows, j, i], score[rows, j, i + 1])
    # The patch centred on the rounded previous point lies at (cx - s + i + dx, ...) now: the
    # previous keypoint moved by the same shift.
    sel = idx[rows]
    shift = np.column_stack([c_int[sel, 0] - s + i + dx - p_int[sel, 0], c_int[sel, 1] - s + j + dy - p_int[sel, 1]])
    out[sel] = prev_px[sel] + shift
    return out


def _parabola_peak(before: np.ndarray, peak: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Offsets (-0.5..0.5) of the vertices of the parabolas through three samples around maxima."""
    denom = before - 2 * peak + after
    with np.errstate(invalid="ignore", divide="ignore"):
        off = np.where(denom < 0, 0.5 * (before - after) / denom, 0.0)
    return np.clip(np.nan_to_num(off), -0.5, 0.5)


ODOMETRY_FLOOR_PX = 0.35  # odometry's per-frame noise floor, raw-frame pixels (sub-pixel shifts)
VERTICAL_LEAK = 0.3       # horizontal odometry error per metre of vertical motion between frames (1 sigma)


class VisualOdometry:
    """The navigator's odometry stage: the vehicle's velocity since the previous frame, offered to
    the track. cfg: NavConfig (odometry, min_inliers, odometry_scale_sigma); camera: PinholeCamera;
    extractor: the refinement's (its features are reused); heights: GroundHeights; accuracy:
    AccuracyBudget (the height's error as the map sees it); refine_size_m: the refinement crop."""

    def __init__(self, cfg, camera: PinholeCamera, extractor: Extractor, heights, accuracy, refine_size_m: float):
        self.cfg, self.camera, self.extractor = cfg, camera, extractor
        self.heights, self.accuracy, self.refine_size_m = heights, accuracy, refine_size_m
        # The last usable frame: (crop features, grey crop, CropMap, world-from-camera rotation,
        # height m, capture s).
        self.prev = None

    def offer(self, gate, described, crop_rgb: np.ndarray, crop_map, pose, t_s: float, heading_trusted: bool,
              turn_rad: Optional[float] = None) -> None:
        """Offer the velocity since the previous frame to `gate` (TrackGate). The crops' features
        (already computed for the map match) are matched, taken back to raw frame pixels, and the
        frame-to-frame homography gives the camera's displacement (`camera_motion`). pose: the
        CropPose the crop was rectified with. turn_rad: this frame's match rotation (the telemetry
        heading's error, rad), turned out of the displacement as out of the placement: a yaw 15 deg
        off, not yet trimmed, would send the track sideways at a quarter of its speed."""
        usable = self.cfg.odometry and heading_trusted and pose.attitude_known and pose.height_known
        if not usable:
            self.prev = None
            return
        world_from_cam = world_from_body(pose.roll_rad, pose.pitch_rad, pose.yaw_rad) @ BODY_FROM_CAM
        prev = self.prev
        grey = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2GRAY)
        self.prev = (described, grey, crop_map, world_from_cam, pose.agl_m, t_s)
        if prev is None:
            return
        prev_features, prev_grey, prev_crop_map, prev_world_from_cam, prev_agl_m, prev_t = prev
        dt = t_s - prev_t
        if not 0 < dt <= gate.odometry_gap_s:
            return
        ex = self.extractor
        iq, it = match_descriptors(described.desc, prev_features.desc, ex.binary, *MATCH_RULES[ex.name])
        cur_px = refine_shifts(prev_grey, grey, prev_features.xy_px[it], described.xy_px[iq])
        motion = camera_motion(prev_crop_map.frame_px(prev_features.xy_px[it]), crop_map.frame_px(cur_px), self.camera,
                               prev_agl_m, prev_world_from_cam, min_inliers=self.cfg.min_inliers)
        if motion is None:
            return
        dn, de, inliers, rms_px, dd = motion
        if turn_rad:
            c, s = math.cos(turn_rad), math.sin(turn_rad)
            de, dn = de * c + dn * s, dn * c - de * s
        sigma_m, scale_sigma = self._sigma_m(de, dn, inliers, rms_px, prev_agl_m, pose, t_s)
        # A climb or descent between the frames leaks into the horizontal displacement: the
        # decomposition trades a little tilt for a little sideways motion, more the more the
        # camera moved along its axis. Measured on synthetic frames with 0.5 px of noise (120 m up,
        # 0.1 m sideways): 0.12 m median error level, 0.21 m descending 0.5 m, 0.32 m descending
        # 1.5 m; unweighted, near-hover descents from 120 to 30 m put messages 7 m off claiming 1.3 m.
        sigma_m = math.hypot(sigma_m, VERTICAL_LEAK * dd)
        gate.offer_velocity(t_s, de / dt, dn / dt, sigma_m / dt, math.hypot(de, dn), interval_s=dt,
                            scale_sigma=scale_sigma)

    def _sigma_m(self, de: float, dn: float, inliers: int, rms_px: float, agl_m: float, pose, t_s: float) -> tuple:
        """(1-sigma error of the displacement m, the scale's sigma the track is told)."""
        # Fit noise: twice the reprojection error over the inliers' count, plus a floor of
        # ODOMETRY_FLOOR_PX (the shifts are refined to sub-pixel), at the ground sampling of the
        # raw frame. Fitted to the measured error (Colorado straight SIL: per-axis std 0.33 m/s,
        # this sigma's median 0.31 m/s, 72 % of errors within 1 sigma, 95 % within 2).
        raw_gsd_m = agl_m / self.camera.fx_px
        sigma_m = 2.0 * rms_px * raw_gsd_m / math.sqrt(inliers) + ODOMETRY_FLOOR_PX * raw_gsd_m
        # The frame-to-frame homography takes the ground in view as a plane; over relief its scale
        # is that of whatever depth the matched points sit at: up to about three standard
        # deviations of the heights in view off the height (over hills of 150 m with a DEM,
        # unweighted odometry put 37 of 549 messages beyond 3x, one deviation 7 of 642).
        if pose.ground is not None:
            spread_m = self.heights.spread_m(*pose.ground[:2], self.refine_size_m / 2)
            sigma_m += math.hypot(de, dn) * 3.0 * spread_m / max(agl_m, 1.0)
        # Odometry's scale is the telemetry's height: where the map match says that height is off
        # (its scale), the displacement is off by as much. Over 150 m hills without a DEM the
        # height was 30-60 % off, the map refused those frames as implausible, and odometry alone
        # carried the track 80 m off while claiming 12 m (docs/simulator.md, "Relief").
        scale_sigma = max(self.cfg.odometry_scale_sigma, self.accuracy.height_error_frac(t_s))
        return math.hypot(sigma_m, (scale_sigma - self.cfg.odometry_scale_sigma) * math.hypot(de, dn)), scale_sigma
