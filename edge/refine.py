"""Metre-level refinement: match a rectified frame crop against the map with keypoints and a
RANSAC homography (OpenCV). The homography places the crop centre on the map and gives the
heading and scale error; its inlier count is the main confidence signal."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from skyfix.errors import SkyfixError
from skyfix.tiles.canvas import MapCanvas

METHODS = ("sift", "orb")  # AKAZE left OpenCV 5's main modules


@dataclass(frozen=True)
class Match:
    east_m: float
    north_m: float
    inliers: int
    matches: int
    rms_px: float          # inlier reprojection RMS, map pixels
    rotation_deg: float    # crop -> map rotation (heading correction), clockwise positive
    scale: float           # map px per crop px (height error: true agl ~ assumed agl * scale)
    # The RANSAC inliers: crop pixels (col, row) and the map points they match (east_m, north_m),
    # N x 2 each; what camera resection (edge/pose.py) needs.
    crop_px: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    ground_en_m: Optional[np.ndarray] = field(default=None, repr=False, compare=False)


def _detector(method: str, n_features: int):
    if method == "sift":
        return cv2.SIFT_create(nfeatures=n_features), cv2.NORM_L2
    if method == "orb":
        return cv2.ORB_create(nfeatures=n_features), cv2.NORM_HAMMING
    raise SkyfixError(f"unknown keypoint method '{method}'; choose one of {', '.join(METHODS)}")


def _gray(image_rgb: np.ndarray) -> np.ndarray:
    # CLAHE evens out illumination differences between the map date and the flight.
    gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)


class MapMatcher:
    """Keypoints of the whole map, computed once; per frame only the crop is described."""

    def __init__(self, canvas: MapCanvas, method: str = "sift", map_features_per_mpx: int = 8000,
                 crop_features: int = 1500, ratio: float = 0.8, ransac_px: float = 4.0):
        self.canvas, self.method, self.ratio, self.ransac_px = canvas, method, ratio, ransac_px
        mpx = canvas.image_rgb.shape[0] * canvas.image_rgb.shape[1] / 1e6
        detector, self.norm = _detector(method, int(map_features_per_mpx * mpx))
        kps, desc = detector.detectAndCompute(_gray(canvas.image_rgb), canvas.valid.astype(np.uint8) * 255)
        if desc is None or len(kps) < 10:
            raise SkyfixError("the map has too little texture for keypoint refinement")
        self.map_xy = np.array([k.pt for k in kps], np.float32)
        self.map_desc = desc
        self.crop_detector = _detector(method, crop_features)[0]
        self.matcher = cv2.BFMatcher(self.norm)

    def match(self, crop_rgb: np.ndarray, crop_gsd_m: float, centre_en: tuple, radius_m: float,
              min_matches: int = 8) -> Optional[Match]:
        """Locate a north-up crop (any rotation tolerated) whose centre lies within radius_m of
        centre_en. Returns None when matching fails."""
        kps, desc = self.crop_detector.detectAndCompute(_gray(crop_rgb), (crop_rgb.sum(axis=2) > 0).astype(np.uint8) * 255)
        if desc is None or len(kps) < min_matches:
            return None
        c, r = self.canvas.px_from_en(*centre_en)
        half_px = (radius_m + crop_rgb.shape[0] * crop_gsd_m * 0.75) / self.canvas.gsd_m
        near = np.flatnonzero((np.abs(self.map_xy[:, 0] - c) <= half_px) & (np.abs(self.map_xy[:, 1] - r) <= half_px))
        if near.size < min_matches:
            return None
        pairs = self.matcher.knnMatch(desc, self.map_desc[near], k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.ratio * p[1].distance]
        if len(good) < min_matches:
            return None
        # Crop pixels are scaled to map pixels first so the homography is near-identity in scale.
        s = crop_gsd_m / self.canvas.gsd_m
        src = np.array([kps[m.queryIdx].pt for m in good], np.float32) * s
        dst = self.map_xy[near[[m.trainIdx for m in good]]]
        H, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, self.ransac_px, maxIters=2000, confidence=0.999)
        if H is None or mask is None or int(mask.sum()) < 4:
            return None
        inl = mask.ravel().astype(bool)
        proj = cv2.perspectiveTransform(src[inl][None], H)[0]
        rms = float(np.sqrt(np.mean(np.sum((proj - dst[inl]) ** 2, axis=1))))
        h, w = crop_rgb.shape[:2]
        centre = cv2.perspectiveTransform(np.array([[[(w - 1) / 2 * s, (h - 1) / 2 * s]]], np.float32), H)[0, 0]
        # Local linear part at the centre: rotation and scale of the crop on the map.
        eps = 10.0
        right = cv2.perspectiveTransform(np.array([[[(w - 1) / 2 * s + eps, (h - 1) / 2 * s]]], np.float32), H)[0, 0]
        dx, dy = right - centre
        e = self.canvas.east0_m + (centre[0] + 0.5) * self.canvas.gsd_m
        n = self.canvas.north0_m - (centre[1] + 0.5) * self.canvas.gsd_m
        g = self.canvas.gsd_m
        ground = np.column_stack([self.canvas.east0_m + (dst[inl, 0] + 0.5) * g,
                                  self.canvas.north0_m - (dst[inl, 1] + 0.5) * g])
        return Match(float(e), float(n), int(inl.sum()), len(good), rms,
                     float(np.degrees(np.arctan2(dy, dx))), float(np.hypot(dx, dy) / eps),
                     crop_px=src[inl] / s, ground_en_m=ground)
