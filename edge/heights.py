"""The navigator's height stage: the camera's height above the ground under it, from the
telemetry and, with terrain in the pack, from the terrain's heights.

The camera's height above the terrain's datum is the telemetry's height over the take-off point
plus the take-off point's datum height: nav.ground_alt_msl_m, then learned from resections on
the terrain (their median: a barometer drifts, one resection can be wrong).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

DATUM_SAMPLES = 15         # resections whose median sets the take-off point's height above the terrain's datum
DATUM_MIN_SAMPLES = 3
HEIGHT_MEMORY_S = 5.0      # a missing height is taken from the last one this long


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


@dataclass
class CropPose:
    """The attitude and height a frame is rectified with, and what had to be assumed."""

    roll_rad: float = 0.0
    pitch_rad: float = 0.0
    yaw_rad: float = 0.0
    agl_m: Optional[float] = None  # height above the ground under the camera (the terrain's where known)
    rel_m: Optional[float] = None  # the telemetry's height (over the take-off point, or a rangefinder's)
    agl_on_terrain: bool = False   # agl_m is over the terrain under the camera (DEM or rangefinder)
    ground: Optional[tuple] = None  # (east_m, north_m, height m) of the terrain where the vehicle is believed
    attitude_known: bool = True
    heading_known: bool = True
    height_known: bool = True
    notes: list = field(default_factory=list)


class GroundHeights:
    """Heights for one track. cfg: NavConfig (fallback_agl_m, ground_alt_msl_m); terrain: the
    pack's Terrain or None."""

    def __init__(self, cfg, terrain):
        self.cfg, self.terrain = cfg, terrain
        self.last_agl: Optional[tuple] = None  # (t_s, agl_m)
        self.datum_offsets: deque = deque(maxlen=DATUM_SAMPLES)
        self.last_alt_msl_m = 0.0  # the altitude a fix is published with

    def telemetry_agl(self, agl_m: Optional[float], t_s: float) -> tuple:
        """(agl_m or None, note): the telemetry's height above the take-off point (m), else a
        recent one, else the fallback."""
        if _finite(agl_m) and 5.0 <= agl_m <= 5000.0:
            self.last_agl = (t_s, agl_m)
            return agl_m, ""
        if self.last_agl and 0.0 <= t_s - self.last_agl[0] <= HEIGHT_MEMORY_S:
            return self.last_agl[1], f"height missing: last value {self.last_agl[1]:.0f} m used"
        if self.cfg.fallback_agl_m > 0:
            return self.cfg.fallback_agl_m, f"height missing: assumed {self.cfg.fallback_agl_m:.0f} m"
        return None, "height missing or implausible: cannot scale the frame"

    def crop_pose(self, tel, t_s: float, where: Callable[[], Optional[tuple]]) -> CropPose:
        """Attitude and height for rectification from the Telemetry `tel` (or None); what is
        missing is assumed and noted. where(): the vehicle's believed (east_m, north_m), or None."""
        pose = CropPose()
        roll, pitch, yaw = (tel.roll_rad, tel.pitch_rad, tel.yaw_rad) if tel else (None, None, None)
        if _finite(roll) and _finite(pitch):
            pose.roll_rad, pose.pitch_rad = roll, pitch
        else:
            pose.attitude_known = False
            pose.notes.append("attitude missing: assumed level")
        if _finite(yaw):
            pose.yaw_rad = yaw
        else:
            pose.heading_known = False
            pose.notes.append("heading missing: rotation searched")
        pose.agl_m, note = self.telemetry_agl(tel.alt_agl_m if tel else None, t_s)
        pose.rel_m = pose.agl_m
        if note:
            pose.height_known = False
            pose.notes.append(note)
        if self.cfg.ground_alt_msl_m is not None and pose.agl_m is not None:
            self.last_alt_msl_m = self.cfg.ground_alt_msl_m + pose.agl_m
        elif tel is not None and _finite(tel.alt_msl_m):
            self.last_alt_msl_m = tel.alt_msl_m
        if self.terrain is not None and pose.agl_m is not None:
            pose.ground = self.ground_under(where())
            if tel is not None and tel.agl_rangefinder:
                pose.agl_on_terrain = True
            else:
                pose.agl_m, pose.agl_on_terrain = self.agl_over_terrain(pose.agl_m, pose.ground, pose.notes)
        return pose

    def datum_offset_m(self) -> Optional[float]:
        """The take-off point's height above the terrain's datum (m): learned from resections
        once there are DATUM_MIN_SAMPLES, else nav.ground_alt_msl_m, else None (not known yet)."""
        if len(self.datum_offsets) >= DATUM_MIN_SAMPLES:
            return float(np.median(self.datum_offsets))
        return self.cfg.ground_alt_msl_m

    def learn_datum(self, camera_up_m: float, rel_m: float) -> bool:
        """A resection on the terrain put the camera `camera_up_m` above the datum while the
        telemetry said `rel_m` over the take-off point: one sample of the datum offset. Returns
        whether the offset was known before it (so the height could be checked against it)."""
        known = self.datum_offset_m() is not None
        self.datum_offsets.append(camera_up_m - rel_m)
        return known

    def agl_over_terrain(self, rel_m: float, ground: Optional[tuple], notes: list) -> tuple:
        """(height above the terrain under the camera m, whether it is): from the telemetry's
        height over the take-off point, the camera's datum height (rel_m + datum_offset_m) minus
        the terrain where the vehicle is believed (`ground`: east, north, height), else minus the
        terrain's median (a lost vehicle: the match's scale and the resection measure the rest;
        not on the terrain). rel_m unchanged while the datum offset is not known, or when the
        result is not a plausible height."""
        offset = self.datum_offset_m()
        if offset is None:
            return rel_m, False
        on_terrain = ground is not None
        agl = rel_m + offset - (ground[2] if on_terrain else self.terrain.median_m)
        if not 5.0 <= agl <= 5000.0:
            notes.append(f"terrain gives {agl:.0f} m above the ground: the telemetry's height used")
            return rel_m, False
        return agl, on_terrain

    def ground_under(self, where: Optional[tuple]) -> Optional[tuple]:
        """(east_m, north_m, terrain height m) at `where` (the vehicle's believed position), or
        None without terrain, a position, or a height there."""
        if self.terrain is None or where is None:
            return None
        height = self.terrain.height_at(*where)
        return None if height is None else (*where, height)

    def ground_depth(self, ground: Optional[tuple], agl_m: float, on_terrain: bool) -> Optional[Callable]:
        """f(east_m, north_m relative to the camera) -> the ground's depth below it (m), from the
        terrain around `ground` (east, north, height), for rectifying the refinement crop over the
        relief; None without a position or a height on the terrain (flat rectification)."""
        if ground is None or not on_terrain:
            return None
        e0, n0, height_m = ground
        camera_up_m = height_m + agl_m
        return lambda de, dn: camera_up_m - self.terrain.height_m(e0 + de, n0 + dn)

    def spread_m(self, east_m: float, north_m: float, half_m: float) -> float:
        """The standard deviation of the terrain's heights (m) over the square of half side
        `half_m` around (east_m, north_m); 0 where the terrain does not say."""
        grid = np.linspace(-half_m, half_m, 7)
        east, north = np.meshgrid(east_m + grid, north_m + grid)
        heights = self.terrain.height_m(east, north)
        heights = heights[np.isfinite(heights)]
        return float(np.std(heights)) if heights.size >= 2 else 0.0
