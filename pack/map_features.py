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
from typing import Optional

import numpy as np

from skyfix.artifacts import digest_problem
from skyfix.errors import PackError
from skyfix.pack.schema import DIGEST, NUMBER, check_shape

FEATURE_FILES = ("xy_en_m.npy", "desc.npy", "scores.npy", "cell_start.npy")
CELL_M = 64.0          # spatial index cell; a 100 m tile's window touches ~16 cells
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
