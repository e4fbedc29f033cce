"""Visual odometry between consecutive frames: how far the camera moved, in metres, from the
images alone, with the same local features and geometry step as the map matching.

Nadir frames at a known height: the previous frame is treated as a small "map" whose pixels are
agl / f metres apart (x right, y down -> east-like, north-like in the previous camera's axes),
the current frame is matched against it, and `refine.fit_match` places the current image centre
in it. The shift is therefore in the previous camera's axes (rotate by its heading for east /
north), and the rotation is the yaw change between the frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from skyfix.edge.camera import PinholeCamera
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
