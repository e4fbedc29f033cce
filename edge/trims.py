"""The trims of the telemetry the image teaches: the heading (HeadingCheck) and the roll and
pitch (AttitudeTrim, with the check that a correction improves the match it was learned from,
TiltTrimCheck). Stages of the navigator (edge/navigator.py), each with its own state.
"""
from __future__ import annotations

import logging
import math
from collections import Counter, deque
from typing import TYPE_CHECKING, Optional

import numpy as np

from skyfix.edge.camera import rectify_mapped
from skyfix.edge.refine import Match

if TYPE_CHECKING:
    from skyfix.edge.heights import CropPose

log = logging.getLogger("skyfix.nav")


TRIM_STEP_DEG = 0.5  # the largest heading trim one frame may make


class HeadingCheck:
    """Does the telemetry heading agree with the image? A flipped or mislogged yaw or a bad
    compass would otherwise refuse every frame. Strong matches that all sit at another rotation
    are votes; `votes_needed` that agree within `agree_deg` set a correction applied to the
    telemetry yaw from then on. While no track is confirmed, `misses_to_search` frames in a row
    with no usable match at the telemetry heading make every other frame use the rotation search
    (extractors that are not rotation invariant cannot see the rotation otherwise); the other
    frames keep the telemetry heading, so a correct heading over hard ground loses little.

    Small errors are trimmed too: each strong match of a confirmed track moves the correction by
    `trim_gain` of the rotation it still sees (an integrator, so a steady compass or EKF yaw
    error of a few degrees is taken out within a few frames). The position never needed it (the
    match's rotation is applied to the crop's offset), but the odometry's displacement and the
    attitude's thrust direction are turned by the yaw: in ArduCopter SITL with velocity fused
    the EKF's yaw drifted 2.5-3 deg, and odometry rotated by it gave the autopilot back its own
    error, 0.4 m/s across the track at 10 m/s."""

    def __init__(self, max_rotation_deg: float, votes_needed: int = 3, agree_deg: float = 10.0,
                 misses_to_search: int = 10, trim_gain: float = 0.0):
        self.max_rotation_deg, self.votes_needed, self.agree_deg = max_rotation_deg, votes_needed, agree_deg
        self.misses_to_search, self.trim_gain = misses_to_search, trim_gain
        self.reset()
        self.corrections = 0  # times the image's votes turned the telemetry heading

    @property
    def search(self) -> bool:
        """Search the rotation on this frame (every other frame once misses have piled up)."""
        return self.misses >= self.misses_to_search and self.misses % 2 == 0

    def observe(self, best: Optional[Match], strong_inliers: int, track_confirmed: bool) -> str:
        """Take one frame's best match; returns a note ('' if none). A confirmed track has
        already shown that the heading agrees with the image: misses then do not count."""
        if best is None or best.inliers < strong_inliers:
            self.misses = 0 if track_confirmed else self.misses + 1
            return "no match at the telemetry heading: rotation searched" if self.search else ""
        if abs(best.rotation_deg) <= self.max_rotation_deg:
            self.misses, self.votes = 0, []
            return ""
        self.votes = (self.votes + [best.rotation_deg])[-self.votes_needed:]
        spread = max(abs((a - b + 180) % 360 - 180) for a in self.votes for b in self.votes)
        if len(self.votes) < self.votes_needed or spread > self.agree_deg:
            return f"the image says the heading is off by {best.rotation_deg:.0f} deg ({len(self.votes)}/{self.votes_needed})"
        turn = math.radians(float(np.mean(self.votes)))
        self.offset_rad = (self.offset_rad + turn + math.pi) % (2 * math.pi) - math.pi
        self.misses, self.votes = 0, []
        self.corrections += 1
        log.warning("telemetry heading contradicted by the image: corrected by %.0f deg", math.degrees(self.offset_rad))
        return f"telemetry heading off by {math.degrees(turn):.0f} deg: corrected from the next frame"

    def reset(self) -> None:
        """Forget the correction, the votes and the misses (a new photo, a new flight)."""
        self.offset_rad, self.votes, self.misses = 0.0, [], 0

    def trim(self, rotation_deg: float) -> None:
        """Take `trim_gain` of a trusted match's remaining rotation into the correction, at most
        TRIM_STEP_DEG a frame (the caller trims only with matches the confirmed track agrees
        with, whose attitude the image did not contradict)."""
        if self.trim_gain > 0 and abs(rotation_deg) <= self.max_rotation_deg:
            step_deg = min(max(self.trim_gain * rotation_deg, -TRIM_STEP_DEG), TRIM_STEP_DEG)
            self.offset_rad += math.radians(step_deg)


