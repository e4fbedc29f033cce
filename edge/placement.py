"""The navigator's placement stage: where the vehicle is, from one frame's map match, and the
integrity tests of the image against the telemetry (edge/navigator.py runs it after the
refinement).

Two estimates with independent errors: the match centre minus the crop's offset from the nadir,
which the telemetry's tilt sets, and camera resection from the image alone (edge/pose.py). They
are tested against each other; a disagreement is counted, said, and remembered, and the image
alone places the vehicle only where it is well determined. A confident wrong fix is the worst
failure there is: where neither can be trusted, no fix.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from skyfix.contracts import Reason
from skyfix.edge.accuracy import slide_m
from skyfix.edge.camera import CropMap
from skyfix.edge.pose import MIN_POINTS as MIN_RESECT_POINTS, resect
from skyfix.edge.refine import Match

if TYPE_CHECKING:
    from skyfix.edge.heights import CropPose

log = logging.getLogger("skyfix.nav")

@dataclass(frozen=True)
class Placement:
    """The vehicle placed from one frame's match: (east_m, north_m) with a 1-sigma per-axis
    error sigma_m, the match's rotation (the telemetry heading's error, rad), and whether the
    telemetry's attitude agreed with the image."""

    east_m: float
    north_m: float
    turn_rad: float
    sigma_m: float
    attitude_agrees: bool
    notes: list
    resected_tilt_rad: Optional[tuple] = None  # (roll, pitch) from resection with enough points
    on_terrain: bool = False  # resected from points whose heights the pack's terrain gives


# Image against telemetry (Placer.place): chi-square, 2 degrees of freedom.
ATTITUDE_AGREE_D2 = 13.8   # 99.9 %: agreeing placements are rejected once in a thousand
ATTITUDE_DOUBT_S = 10.0    # after a disagreement, the telemetry tilt is trusted only to it this long
MEASUREMENT_FLOOR_PX = 1.0  # the least 1-sigma per axis a map match claims, map pixels


