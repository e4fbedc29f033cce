"""The navigator's search stage: a rectified crop embedded by the drone tower and searched among
the pack's tiles (or a finer level's), as candidate places for the refinement to verify.

While tracking, the search is limited to a window around the track's prediction (the prediction
itself first); a lost vehicle searches everywhere, and the density peak of the best tiles
(edge/coarse.py, seed 003) is looked at first: a guess that orders the search, said, never a fix.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from skyfix.edge.camera import rectify


class TileSearch:
    """pack: the TilePack; embedder: the drone tower; camera: PinholeCamera; cfg: NavConfig
    (top_k, global_max_candidates, coarse_first)."""

    def __init__(self, pack, embedder, camera, cfg):
        self.pack, self.embedder, self.camera, self.cfg = pack, embedder, camera, cfg
        self.coarse: Optional[tuple] = None  # (t_s, CoarsePosition) of the last global search (a lost vehicle)

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
            if level_inside >= 0.5:
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
