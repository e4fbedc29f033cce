"""Routes for the simulated flight: straight, lawnmower survey or given waypoints, with rounded
corners, flown at constant speed. Points are (east_m, north_m) in the pack's local frame."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from skyfix.config import SimConfig
from skyfix.errors import SkyfixError


def footprint_margin_m(cam, agl_m: float, tilt_deg: float = 0.0) -> float:
    """How far inside the map's edge a route must stay for the whole camera footprint (half its
    diagonal at agl_m, plus the shift of a tilt of tilt_deg) to stay on the map."""
    half_diag_m = agl_m / cam.fx_px * math.hypot(cam.width_px, cam.height_px) / 2
    return half_diag_m + agl_m * math.tan(math.radians(tilt_deg))


def make_route(cfg: SimConfig, bounds_en: tuple, margin_m: float) -> np.ndarray:
    """Waypoints K x 2 (east_m, north_m) inside bounds shrunk by margin_m."""
    e0, n0, e1, n1 = bounds_en
    e0, n0, e1, n1 = e0 + margin_m, n0 + margin_m, e1 - margin_m, n1 - margin_m
    if e1 <= e0 or n1 <= n0:
        raise SkyfixError("the map is too small for a route at this altitude")
    if cfg.route == "waypoints":
        wp = np.asarray(cfg.waypoints_en_m, float)
        if wp.ndim != 2 or wp.shape[1] != 2 or len(wp) < 2:
            raise SkyfixError("sim.waypoints_en_m needs at least two [east, north] pairs")
        return wp
    if cfg.route == "straight":
        # Along the diagonal through the centre, as long as fits (up to length_m).
        d = np.array([e1 - e0, n1 - n0]) / np.hypot(e1 - e0, n1 - n0)
        c = np.array([(e0 + e1) / 2, (n0 + n1) / 2])
        half = min(cfg.length_m, np.hypot(e1 - e0, n1 - n0)) / 2
        return np.array([c - d * half, c + d * half])
    if cfg.route == "lawnmower":
        # East-west legs `leg_spacing_m` apart from the north edge down, as many passes as
        # length_m needs (long flights), each pass joined to the next by a straight transit back
        # to the north-west corner, truncated at length_m. (The next pass used to be this one
        # reversed: a 180 deg reversal on the last leg that no corner rounding can fly, the
        # vehicle's velocity flipping in one step; the soak's "U-turn" errors came from it.)
        norths = np.arange(n1, n0 - 1e-6, -cfg.leg_spacing_m)
        if len(norths) < 2:
            norths = np.array([n1, n0])
        pts = []
        for i, n in enumerate(norths):
            pts += [(e0, n), (e1, n)] if i % 2 == 0 else [(e1, n), (e0, n)]
        one_pass = np.array(pts)
        passes, total = [one_pass], float(np.sum(np.hypot(*np.diff(one_pass, axis=0).T)))
        while total * len(passes) < cfg.length_m:
            passes.append(one_pass)
        return truncate(np.concatenate(passes), cfg.length_m)
    raise SkyfixError(f"unknown route '{cfg.route}'; choose straight, lawnmower or waypoints")


def truncate(wp: np.ndarray, length_m: float) -> np.ndarray:
    out, total = [wp[0]], 0.0
    for a, b in zip(wp[:-1], wp[1:]):
        seg = float(np.hypot(*(b - a)))
        if total + seg >= length_m:
            out.append(a + (b - a) * (length_m - total) / seg)
            return np.array(out)
        out.append(b)
        total += seg
    return np.array(out)


def round_corners(wp: np.ndarray, radius_m: float, step_m: float = 2.0) -> np.ndarray:
    """Replace each interior corner by a circular arc of radius_m (a vehicle turns with bounded
    acceleration v^2 / r, it does not pivot). Returns a dense polyline K x 2."""
    out = [wp[0]]
    for a, b, c in zip(wp[:-2], wp[1:-1], wp[2:]):
        u, w = (b - a) / np.linalg.norm(b - a), (c - b) / np.linalg.norm(c - b)
        turn = math.acos(float(np.clip(u @ w, -1, 1)))
        if turn < 1e-3:
            out.append(b)
            continue
        cut = min(radius_m * math.tan(turn / 2), np.linalg.norm(b - a) / 2, np.linalg.norm(c - b) / 2)
        p0, p1 = b - u * cut, b + w * cut
        # Quadratic Bezier through the corner: close to the arc, tangent to both legs.
        for f in np.linspace(0, 1, max(2, int(cut * turn / step_m) + 2)):
            out.append((1 - f) ** 2 * p0 + 2 * (1 - f) * f * b + f ** 2 * p1)
    out.append(wp[-1])
    pts = np.array(out)
    keep = np.concatenate([[True], np.hypot(*np.diff(pts, axis=0).T) > 1e-6])
    return pts[keep]


@dataclass
class Trajectory:
    """Constant-speed flight along waypoints; heading follows the path."""

    waypoints: np.ndarray
    speed_m_s: float
    cum_m: np.ndarray = field(init=False)

    def __post_init__(self):
        seg = np.hypot(*np.diff(self.waypoints, axis=0).T)
        self.cum_m = np.concatenate([[0.0], np.cumsum(seg)])

    @property
    def duration_s(self) -> float:
        return float(self.cum_m[-1] / self.speed_m_s)

    def at(self, t_s: float):
        """(east_m, north_m, yaw_rad) at time t_s."""
        d = float(np.clip(t_s * self.speed_m_s, 0, self.cum_m[-1]))
        i = int(np.clip(np.searchsorted(self.cum_m, d, side="right") - 1, 0, len(self.waypoints) - 2))
        a, b = self.waypoints[i], self.waypoints[i + 1]
        f = (d - self.cum_m[i]) / max(self.cum_m[i + 1] - self.cum_m[i], 1e-9)
        p = a + (b - a) * f
        yaw = math.atan2(b[0] - a[0], b[1] - a[1])  # from north, clockwise
        return float(p[0]), float(p[1]), yaw