class Placer:
    """Places the vehicle from a match. cfg: NavConfig; camera: PinholeCamera; gsd_m: the map's
    metres per pixel; terrain: the pack's Terrain or None; heights: GroundHeights; accuracy:
    AccuracyBudget (the ground's shared error is set per placement); refine_size_m: the side of
    the refinement crop; integrity: the navigator's event Counter (shared with its other stages)."""

    def __init__(self, cfg, camera, gsd_m: float, terrain, heights, accuracy, refine_size_m: float,
                 integrity: Counter):
        self.cfg, self.camera, self.gsd_m, self.terrain = cfg, camera, gsd_m, terrain
        self.heights, self.accuracy, self.refine_size_m, self.integrity = heights, accuracy, refine_size_m, integrity
        self.attitude_doubt: Optional[tuple] = None  # (t_s, deg) of the last attitude disagreement
        self._integrity_logged_s = -1e9

    def reject(self, best: Optional[Match], runner_up: Optional[Match], pose: CropPose):
        """(Reason, detail) when the match is not a usable measurement, else None."""
        cfg = self.cfg
        if best is None:
            return Reason.NO_MATCH, "refinement found no consistent keypoints near the candidates"
        if best.inliers < cfg.min_inliers_tracking or best.inliers < cfg.min_inlier_ratio * best.matches:
            return Reason.WEAK_MATCH, f"{best.inliers} inliers of {best.matches} matches"
        # A second place is a rival only when it is itself above chance (min_inliers_tracking).
        if runner_up is not None and runner_up.inliers >= max(cfg.ambiguity_ratio * best.inliers,
                                                              cfg.min_inliers_tracking):
            far_m = math.hypot(runner_up.east_m - best.east_m, runner_up.north_m - best.north_m)
            return Reason.AMBIGUOUS, (f"{best.inliers} inliers here, {runner_up.inliers} at another "
                                      f"place {far_m:.0f} m away")
        if pose.heading_known and abs(best.rotation_deg) > cfg.max_rotation_deg:
            self.integrity["heading disagrees with the image"] += 1
            return Reason.IMPLAUSIBLE, f"rotated {best.rotation_deg:.0f} deg against the known heading"
        if pose.height_known and abs(best.scale - 1) > cfg.max_scale_error:
            self.integrity["height disagrees with the image"] += 1
            return Reason.IMPLAUSIBLE, f"scale {best.scale:.2f} against the known height"
        return None

    def place(self, match: Match, pose: CropPose, offset_en: tuple, t_s: float, crop_map: CropMap):
        """Where the vehicle is: a Placement, or (Reason, detail) when it cannot be placed with
        confidence.

        Two estimates with independent errors: the match centre minus the crop's offset from
        the nadir, which the telemetry's tilt sets (agl * tan(tilt error): 2 m per degree at
        120 m), and camera resection from the image alone (edge/pose.py, its covariance from the
        fit). They are first tested against each other (chi-square on their difference): when
        they agree they are combined by their covariances; when they do not, the telemetry's
        attitude is wrong (an autopilot's estimate drifting in wind), the resected position
        stands alone where it is well determined, and the fix is withheld where it is not.
        Fusing them regardless leans on the wrong attitude: with a 10 deg roll error over the
        Colorado map the fused fixes were 9-12 m off claiming 1.7 m, the resected ones 1-3 m."""
        cfg = self.cfg
        turn = math.radians(match.rotation_deg)  # the crop turns on the map by minus the yaw error
        fit_m = 2.0 * match.rms_px * self.gsd_m / math.sqrt(max(match.inliers, 1))
        # A floor of one map pixel: keypoints are placed to about a pixel on the map. Measured per
        # axis on the Colorado flights of `skyfix bench integrity` (flat DEM, map as its own
        # truth): error std 0.33-0.46 m at 0.46 m/px, in every row but the first frames of a
        # roll bias (docs/integrity.md, "What the accuracy means").
        floor_m = MEASUREMENT_FLOOR_PX * self.gsd_m
        tilt_en, tilt_var = self._tilt_placement(match, pose, offset_en, turn, fit_m, t_s, crop_map.h is None)
        cp, on_terrain = self._resect(match, pose, crop_map) if cfg.resect_camera else (None, False)
        ground_m = self.accuracy.ground_m(pose.agl_m * match.scale, on_terrain, t_s)
        if cp is None:
            self.accuracy.set_ground(ground_m)
            return Placement(float(tilt_en[0]), float(tilt_en[1]), turn, math.sqrt(tilt_var + floor_m ** 2), True, [])
        resected_tilt = cp.attitude_rad()[:2] if cp.n_points >= cfg.resect_alone_min_points else None
        resect_cov = cp.cov_en_m2 + np.eye(2) * fit_m ** 2
        resect_en = np.array([cp.east_m, cp.north_m])
        diff = tilt_en - resect_en
        d2 = float(diff @ np.linalg.solve(resect_cov + np.eye(2) * tilt_var, diff))
        if d2 <= ATTITUDE_AGREE_D2:
            resect_info = np.linalg.inv(resect_cov)
            cov = np.linalg.inv(resect_info + np.eye(2) / tilt_var)
            en = cov @ (resect_info @ resect_en + tilt_en / tilt_var)
            sigma_m = math.sqrt(float(np.linalg.eigvalsh(cov).max()) + floor_m ** 2)
            placed = Placement(float(en[0]), float(en[1]), turn, sigma_m, True, [], resected_tilt, on_terrain)
        else:
            placed = self._attitude_disagrees(cp, resect_cov, pose, float(np.hypot(*diff)), turn, floor_m, t_s)
            if isinstance(placed, Placement):
                placed = dataclasses.replace(placed, on_terrain=on_terrain)
        # Errors consecutive fixes share: the ground's, the placements' disagreement where the
        # ground is unknown (the same hills stay under consecutive frames), and the slide of a
        # crop rectified with a tilt the image contradicts (the same until it is trimmed).
        slid_m = 0.0
        if isinstance(placed, Placement) and placed.resected_tilt_rad:
            off_rad = math.hypot(placed.resected_tilt_rad[0] - pose.roll_rad, placed.resected_tilt_rad[1] - pose.pitch_rad)
            slid_m = slide_m(pose.agl_m, off_rad)
        self.accuracy.set_ground(ground_m, diff, on_terrain, slid_m)
        return placed

    def _tilt_placement(self, match: Match, pose: CropPose, offset_en: tuple, turn: float, fit_m: float,
                        t_s: float, orthorectified: bool = False) -> tuple:
        """((east_m, north_m), variance m^2 per axis) of the vehicle placed by the telemetry's
        tilt: the match centre minus the crop's offset from the nadir. orthorectified: the crop
        was rectified over the terrain (no relief left in it)."""
        # Height self-calibration: the match's scale is the true height over the assumed one,
        # and the crop's offset from the nadir grows with the height (agl * tan(off-nadir
        # angle)). With a 25 deg tilted camera and a telemetry height 13 % low, the uncorrected
        # offset put simulated photos up to 11 m off (3.1x their accuracy; `skyfix locate`
        # without resection). Half the correction is kept as its own uncertainty.
        oe, on = offset_en[0] * match.scale, offset_en[1] * match.scale
        height_var = (0.5 * abs(match.scale - 1.0) * math.hypot(*offset_en)) ** 2
        c, s = math.cos(turn), math.sin(turn)
        tilt_en = np.array([match.east_m - (oe * c + on * s), match.north_m - (on * c - oe * s)])
        # Without attitude the crop is taken as level, and the unknown tilt enters (much larger);
        # after the image has recently contradicted the telemetry, that disagreement does.
        tilt_deg = self.cfg.attitude_sigma_deg if pose.attitude_known else self.cfg.unknown_tilt_deg
        if self.attitude_doubt is not None and t_s - self.attitude_doubt[0] <= ATTITUDE_DOUBT_S:
            tilt_deg = max(tilt_deg, self.attitude_doubt[1])
        agl_m = pose.agl_m * match.scale
        relief_var = self._relief_sigma_m(match, agl_m) ** 2 if self.terrain is not None and not orthorectified else 0.0
        return tilt_en, (agl_m * math.tan(math.radians(tilt_deg))) ** 2 + fit_m ** 2 + height_var + relief_var

    def _relief_sigma_m(self, match: Match, agl_m: float) -> float:
        """How far relief can move the crop centre a similarity places (m, 1 sigma) when the crop
        was rectified as a plane (no position yet to orthorectify it over the terrain): the spread
        of the terrain's heights over the refinement crop, seen at the crop edge's off-nadir
        angle. A hillside in such a crop is a perspective view, not a similarity of the map, and
        the fit's centre slides with it."""
        return self.heights.spread_m(match.east_m, match.north_m, self.refine_size_m / 2) * (self.refine_size_m / 2) / max(agl_m, 1.0)

    def _attitude_disagrees(self, cp, resect_cov: np.ndarray, pose: CropPose, apart_m: float, turn: float,
                            floor_m: float, t_s: float):
        """The image and the telemetry's attitude place the vehicle apart beyond their noise:
        counted, said (at a limited rate), remembered for ATTITUDE_DOUBT_S (the tilt-based
        placement of later frames is trusted only to the disagreement), and the resected
        position used alone where it is well determined; otherwise (Reason, detail)."""
        roll, pitch, _ = cp.attitude_rad()
        d_roll, d_pitch = math.degrees(pose.roll_rad - roll), math.degrees(pose.pitch_rad - pitch)
        tilt_off_deg = math.hypot(d_roll, d_pitch)
        what = (f"telemetry attitude off by roll {d_roll:+.1f} / pitch {d_pitch:+.1f} deg (image); "
                f"it would move the fix {apart_m:.0f} m")
        if tilt_off_deg > self.cfg.max_attitude_disagreement_deg:
            # No flying autopilot is that wrong; a planar resection has a mirror solution (IPPE's
            # second pose), which a weak or clustered match can pick. Neither is believed.
            self.integrity["withheld: resection implausible"] += 1
            return Reason.IMPLAUSIBLE, f"{what}: beyond any autopilot's error, the resection is not believed"
        self.attitude_doubt = (t_s, max(tilt_off_deg, self.cfg.attitude_sigma_deg))
        self.integrity["attitude disagrees with the image"] += 1
        self._log_integrity(what)
        sigma_m = math.sqrt(float(np.linalg.eigvalsh(resect_cov).max()) + floor_m ** 2)
        if cp.n_points < self.cfg.resect_alone_min_points or sigma_m > self.cfg.resect_alone_max_sigma_m:
            self.integrity["withheld: neither attitude can be trusted"] += 1
            return Reason.IMPLAUSIBLE, (f"{what}, and the image alone does not settle it "
                                        f"({cp.n_points} points, {sigma_m:.1f} m)")
        self.integrity["placed by the image alone"] += 1
        return Placement(cp.east_m, cp.north_m, turn, sigma_m, False, [what + ": placed by the image alone"],
                         (roll, pitch))

    def _log_integrity(self, what: str) -> None:
        now = time.monotonic()
        if now - self._integrity_logged_s >= 2.0:
            self._integrity_logged_s = now
            log.warning("%s (%s so far)", what, dict(self.integrity))

    def _resect(self, match: Match, pose: CropPose, crop_map: CropMap):
        """(camera pose from the match's inliers, or None (too few, or a height that contradicts
        the telemetry's); whether the terrain's heights were used).

        On terrain the points are 3-D (their heights from the pack's DEM) and the camera's height
        above the datum, less the telemetry's height over the take-off point, is a sample of
        the take-off point's datum height (datum_offset_m)."""
        if match.crop_px is None:
            return None, False
        image_px = crop_map.frame_px(match.crop_px)
        heights = None
        if self.terrain is not None:
            heights = self.terrain.height_m(match.ground_en_m[:, 0], match.ground_en_m[:, 1])
            known = np.isfinite(heights)
            if known.sum() < max(MIN_RESECT_POINTS, 0.8 * len(heights)):  # off the DEM: flat ground
                heights = None
            else:
                image_px, heights = image_px[known], heights[known]
                match = dataclasses.replace(match, ground_en_m=match.ground_en_m[known])
        cp = resect(self.camera, image_px, match.ground_en_m, heights)
        if cp is None:
            return None, False
        agl_m = cp.up_m
        if heights is not None:
            ground = self.terrain.height_at(cp.east_m, cp.north_m)
            agl_m = cp.up_m - (ground if ground is not None else float(np.median(heights)))
            if pose.rel_m is not None and cp.n_points >= self.cfg.resect_alone_min_points:
                if not self.heights.learn_datum(cp.up_m, pose.rel_m):  # nothing to check the height against yet
                    return cp, True
        if abs(agl_m / pose.agl_m - 1) > self.cfg.max_scale_error:
            self.integrity["height disagrees with resection"] += 1
            return None, False
        return cp, heights is not None
