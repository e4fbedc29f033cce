"""FrameGallery: recent frame embeddings with their fixes, for satellite -> drone queries
("which frames saw this tile?")."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np

from skyfix.contracts import Fix
from skyfix.errors import SkyfixError


class FrameGallery:
    """A bounded ring of (embedding D, t_capture_us, frame id, fix or None); thread-safe."""

    def __init__(self, capacity: int, dim: int, model_id: str):
        self.capacity, self.dim, self.model_id = capacity, dim, model_id
        # Written once now: np.zeros' pages are only committed on first write, so an untouched
        # ring would grow the process by capacity x dim x 4 bytes (4 MB at 2000 x 512) over its
        # first fill, which a soak cannot tell from a leak. Onboard memory is best known at start.
        self.vectors = np.zeros((capacity, dim), np.float32)
        self.vectors.fill(0.0)
        self.t_us = np.zeros(capacity, np.int64)
        self.frame_ids = np.empty(capacity, object)
        self.lat_lon = np.full((capacity, 2), np.nan)
        self.count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    def add(self, vector: np.ndarray, t_capture_us: int, frame_id: str, fix: Optional[Fix]) -> int:
        """Store a frame; returns its slot (for `attach_fix` once the frame's fix is known)."""
        with self._lock:
            i = self.count % self.capacity
            self.vectors[i], self.t_us[i], self.frame_ids[i] = vector, t_capture_us, frame_id
            self.lat_lon[i] = (fix.lat_deg, fix.lon_deg) if fix is not None else (np.nan, np.nan)
            self.count += 1
            return i

    def attach_fix(self, slot: int, lat_deg: float, lon_deg: float) -> None:
        with self._lock:
            self.lat_lon[slot] = (lat_deg, lon_deg)

    def query(self, vectors: np.ndarray, k: int = 5) -> list[list[dict]]:
        """For each float32 query vector (N x D, e.g. a satellite tile from the sat tower), the
        k most similar frames: [{'frame_id', 't_capture_us', 'score', 'lat_deg', 'lon_deg'}]."""
        q = np.atleast_2d(vectors).astype(np.float32)
        if q.shape[1] != self.dim:
            raise SkyfixError(f"query dim {q.shape[1]} != gallery dim {self.dim}")
        with self._lock:
            n = len(self)
            scores = q @ self.vectors[:n].T
            out = []
            for row in scores:
                top = np.argsort(-row)[:k]
                out.append([{"frame_id": self.frame_ids[i], "t_capture_us": int(self.t_us[i]),
                             "score": float(row[i]), "lat_deg": float(self.lat_lon[i, 0]),
                             "lon_deg": float(self.lat_lon[i, 1])} for i in top])
        return out

    def save(self, path: str | Path) -> Path:
        with self._lock:
            n = len(self)
            np.savez(path, vectors=self.vectors[:n], t_us=self.t_us[:n],
                     frame_ids=np.array(self.frame_ids[:n], dtype=str), lat_lon=self.lat_lon[:n],
                     model_id=np.array(self.model_id))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "FrameGallery":
        try:
            z = np.load(path, allow_pickle=False)
            g = cls(max(len(z["vectors"]), 1), z["vectors"].shape[1], str(z["model_id"]))
            for v, t, f, ll in zip(z["vectors"], z["t_us"], z["frame_ids"], z["lat_lon"]):
                g.attach_fix(g.add(v, int(t), str(f), None), *ll)
        except (OSError, KeyError, ValueError) as exc:
            raise SkyfixError(f"cannot read frame gallery {path}: {exc}") from exc
        return g


def frames_that_saw(pack, gallery: FrameGallery, sat_embedder, tile_id: Optional[int] = None,
                    lat_lon_deg: Optional[tuple] = None, k: int = 5) -> tuple:
    """Satellite -> drone: the k gallery frames most like one tile of the pack, given by its id
    or by a point (the tile whose centre is nearest). Returns (GeoTile, hits) with hits as in
    `FrameGallery.query`, best first."""
    from skyfix.errors import ModelMismatch
    for what, model_id in (("gallery", gallery.model_id), ("satellite model", sat_embedder.model_id)):
        if model_id != pack.model_id:
            raise ModelMismatch(f"{what} model {model_id} != pack model {pack.model_id}: "
                                "use the gallery and model of the flight that used this pack")
    if tile_id is None and lat_lon_deg is None:
        raise SkyfixError("give a tile id or a latitude and longitude")
    if tile_id is None:
        e, n, _ = pack.frame.to_enu(*lat_lon_deg)
        if not pack.contains(e, n).any():
            raise SkyfixError(f"{lat_lon_deg[0]:.6f}, {lat_lon_deg[1]:.6f} is outside the pack's region")
        tile_id = pack.nearest_tile_id(e, n)
    if not 0 <= tile_id < len(pack):
        raise SkyfixError(f"tile id {tile_id} is not in the pack (0..{len(pack) - 1})")
    tile = pack.tile(tile_id)
    img = pack.map_blocks().render(tile.east_m, tile.north_m, tile.size_m, sat_embedder.input_px)[0]
    return tile, gallery.query(sat_embedder.embed(img[None]), k)[0]
