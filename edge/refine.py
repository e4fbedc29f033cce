"""Metre-level refinement: match a rectified frame crop against the map's local features (from
the pack) near a candidate, and fit a RANSAC similarity (OpenCV). The fit places the crop
centre on the map and gives the heading and scale error; its inlier count is the main
confidence signal. The extractor is any `edge.features.Extractor` (SIFT, ORB, XFeat)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from skyfix.edge.features import Extractor, Features, extract_any_rotation, match_descriptors
from skyfix.errors import SkyfixError
from skyfix.pack.map_features import MapFeatures


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


# Matching rule per extractor: Lowe's ratio for hand-made descriptors; mutual nearest
# neighbours (XFeat's own rule) plus a loose ratio for the learned ones. Chosen in `skyfix bench match`.
MATCH_RULES = {"sift": (0.8, False), "orb": (0.8, False), "xfeat": (0.95, True), "dense": (0.95, True)}


class MapMatcher:
    """Match a rectified crop against the map's features near a candidate position.

    features: the map's keypoints (tiles/features.py, from the pack); extractor: the same
    extractor, run onboard on the crop only; gsd_m: the pixel size in which the RANSAC
    threshold ransac_px is expressed (the pack's map GSD)."""

    def __init__(self, features: MapFeatures, extractor: Extractor, gsd_m: float, crop_features: int = 1500,
                 ransac_px: float = 4.0, ratio: Optional[float] = None, mutual: Optional[bool] = None):
        if features.name != extractor.name:
            raise SkyfixError(f"map features are {features.name}, the extractor is {extractor.name}")
        rule = MATCH_RULES[extractor.name]
        self.features, self.extractor, self.gsd_m = features, extractor, gsd_m
        self.crop_features, self.ransac_px = crop_features, ransac_px
        self.ratio = rule[0] if ratio is None else ratio
        self.mutual = rule[1] if mutual is None else mutual

    @property
    def method(self) -> str:
        return self.extractor.name

    def describe(self, crop_rgb: np.ndarray, heading_known: bool = True) -> Features:
        """The crop's keypoints (once per frame; every candidate reuses them). Without a known
        heading, an extractor that is not rotation invariant describes it at several turns."""
        mask = crop_rgb.sum(axis=2) > 0
        if not heading_known:
            return extract_any_rotation(self.extractor, crop_rgb, 2 * self.crop_features, mask)
        # Describe only the frame's footprint: the black margin of a rectified crop costs a
        # learned extractor as much time as the image does.
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if rows.size == 0:
            return self.extractor.extract(crop_rgb, self.crop_features, mask)
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        f = self.extractor.extract(np.ascontiguousarray(crop_rgb[r0:r1, c0:c1]), self.crop_features,
                                   mask[r0:r1, c0:c1])
        f.xy_px += np.array([c0, r0], np.float32)
        return f

    def match(self, crop_rgb: np.ndarray, crop_gsd_m: float, centre_en: tuple, radius_m: float,
              min_matches: int = 8, described: Optional[Features] = None) -> Optional[Match]:
        """Locate a north-up crop (crop_gsd_m metres per pixel) whose centre lies within
        radius_m of centre_en (east_m, north_m). `described`: the crop's features from
        `describe`, when several places are tried. Returns None when matching fails."""
        f = self.describe(crop_rgb) if described is None else described
        h, w = crop_rgb.shape[:2]
        found = self.match_window(f, (w, h), crop_gsd_m, centre_en,
                                  radius_m + max(h, w) * crop_gsd_m * 0.75, min_matches, consensus=1)
        return found[0] if found else None

    def match_window(self, described: Features, crop_wh: tuple, crop_gsd_m: float, centre_en: tuple,
                     half_m: float, min_matches: int = 8, consensus: int = 2) -> list[Match]:
        """Match the crop's features against the map's in the square of half-side half_m around
        centre_en, once, then fit up to `consensus` geometric consensuses in turn (each on the
        matches the previous ones left): the strongest placement first, then the strongest
        other one, which is what tells a unique place from a repetitive one."""
        if len(described) < min_matches:
            return []
        map_en, map_desc = self.features.near(centre_en[0], centre_en[1], half_m)
        iq, it = match_descriptors(described.desc, map_desc, self.extractor.binary, self.ratio, self.mutual)
        found = []
        while len(found) < consensus and iq.size >= min_matches:
            m, inl = fit_match(described.xy_px[iq], map_en[it], crop_wh, crop_gsd_m, centre_en,
                               self.gsd_m, self.ransac_px)
            if m is None:
                break
            found.append(m)
            iq, it = iq[~inl], it[~inl]
        return found


def fit_match(crop_px: np.ndarray, ground_en_m: np.ndarray, crop_wh: tuple, crop_gsd_m: float,
              centre_en: tuple, gsd_m: float, ransac_px: float) -> tuple[Optional[Match], Optional[np.ndarray]]:
    """The geometry step, written once: matched crop pixels (N x 2, col,row) and their map
    points (N x 2, east_m,north_m) -> where the crop centre lies, its rotation and scale.

    The crop is rectified north-up from the telemetry, so crop -> map is a similarity (rotation,
    scale, shift: 4 degrees of freedom); fitting only that, not a homography (8), needs two
    points per RANSAC sample and lets chance consensus stay small, which is what makes a match
    with few inliers across dates trustworthy. The residual perspective of an attitude error is
    what camera resection (edge/pose.py) then takes out. Both sides are expressed in map pixels
    (gsd_m) around centre_en, so ransac_px means the same for every extractor.
    Returns (Match, boolean inlier mask over the N pairs), or (None, None) on failure."""
    s = crop_gsd_m / gsd_m
    ce, cn = centre_en
    src = crop_px.astype(np.float32) * s
    dst = np.column_stack([(ground_en_m[:, 0] - ce) / gsd_m, (cn - ground_en_m[:, 1]) / gsd_m]).astype(np.float32)
    a, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=ransac_px,
                                          maxIters=2000, confidence=0.999, refineIters=10)
    if a is None or mask is None or int(mask.sum()) < 3:
        return None, None
    inl = mask.ravel().astype(bool)
    proj = src[inl] @ a[:, :2].T + a[:, 2]
    rms = float(np.sqrt(np.mean(np.sum((proj - dst[inl]) ** 2, axis=1))))
    w, h = crop_wh
    centre = a[:, :2] @ np.array([(w - 1) / 2 * s, (h - 1) / 2 * s]) + a[:, 2]
    return Match(float(ce + centre[0] * gsd_m), float(cn - centre[1] * gsd_m), int(inl.sum()), len(src), rms,
                 float(np.degrees(np.arctan2(a[1, 0], a[0, 0]))), float(np.hypot(a[0, 0], a[1, 0])),
                 crop_px=crop_px[inl].astype(np.float32), ground_en_m=ground_en_m[inl].astype(np.float64)), inl
