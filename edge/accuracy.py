"""The navigator's accuracy stage: the errors consecutive map fixes share, added to every
published accuracy (docs/integrity.md, "What the accuracy means").

The filter takes fixes as independent and would average a shared error away, so these terms are
kept here and added to its covariance when a fix is published: the map's own error, the ground's
under the last placement (the terrain's vertical error, or the slope and relief allowed for over
ground taken as flat), the placements' disagreement where the ground is unknown, the slide of a
crop rectified with a tilt the image contradicts, and the camera clock's uncertainty at speed.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Optional

import numpy as np

SCALES_KEPT = 30           # match scales kept for the height's error (about 10 s of frames)
SCALE_NOISE = 0.05         # |match scale - 1| a right telemetry height shows (its own error)
ALONE_TILT_SHARE = 0.2     # of height x tan(tilt error): the slide of a position resected from a crop rectified that wrong


class AccuracyBudget:
    """The shared errors, 1 sigma per axis (m). cfg: NavConfig (map_bias_m, ground_slope_deg,
    time_offset_sigma_s); map_accuracy_m: the pack's stated map accuracy or None; terrain: the
    pack's Terrain or None; refine_size_m: the side of the matched area; window_s: how far back
    the matches' scales speak for the height's error."""

    def __init__(self, cfg, map_accuracy_m: Optional[float], terrain, refine_size_m: float, window_s: float):
        self.cfg, self.terrain, self.refine_size_m, self.window_s = cfg, terrain, refine_size_m, window_s
        self.map_stated = map_accuracy_m is not None
        self.map_bias_m = cfg.map_bias_m if map_accuracy_m is None else map_accuracy_m
        self.ground_bias_m = 0.0  # under the last placement
        self.scales_seen: deque = deque(maxlen=SCALES_KEPT)  # (t_s, match scale): the height's error, as the map says

    # ---- what a placement leaves shared -------------------------------------------------------
    def observe_scale(self, t_s: float, scale: float) -> None:
        self.scales_seen.append((t_s, scale))

    def height_error_frac(self, t_s: float) -> float:
        """|median match scale - 1| over the matches of the last window_s: how far the map says
        the telemetry's height is off the ground's, as a share of it. The median, not one match:
        a cross-date match's scale alone is off by several per cent either way."""
        recent = [sc for t, sc in self.scales_seen if 0 <= t_s - t <= self.window_s]
        return abs(float(np.median(recent)) - 1.0) if recent else 0.0

    def ground_m(self, agl_m: float, on_terrain: bool, t_s: float) -> float:
        """Per-axis 1-sigma error (m) the ground shares between consecutive placements from
        `agl_m` over it. On the terrain: its vertical error (the pack's vertical_accuracy_m)
        between the middle and the edge of the matched area looks to resection like a tilt of
        the ground, which moves the camera by agl x error / the area's half side. Taken as
        flat: height x tan(nav.ground_slope_deg), and the relief the image shows: the matches'
        scale says the ground is height_error_frac x height off the take-off point's (beyond
        SCALE_NOISE, the telemetry height's own error), and where the ground is that far off its
        slopes and the parallax of its hills move the fit as far. Over 150 m hills without a DEM,
        fixes 30-40 m off claimed 12 m without this term."""
        if on_terrain:
            return agl_m * self.terrain.vertical_accuracy_m / (self.refine_size_m / 2)
        relief_m = max(self.height_error_frac(t_s) - SCALE_NOISE, 0.0) * agl_m
        return math.hypot(agl_m * math.tan(math.radians(self.cfg.ground_slope_deg)), relief_m)

    def set_ground(self, ground_m: float, diff_en: Optional[np.ndarray] = None, on_terrain: bool = False,
                   slide_m: float = 0.0) -> None:
        """The shared ground error after a placement: the ground's (ground_m), the placements'
        disagreement diff_en (m) where the ground is unknown (`unknown_ground_m`), and a slide."""
        unknown_m = 0.0 if diff_en is None else unknown_ground_m(diff_en, on_terrain)
        self.ground_bias_m = math.hypot(ground_m, unknown_m, slide_m)

    # ---- what is published --------------------------------------------------------------------
    def published_m(self, drms_m: float, speed_m_s: float = 0.0) -> float:
        """A published horizontal accuracy (DRMS, m): `drms_m` with the shared errors added, per
        axis: the map's own bias and the ground's under the last placement; and along the track,
        what the camera clock's uncertainty against the telemetry's (nav.time_offset_sigma_s)
        does at speed_m_s."""
        clock_m = speed_m_s * self.cfg.time_offset_sigma_s
        return math.sqrt(drms_m ** 2 + 2 * self.map_bias_m ** 2 + 2 * self.ground_bias_m ** 2 + clock_m ** 2)

    def terms(self) -> dict:
        """What every published accuracy includes beside the fit and the filter, for the JSON
        and the start-up line: the map's bias (m per axis, and whose figure it is), the ground's
        (the terrain's vertical accuracy, or the slope allowed for over flat ground) and the
        camera clock's uncertainty."""
        terms = {"map_bias_m": self.map_bias_m,
                 "map_bias_from": "the pack (stated)" if self.map_stated else "nav.map_bias_m (the pack states none)",
                 "time_offset_sigma_s": self.cfg.time_offset_sigma_s}
        if self.terrain is not None:
            terms.update(ground="terrain", terrain_vertical_accuracy_m=self.terrain.vertical_accuracy_m,
                         terrain_vertical_accuracy_stated=self.terrain.vertical_accuracy_stated)
        else:
            terms.update(ground="flat ground assumed", ground_slope_deg=self.cfg.ground_slope_deg)
        return terms

    def describe(self) -> str:
        """One line saying what the published accuracy allows for (said at start and in summaries)."""
        t = self.terms()
        ground = (f"terrain heights +-{t['terrain_vertical_accuracy_m']:g} m "
                  f"({'stated' if t['terrain_vertical_accuracy_stated'] else 'assumed'})" if t["ground"] == "terrain" else
                  f"flat ground assumed: slopes of {t['ground_slope_deg']:g} deg allowed for (nav.ground_slope_deg; "
                  "a DEM in the pack, or 0 over known-flat ground, removes it)")
        return (f"stated accuracy includes the map's own error {t['map_bias_m']:g} m per axis ({t['map_bias_from']}), "
                f"{ground}, and a camera clock uncertain by {1e3 * t['time_offset_sigma_s']:.0f} ms")


