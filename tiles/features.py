"""The map's local features, computed once on the ground station and stored in the TilePack.

Layout inside a pack (one folder per extractor):
  features/<name>/xy_en_m.npy     float32 N x 2  keypoint (east_m, north_m) in the local frame
  features/<name>/desc.npy        N x D          uint8 (SIFT values, ORB bits) or float16 (XFeat)
  features/<name>/scores.npy      float32 N      detector response
  features/<name>/cell_start.npy  int64 C + 1    features sorted by grid cell (row-major); cell c
                                                 holds rows cell_start[c]:cell_start[c + 1]
The manifest's `features.<name>` entry names the extractor identity, the cell grid and the file
digests. Onboard only the rows of the cells around the search window are read (pread, not
memory-mapped: a file truncated in flight is an error for that frame, not a SIGBUS), so start-up
and memory do not grow with the region.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

from skyfix.artifacts import digest_problem, file_digest
from skyfix.edge.features import Extractor, Features
from skyfix.errors import PackError
from skyfix.tiles.canvas import MapCanvas
from skyfix.tiles.schema import DIGEST, NUMBER, check_shape

if TYPE_CHECKING:
    from skyfix.tiles.blocks import MapBlocks

FEATURE_FILES = ("xy_en_m.npy", "desc.npy", "scores.npy", "cell_start.npy")
CELL_M = 64.0          # spatial index cell; a 100 m tile's window touches ~16 cells
BLOCK_PX = 1024        # the map is described in blocks of this size ...
BLOCK_MARGIN_PX = 48   # ... overlapping by this much, keeping each keypoint from one block only
ENTRY_SHAPE = {"identity": str, "binary": bool, "count": int, "cell_m": NUMBER,
               "grid": {"east0_m": NUMBER, "north0_m": NUMBER, "cols": int, "rows": int},
               "files": {name: DIGEST for name in FEATURE_FILES}}


class NpyRows:
    """Rows of a 2-D (or 1-D) .npy file read on demand with pread: nothing is mapped, so a file
    truncated or replaced under a running loop gives a PackError for that read (memory-mapped
    arrays would kill the process with SIGBUS), and memory does not grow with the file."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "rb")
        try:
            version = np.lib.format.read_magic(self._f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(self._f)
        except ValueError as exc:
            self._f.close()
            raise PackError(f"{path} cannot be read ({exc})") from exc
        if fortran or dtype.hasobject:
            self._f.close()
            raise PackError(f"{path} cannot be read (object or Fortran-ordered array)")
        self.shape, self.dtype, self.offset = tuple(shape), dtype, self._f.tell()
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> np.ndarray:
        n = max(stop - start, 0)
        data = os.pread(self._f.fileno(), n * self.row_bytes, self.offset + start * self.row_bytes)
        if len(data) != n * self.row_bytes:
            raise PackError(f"{self.path} is shorter than its header says (truncated while in use?)")
        return np.frombuffer(data, self.dtype).reshape((n, *self.shape[1:]))

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` (any order), one pread each: for a shortlist of a few hundred rows."""
        out = np.empty((len(ids), *self.shape[1:]), self.dtype)
        for i, r in enumerate(np.asarray(ids, np.int64)):
            if not 0 <= r < self.shape[0]:
                raise PackError(f"{self.path}: row {r} outside 0..{self.shape[0] - 1}")
            out[i] = self.rows(int(r), int(r) + 1)[0]
        return out

    def close(self) -> None:
        self._f.close()


class ArrayRows:
    """The same interface over an array in memory (benchmarks, tests)."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype

    def __len__(self) -> int:
        return len(self.array)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]


@dataclass
class MapFeatures:
    """Map keypoints in metres with a cell index; the rows are read per window (NpyRows)."""

    name: str
    identity: str
    binary: bool
    xy_en_m: "NpyRows | ArrayRows"
    desc: "NpyRows | ArrayRows"
    scores: "NpyRows | ArrayRows"
    cell_start: np.ndarray
    east0_m: float         # west edge of cell column 0
    north0_m: float        # north edge of cell row 0
    cols: int
    rows: int
    cell_m: float = CELL_M

    def __len__(self) -> int:
        return len(self.xy_en_m)

    def near(self, east_m: float, north_m: float, half_m: float,
             max_features: int = 12000) -> tuple[np.ndarray, np.ndarray]:
        """(xy_en_m K x 2 float32, desc K x D as float32, or uint8 for binary) of the features in the
        square of half-side half_m around (east_m, north_m), the max_features strongest when
        there are more (bounds matching time and memory for wide windows). Reads only the
        cells it touches; PackError when the pack's files cannot be read."""
        c0 = int(np.floor((east_m - half_m - self.east0_m) / self.cell_m))
        c1 = int(np.floor((east_m + half_m - self.east0_m) / self.cell_m))
        r0 = int(np.floor((self.north0_m - north_m - half_m) / self.cell_m))
        r1 = int(np.floor((self.north0_m - north_m + half_m) / self.cell_m))
        c0, c1 = max(c0, 0), min(c1, self.cols - 1)
        r0, r1 = max(r0, 0), min(r1, self.rows - 1)
        dim = self.desc.shape[1]
        if c0 > c1 or r0 > r1:
            return np.zeros((0, 2), np.float32), np.zeros((0, dim), np.uint8 if self.binary else np.float32)
        # Cells of one row are contiguous: one read per row.
        spans = [(int(self.cell_start[r * self.cols + c0]), int(self.cell_start[r * self.cols + c1 + 1]))
                 for r in range(r0, r1 + 1)]
        xy = np.concatenate([self.xy_en_m.rows(a, b) for a, b in spans])
        inside = np.flatnonzero((np.abs(xy[:, 0] - east_m) <= half_m) & (np.abs(xy[:, 1] - north_m) <= half_m))
        if inside.size > max_features:
            scores = np.concatenate([self.scores.rows(a, b) for a, b in spans])[inside]
            inside = np.sort(inside[np.argsort(-scores, kind="stable")[:max_features]])
        desc = np.concatenate([self.desc.rows(a, b) for a, b in spans])[inside]
        return xy[inside], (desc if self.binary else desc.astype(np.float32))


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


def open_map_features(pack_dir: Path, entry: dict, name: str, full_check: bool = False) -> MapFeatures:
    """Open a pack's features of extractor `name` for reading per window, checking sizes,
    digests (`artifacts.digest_problem`) and array shapes against the manifest entry."""
    folder = pack_dir / "features" / name
    redo = f"re-add them with `skyfix tiles features {pack_dir} --matcher {name}`"
    for fname in FEATURE_FILES:
        digest = entry["files"].get(fname)
        problem = "missing" if digest is None else digest_problem(folder, fname, digest, full_check)
        if problem == "missing":
            raise PackError(f"{pack_dir}: features/{name}/{fname} is missing; {redo}")
        if problem:
            raise PackError(f"{pack_dir}: features/{name}/{fname} is truncated or corrupt; {redo}")
    try:
        starts = np.load(folder / "cell_start.npy", allow_pickle=False)
    except ValueError as exc:
        raise PackError(f"{pack_dir}: features/{name}/cell_start.npy cannot be read ({exc}); {redo}") from exc
    xy, desc, scores = (NpyRows(folder / f) for f in FEATURE_FILES[:3])
    grid = entry["grid"]
    n, ncells = int(entry["count"]), int(grid["cols"]) * int(grid["rows"])
    if (xy.shape != (n, 2) or len(desc) != n or len(desc.shape) != 2 or scores.shape != (n,)
            or starts.shape != (ncells + 1,) or starts.dtype.kind != "i"
            or (n and (starts[0] != 0 or starts[-1] != n or np.any(np.diff(starts) < 0)))):
        raise PackError(f"{pack_dir}: features/{name} arrays disagree with the manifest ({n} features, "
                        f"{ncells} cells); {redo}")
    return MapFeatures(name, entry["identity"], bool(entry["binary"]), xy, desc, scores, starts,
                       float(grid["east0_m"]), float(grid["north0_m"]), int(grid["cols"]), int(grid["rows"]),
                       float(entry["cell_m"]))


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


def require_features(pack_dir: Path, manifest: dict, name: str, identity: Optional[str]) -> dict:
    """The manifest entry of `name`, or PackError saying how to add it / that it is from another
    extractor than the one onboard."""
    entry = (manifest.get("features") or {}).get(name) if isinstance(manifest.get("features"), dict) else None
    if entry is None:
        have = ", ".join(manifest.get("features") or {}) or "none"
        raise PackError(f"pack {pack_dir} has no map features for matcher '{name}' (it has: {have}); add "
                        f"them with `skyfix tiles features {pack_dir} --matcher {name}` or rebuild the pack")
    check_shape(entry, ENTRY_SHAPE, f"{pack_dir}/manifest.yaml features.{name}")
    if entry["count"] < 0 or entry["cell_m"] <= 0 or entry["grid"]["cols"] <= 0 or entry["grid"]["rows"] <= 0:
        raise PackError(f"{pack_dir}: features.{name} has a negative count or an empty cell grid; re-add "
                        f"them with `skyfix tiles features {pack_dir} --matcher {name}`")
    if identity is not None and entry.get("identity") != identity:
        raise PackError(f"pack {pack_dir}: its '{name}' map features were computed by {entry.get('identity')}, "
                        f"the onboard extractor is {identity}; recompute them with "
                        f"`skyfix tiles features {pack_dir} --matcher {name}` using this model")
    return entry
