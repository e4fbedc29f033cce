"""The navigator's search stage: a rectified crop embedded by the drone tower and searched among
the pack's tiles (or a finer level's), as candidate places for the refinement to verify.

While tracking, the search is limited to a window around the track's prediction (the prediction
itself first); a lost vehicle searches everywhere, and the density peak of the best tiles
(edge/coarse.py, seed 003) is looked at first: a guess that orders the search, said, never a fix.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from skyfix.contracts import Reason
from skyfix.edge.camera import MIN_INSIDE_FRAC, lowest_agl_m, rectify


MERGE_GROWTH = 1.2  # a merged search window's half-side: at most this many times its largest window's
HINT_MAX_AGE_S = 1.0  # a position hint (TileSearch.hint_position) older than this is not used


def merge_windows(windows: list[tuple], growth: float = MERGE_GROWTH) -> list[tuple]:
    """Merge overlapping squares (east_m, north_m, half_side_m) into their bounding squares
    while a merged square stays within `growth` times the largest original half-side it holds;
    the first window's group stays first.

    Why bounded: matching a crop against a larger piece of map gives its true matches more
    look-alikes to lose to (the mutual nearest neighbour and the ratio test), so inliers fall.
    Measured on the LEVIR-CD 2 flight (inliers at the true place, per frame of the first 4 s): a
    window of half-side 132 m found 10-27, 172 m about as many, 262 m 5-25, and the whole
    512 m map, which ten global candidates used to merge into, 4-7."""
    out = [[*w, w[2]] for w in windows]  # east, north, half, the largest original half inside
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                (e1, n1, h1, o1), (e2, n2, h2, o2) = out[i], out[j]
                lo_e, hi_e = min(e1 - h1, e2 - h2), max(e1 + h1, e2 + h2)
                lo_n, hi_n = min(n1 - h1, n2 - h2), max(n1 + h1, n2 + h2)
                half = max(hi_e - lo_e, hi_n - lo_n) / 2
                if half <= growth * max(o1, o2):
                    out[i] = [(lo_e + hi_e) / 2, (lo_n + hi_n) / 2, half, max(o1, o2)]
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return [tuple(w[:3]) for w in out]


class TileSearch:
    """pack: the TilePack; embedder: the drone tower; camera: PinholeCamera; cfg: NavConfig
    (top_k, global_max_candidates, coarse_first)."""

    def __init__(self, pack, embedder, camera, cfg):
        self.pack, self.embedder, self.camera, self.cfg = pack, embedder, camera, cfg
        self.coarse: Optional[tuple] = None  # (t_s, CoarsePosition) of the last global search (a lost vehicle)
        # The pack's finest tiles and the lowest height they serve (said when a frame is lower),
        # worked out once: a bisection over headings is not per-frame work.
        self.finest_m = min([pack.tile_size_m, *(lv.tile_size_m for lv in pack.levels)])
        self.finest_from_m = lowest_agl_m(camera, self.finest_m)
        self._hint: Optional[tuple] = None      # (t_s, east_m, north_m, radius_m): hint_position
        self._hint_turn: tuple = (None, False)  # (t_s, whether this frame searches around the hint)
        self.hinted_searches = 0

    def hint_position(self, t_s: float, east_m: float, north_m: float, radius_m: float) -> None:
        """Where another source (the autopilot's GNSS while the watch finds it healthy,
        edge/gnss_guard.py) puts the vehicle at t_s, within radius_m: while skyfix has no track,
        every other frame searches there first instead of everywhere. A hint narrows the search
        and is never a fix: a match near it must pass every check a global one does, and the
        frames between still search everywhere, so a wrong hint (a GNSS already spoofed) costs
        time, not a wrong fix."""
        self._hint = (t_s, east_m, north_m, radius_m)

    def window(self, t_s: float, track_window: Optional[tuple]) -> Optional[tuple]:
        """The search window (east_m, north_m, radius_m) of the frame at t_s: the track's; without
        a track, the hint's on every other frame (None: search everywhere)."""
        if track_window is not None or self._hint is None or abs(t_s - self._hint[0]) > HINT_MAX_AGE_S:
            return track_window
        if self._hint_turn[0] != t_s:
            self._hint_turn = (t_s, not self._hint_turn[1])
            self.hinted_searches += self._hint_turn[1]
        if not self._hint_turn[1]:
            return None
        _, e, n, radius = self._hint
        return e, n, float(np.clip(radius, self.cfg.window_min_m, self.cfg.window_max_m))

    def embed(self, crop: np.ndarray, heading_known: bool) -> np.ndarray:
        """1 x D for a north-up crop; 4 x D (the four right-angle turns) when the heading is unknown."""
        crops = [crop] if heading_known else [np.ascontiguousarray(np.rot90(crop, r)) for r in range(4)]
        return self.embedder.embed(np.stack(crops))

    def finer_level(self, image: np.ndarray, pose, crop: np.ndarray, inside: float) -> tuple:
        """(tile set, crop, covered fraction) of the largest of the pack's finer levels whose
        tile the frame covers at least half of; the main tiles' (pack, crop, inside) if none.
        pose: the CropPose the frame is rectified with (a note is added when a level is used)."""
        for level in self.pack.levels:
            level_crop, level_inside, _ = rectify(image, self.camera, pose.roll_rad, pose.pitch_rad, pose.yaw_rad,
                                                  pose.agl_m, level.tile_size_m,
                                                  int(round(level.tile_size_m / self.pack.map_gsd_m)))
            if level_inside >= MIN_INSIDE_FRAC:
                pose.notes.append(f"searched the {level.tile_size_m:g} m tiles (height {pose.agl_m:.0f} m)")
                return level, level_crop, level_inside
        return self.pack, crop, inside

    def candidates(self, vectors: np.ndarray, t_s: float, window: Optional[tuple], tiles=None) -> list[tuple]:
        """[(east_m, north_m, match_radius_m)], most promising first: the predicted position and
        the best tiles in the track's window (east_m, north_m, radius_m) while tracking, the best
        tiles anywhere when lost (window None). tiles: the tile set searched (the pack's main
        tiles, or a finer level)."""
        tiles = tiles or self.pack
        half = tiles.tile_size_m / 2
        if window is not None:
            e, n, radius = window
            _, ids = tiles.search(vectors, self.cfg.top_k, near=(e, n, radius))
            cands, limit = [(e, n, radius)], self.cfg.top_k + 1
        else:
            scores, ids = tiles.search(vectors, self.cfg.global_max_candidates)
            order = np.argsort(-scores.ravel(), kind="stable")
            scores, ids = scores.ravel()[order], ids.ravel()[order]
            cands, limit = [], self.cfg.global_max_candidates
            if self.cfg.coarse_first:  # the retrieval density peak is looked at first (never published)
                self.coarse = self._coarse_position(tiles, scores, ids, t_s)
                cands.append((self.coarse[1].east_m, self.coarse[1].north_m, half + 10.0))
        for tid in dict.fromkeys(int(i) for i in ids.ravel() if i >= 0):
            te, tn = float(tiles.east_m[tid]), float(tiles.north_m[tid])
            if all(math.hypot(te - ce, tn - cn) > half for ce, cn, _ in cands):
                cands.append((te, tn, half + 10.0))
        return cands[:limit]

    def choose_tiles(self, view, prior_window: Callable[[], Optional[tuple]]) -> Optional[tuple]:
        """Which tiles the frame is searched in (view: the navigator's View, set in place), or
        (Reason, detail). prior_window(): the track's window, or None without a track.

        Below the height where a tile fits in the frame (take-off, landing, low inspection) the
        pack's finer levels are searched (`skyfix tiles level`); below the finest, a track goes
        on without retrieval: the map features around its prediction are matched with the part
        of the refinement crop the frame covers. A lost vehicle there gets no fix."""
        pose = view.pose
        if view.inside < MIN_INSIDE_FRAC:
            view.tiles, view.crop, view.inside = self.finer_level(view.image, pose, view.crop, view.inside)
        view.close_range = view.inside < MIN_INSIDE_FRAC
        if not view.close_range:
            return None
        view.window = prior_window()
        if not self.cfg.close_range or view.window is None:
            return Reason.CROP_OUTSIDE, (f"the frame covers {view.inside:.0%} of a {self.pack.tile_size_m:g} m tile "
                                         f"(height {pose.agl_m:.0f} m; the pack's finest tiles, {self.finest_m:g} m, "
                                         f"serve from {self.finest_from_m:.0f} m); below this only "
                                         "a track continues (finer tiles: skyfix tiles level PACK --tile-size-m S)")
        # The footprint's side (the covered share of the tile's area, as a square) in map pixels.
        across_px = math.sqrt(view.inside) * self.pack.tile_size_m / self.pack.map_gsd_m
        if across_px < self.cfg.close_range_min_map_px:
            return Reason.CROP_OUTSIDE, (f"the frame sees {across_px:.0f} map pixels across (height "
                                         f"{pose.agl_m:.0f} m), under nav.close_range_min_map_px = "
                                         f"{self.cfg.close_range_min_map_px:g}: too few to track on")
        return None

    def refine(self, matcher, described, crop_shape: tuple, candidates: list[tuple]):
        """(best Match, strongest match at another place) by inlier count; Nones when none.

        `described`: the crop's features, from `matcher` (described once per frame);
        overlapping candidate windows are merged while they stay near their own size
        (`merge_windows`; while tracking, one window), and each window gives its best placement
        and the best other one."""
        reach_m = max(crop_shape[:2]) * self.pack.map_gsd_m * 0.75
        wh = (crop_shape[1], crop_shape[0])
        matches = [m for e, n, half in merge_windows([(e, n, r + reach_m) for e, n, r in candidates])
                   for m in matcher.match_window(described, wh, self.pack.map_gsd_m, (e, n), half)]
        if not matches:
            return None, None
        matches.sort(key=lambda m: -m.inliers)
        best = matches[0]
        far = [m for m in matches[1:] if math.hypot(m.east_m - best.east_m, m.north_m - best.north_m)
               > self.pack.tile_size_m / 4]
        return best, (far[0] if far else None)

    def with_coarse(self, detail: str, t_s: float) -> str:
        """detail, with this frame's coarse position when a global search made one."""
        if self.coarse is None or self.coarse[0] != t_s:
            return detail
        c = self.coarse[1]
        lat, lon, _ = self.pack.frame.to_lla(c.east_m, c.north_m)
        said = (f"retrieval's coarse position (not a fix): {float(lat):.6f}, {float(lon):.6f} +- {c.spread_m:.0f} m "
                f"(density of {c.k} tiles)")
        return "; ".join(x for x in (detail, said) if x)

    @staticmethod
    def _coarse_position(tiles, scores: np.ndarray, ids: np.ndarray, t_s: float) -> tuple:
        """(t_s, CoarsePosition) of a lost vehicle: the density peak of the best-scoring tiles
        (seed 003's k-NN kernel density, kernels of half a tile): where the retrieved places
        agree, not the single best."""
        from skyfix.edge.coarse import density_position
        best = {}
        for tid, sc in zip(ids.tolist(), scores.tolist()):
            if tid >= 0 and tid not in best:  # rows of several rotations: each tile's best score
                best[tid] = sc
        tid = np.array(list(best), np.int64)
        return t_s, density_position(tiles.east_m[tid], tiles.north_m[tid], np.array(list(best.values())),
                                     tiles.tile_size_m / 2)