TILT_TRIM_STEP_DEG = 1.0   # the largest roll/pitch trim one frame may make
TILT_TRIM_MAX_DEG = 20.0   # the largest roll/pitch correction ever held
TILT_TRIM_WINDOW = 6       # resected tilts a trim is judged on
TILT_TRIM_MIN_DEG = 0.5    # a mean disagreement under this is taken as the resection's own noise
# The trimmed crop must match better: this many times the inliers (and 2 more), or as many (within
# TILT_TRIM_SAME) with a reprojection error this much smaller (near the end of a trim the inliers
# saturate, while a crop still a degree or two off stays a slight keystone of the map).
TILT_TRIM_BETTER = 1.05
TILT_TRIM_SAME = 0.97
TILT_TRIM_SHARPER = 0.9


class AttitudeTrim:
    """Roll and pitch corrections to the telemetry, learned from camera resection. The
    autopilot's attitude estimate drifts in wind (10 deg of roll in ArduCopter SITL) and a camera
    is never mounted exactly level; a crop rectified with a wrong tilt is not a similarity of the
    map, so fewer points match and those that do sit in a band of it, and the resected position
    drifts by metres (3-4 m at 10 deg over the Colorado map). Trimmed, the crop is rectified as
    the image says the camera was tilted.

    The trim must not move the fix where the image's tilt is not a tilt: resection over
    buildings, trees and shadows taken as flat ground (a cross-date map: structure leaning
    differently on each date) reads a tilt that changes as they pass. So a trim is only proposed
    when the last TILT_TRIM_WINDOW resected tilts (the caller gives only those from points whose
    heights the pack's terrain knows, of matches the confirmed track agrees with) disagree with
    the telemetry consistently: their mean beyond TILT_TRIM_MIN_DEG and beyond three standard
    errors of their own spread. The caller then checks that the proposed correction improves the
    match it was learned from before `apply`ing a step of `gain` of it (at most
    TILT_TRIM_STEP_DEG a frame)."""

    def __init__(self, gain: float, window: int = TILT_TRIM_WINDOW):
        self.gain = gain
        self.offset_rad = np.zeros(2)
        self.residuals: deque = deque(maxlen=window)  # (roll, pitch) the image saw beyond the trimmed telemetry, rad
        self.refused = 0  # proposals whose correction did not improve the match

    def observe(self, roll_rad: float, pitch_rad: float, resected_roll_rad: float, resected_pitch_rad: float) -> None:
        """Take one frame's resected tilt against the (trimmed) tilt it was cropped with."""
        if self.gain > 0:
            self.residuals.append(np.array([resected_roll_rad - roll_rad, resected_pitch_rad - pitch_rad]))

    def proposal(self) -> Optional[np.ndarray]:
        """(roll, pitch) correction (rad) the window supports, per axis where it is consistent;
        None while the window is not full or nothing in it stands out from its noise."""
        if self.gain <= 0 or len(self.residuals) < self.residuals.maxlen:
            return None
        r = np.array(self.residuals)
        mean = r.mean(axis=0)
        stderr = r.std(axis=0, ddof=1) / math.sqrt(len(r))
        consistent = np.abs(mean) > np.maximum(3 * stderr, math.radians(TILT_TRIM_MIN_DEG))
        return np.where(consistent, mean, 0.0) if consistent.any() else None

    def refuse(self) -> None:
        """The proposed correction did not improve the match: forget the window's evidence."""
        self.residuals.clear()
        self.refused += 1

    def apply(self, correction_rad: np.ndarray) -> str:
        """Move the trim by `gain` of an approved correction (at most TILT_TRIM_STEP_DEG); the
        window's residuals shrink by the step (later crops are rectified with it). A note when
        the trim has passed a whole degree."""
        before = np.degrees(np.abs(self.offset_rad)).astype(int)
        step = np.clip(self.gain * correction_rad, -math.radians(TILT_TRIM_STEP_DEG), math.radians(TILT_TRIM_STEP_DEG))
        limit = math.radians(TILT_TRIM_MAX_DEG)
        self.offset_rad = np.clip(self.offset_rad + step, -limit, limit)
        self.residuals = deque((r - step for r in self.residuals), maxlen=self.residuals.maxlen)
        roll_deg, pitch_deg = np.degrees(self.offset_rad)
        if (np.degrees(np.abs(self.offset_rad)).astype(int) > before).any():
            return f"telemetry tilt trimmed by roll {roll_deg:+.1f} / pitch {pitch_deg:+.1f} deg (image)"
        return ""