def unknown_ground_m(diff_en: np.ndarray, on_terrain: bool) -> float:
    """Without the ground's heights, the two placements' disagreement (diff_en, m) cannot be put
    down to either: a wrong attitude over flat ground, or a right one over a slope, which
    resection reads as a tilt and follows by height x the slope. The accuracy then covers both:
    half their distance, per axis (0 on the terrain, where resection knows the ground), added to
    the ground's shared bias. Over synthetic hills without a DEM, without it, the fixes were tens
    of metres off while claiming a few (docs/simulator.md, "Relief")."""
    return 0.0 if on_terrain else float(np.hypot(*diff_en)) / 2


def slide_m(agl_m: float, tilt_off_rad: float) -> float:
    """How far (m, 1 sigma per axis) a position resected from a frame can slide because its crop
    was rectified with a tilt `tilt_off_rad` away from the image's: the crop is then not a
    similarity of the map, the points that match sit in a band of it and the fit drifts with the
    tilt error. The same tilt error stays until it is trimmed, so consecutive fixes share it.
    ALONE_TILT_SHARE of height x tan(tilt error): 3.5-4.5 m at 10 deg of roll at 120 m (bench
    integrity's roll-bias row, before the trim took the bias out) while the fit claimed about
    1 m; a tenth of a metre at the 0.3 deg a trimmed tilt keeps."""
    return ALONE_TILT_SHARE * agl_m * math.tan(tilt_off_rad)
