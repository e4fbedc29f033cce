"""Describing the map with a local-feature extractor, on the ground station: the features a
TilePack stores (their layout and reading onboard: pack/map_features.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from skyfix.artifacts import file_digest
from skyfix.contracts import Features
from skyfix.errors import PackError
from skyfix.pack.canvas import MapCanvas
from skyfix.pack.map_features import CELL_M, FEATURE_FILES, ArrayRows, MapFeatures

if TYPE_CHECKING:
    from skyfix.contracts import Extractor
    from skyfix.pack.blocks import MapBlocks

BLOCK_PX = 1024        # the map is described in blocks of this size ...
BLOCK_MARGIN_PX = 48   # ... overlapping by this much, keeping each keypoint from one block only


def describe_map_rows(canvas: "MapCanvas | MapBlocks", extractor: Extractor, per_mpx: int,
                      progress: bool = False) -> Iterator[tuple[int, Features]]:
    """Keypoints of the whole map (pixels), one row of blocks at a time: yields (row_end_px,
    features whose keypoints lie above row_end_px). Blocks of BLOCK_PX overlap by a margin and
    each keypoint is kept in one block only; the map is read by windows (an in-memory canvas or
    a pack's map blocks), so memory follows a row of blocks, not the map. At most per_mpx per
    megapixel."""
    h, w = canvas.height_px, canvas.width_px
    core = BLOCK_PX - 2 * BLOCK_MARGIN_PX
    rows = list(range(0, h, core))
    bar = _progress(len(rows) * len(range(0, w, core)), progress)
    for r in rows:
        parts = []
        for c in range(0, w, core):
            if bar is not None:
                bar.update(1)
            r0, c0 = max(r - BLOCK_MARGIN_PX, 0), max(c - BLOCK_MARGIN_PX, 0)
            r1, c1 = min(r + core + BLOCK_MARGIN_PX, h), min(c + core + BLOCK_MARGIN_PX, w)
            image, valid = canvas.read_px(r0, r1, c0, c1)
            if not valid.any():
                continue
            n_max = int(per_mpx * (r1 - r0) * (c1 - c0) / 1e6) + 1
            f = extractor.extract(np.ascontiguousarray(image), n_max, valid)
            xy = f.xy_px + np.array([c0, r0], np.float32)
            # Keep a keypoint only in the block whose core holds it (blocks overlap by the margin).
            own = (xy[:, 0] >= c) & (xy[:, 0] < c + core) & (xy[:, 1] >= r) & (xy[:, 1] < r + core)
            parts.append(Features(xy[own], _storage_desc(f.desc[own], extractor.name), f.scores[own]))
        if parts:
            yield r + core, Features(*(np.concatenate([getattr(p, k) for p in parts])
                                       for k in ("xy_px", "desc", "scores")))
    if bar is not None:
        bar.close()


def _progress(total: int, on: bool):
    if not on:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="block", desc="map features")


def _storage_desc(desc: np.ndarray, name: str) -> np.ndarray:
    # SIFT descriptors are integers 0..255 (exact in uint8); XFeat's unit vectors keep 3 digits
    # in float16, which halves the pack at no measurable cost to matching.
    if name in ("sift", "orb"):
        return np.clip(np.rint(desc), 0, 255).astype(np.uint8)
    return desc.astype(np.float16)


class _NpyAppender:
    """A .npy file of rows of `dtype` and `row_shape` written in appended pieces (raw rows
    first, the header once the row count is known), so a large array is never whole in memory."""

    def __init__(self, path: Path, dtype, row_shape: tuple):
        self.path, self.raw = path, open(path.with_suffix(".raw"), "wb")
        self.rows, self.dtype, self.row_shape = 0, np.dtype(dtype), tuple(row_shape)

    def append(self, arr: np.ndarray) -> None:
        self.raw.write(np.ascontiguousarray(arr, dtype=self.dtype).tobytes())
        self.rows += len(arr)

    def close(self) -> None:
        self.raw.close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, *self.row_shape)}
        with open(self.path, "wb") as out, open(self.path.with_suffix(".raw"), "rb") as raw:
            np.lib.format.write_array_header_1_0(out, header)
            for chunk in iter(lambda: raw.read(1 << 24), b""):
                out.write(chunk)
        self.path.with_suffix(".raw").unlink()


def write_map_features(pack_dir: Path, canvas: "MapCanvas | MapBlocks", extractor: Extractor, per_mpx: int,
                       progress: bool = False) -> dict:
    """Describe the map and write pack_dir/features/<name>/; returns the manifest entry.

    Features are stored sorted by cell (row-major). They arrive a row of blocks at a time, and a
    cell row is written out as soon as no later block can add to it, so memory follows a row of
    blocks (the whole set was 11 GB at peak for a 114 km2 map when held at once)."""
    g, e0, n0 = canvas.gsd_m, canvas.east0_m, canvas.north0_m
    cols = max(1, int(np.ceil(canvas.width_m / CELL_M)))
    rows = max(1, int(np.ceil(canvas.height_m / CELL_M)))
    folder = pack_dir / "features" / extractor.name
    folder.mkdir(parents=True, exist_ok=True)
    desc_dtype = _storage_desc(np.zeros((0, extractor.dim), np.float32), extractor.name).dtype
    out = {name: _NpyAppender(folder / name, dtype, shape) for name, dtype, shape in
           zip(FEATURE_FILES[:3], (np.float32, desc_dtype, np.float32), ((2,), (int(extractor.dim),), ()))}
    counts = np.zeros(cols * rows, np.int64)
    pending: list = []

    def flush(below_cell_row: int) -> None:
        """Write the pending features of cell rows < below_cell_row, in cell order."""
        if not pending:
            return
        xy, desc, scores, cell = (np.concatenate([p[i] for p in pending]) for i in range(4))
        now = cell < below_cell_row * cols
        order = np.flatnonzero(now)[np.argsort(cell[now], kind="stable")]
        for name, arr in zip(FEATURE_FILES[:3], (xy, desc, scores)):
            out[name].append(arr[order])
        counts[:] += np.bincount(cell[order], minlength=cols * rows)
        keep = ~now
        pending[:] = [(xy[keep], desc[keep], scores[keep], cell[keep])] if keep.any() else []

    described = False
    for row_end_px, f in describe_map_rows(canvas, extractor, per_mpx, progress):
        described = True
        xy_en = np.column_stack([e0 + (f.xy_px[:, 0] + 0.5) * g, n0 - (f.xy_px[:, 1] + 0.5) * g]).astype(np.float32)
        ci = np.clip(((xy_en[:, 0] - e0) // CELL_M).astype(np.int64), 0, cols - 1)
        ri = np.clip(((n0 - xy_en[:, 1]) // CELL_M).astype(np.int64), 0, rows - 1)
        pending.append((xy_en, f.desc, f.scores.astype(np.float32), ri * cols + ci))
        # Later rows of blocks hold keypoints at or below row_end_px only: the cell rows wholly
        # above it are complete.
        flush(int(np.floor(row_end_px * g / CELL_M)))
    flush(rows)
    for appender in out.values():
        appender.close()
    if not described:
        raise PackError("the map has no valid pixels to describe")
    np.save(folder / "cell_start.npy", np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), allow_pickle=False)
    return {"extractor": extractor.name, "identity": extractor.identity, "source": extractor.source,
            "binary": bool(extractor.binary), "dim": int(extractor.dim), "count": int(counts.sum()),
            "per_mpx": int(per_mpx), "cell_m": CELL_M, "grid": {"east0_m": float(e0), "north0_m": float(n0),
                                                                  "cols": cols, "rows": rows},
            "files": {name: file_digest(folder / name) for name in FEATURE_FILES}}


def features_in_memory(canvas: MapCanvas, extractor: Extractor, per_mpx: int) -> MapFeatures:
    """MapFeatures of a canvas without a pack (benchmarks, tests): the same description and
    cell index as a pack's, kept in memory."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        entry = write_map_features(Path(tmp), canvas, extractor, per_mpx)
        folder = Path(tmp) / "features" / extractor.name
        arrays = [ArrayRows(np.load(folder / f, allow_pickle=False)) for f in FEATURE_FILES[:3]]
        grid = entry["grid"]
        return MapFeatures(extractor.name, entry["identity"], bool(entry["binary"]), *arrays,
                           np.load(folder / "cell_start.npy", allow_pickle=False), float(grid["east0_m"]),
                           float(grid["north0_m"]), int(grid["cols"]), int(grid["rows"]), float(entry["cell_m"]))