class TiltTrimCheck:
    """The tilt trim's stage: gives AttitudeTrim the resected tilts and applies a correction only
    when the frame's refinement crop, rectified with it, matches the map better than as it was.
    matcher: the main MapMatcher; heights: GroundHeights (the crop over the terrain); integrity:
    the navigator's event Counter."""

    def __init__(self, trim: AttitudeTrim, matcher, camera, gsd_m: float, refine_size_m: float, refine_px: int,
                 heights, integrity: Counter):
        self.trim, self.matcher, self.camera, self.gsd_m = trim, matcher, camera, gsd_m
        self.refine_size_m, self.refine_px, self.heights, self.integrity = refine_size_m, refine_px, heights, integrity

    def offer(self, image: np.ndarray, pose: "CropPose", best: Match, resected_tilt_rad: tuple,
              described=None) -> str:
        """Give the tilt trim one resected tilt (from known heights, a match the track agrees
        with); when it proposes a correction, take a step of it only if the frame's refinement
        crop, rectified with the correction, matches the map better than as it was (AttitudeTrim:
        an image that only seems tilted does not improve). described: the crop's features as it
        was, when the refinement already described them with the main matcher."""
        trim = self.trim
        trim.observe(pose.roll_rad, pose.pitch_rad, *resected_tilt_rad)
        correction = trim.proposal()
        if correction is None:
            return ""
        now = self._match_near(described if described is not None else self._describe_tilted(image, pose, (0.0, 0.0)),
                               best)
        trimmed = self._match_near(self._describe_tilted(image, pose, correction), best)
        more = trimmed[0] >= max(TILT_TRIM_BETTER * now[0], now[0] + 2)
        sharper = trimmed[0] >= TILT_TRIM_SAME * now[0] and trimmed[1] <= TILT_TRIM_SHARPER * now[1]
        if not (more or sharper):
            trim.refuse()
            self.integrity["tilt trim refused: the image did not match better"] += 1
            return ""
        return trim.apply(correction)

    def _describe_tilted(self, image: np.ndarray, pose: "CropPose", tilt_rad):
        """The main matcher's features of the frame's refinement crop rectified with the pose's
        tilt plus tilt_rad (roll, pitch)."""
        wide = rectify_mapped(image, self.camera, pose.roll_rad + tilt_rad[0], pose.pitch_rad + tilt_rad[1],
                              pose.yaw_rad, pose.agl_m, self.refine_size_m, self.refine_px, self.heights.ground_depth(pose.ground, pose.agl_m, pose.agl_on_terrain))[0]
        return self.matcher.describe(wide, True)

    def _match_near(self, described, best: Match) -> tuple:
        """(inliers, reprojection RMS px) of a refinement crop's features matched against the map
        around `best`; (0, inf) when nothing matches."""
        half_m = self.refine_size_m * 0.75 + 10.0
        matches = self.matcher.match_window(described, (self.refine_px, self.refine_px), self.gsd_m,
                                            (best.east_m, best.north_m), half_m)
        top = max(matches, key=lambda m: m.inliers, default=None)
        return (0, math.inf) if top is None else (top.inliers, top.rms_px)
