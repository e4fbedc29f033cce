"""TilePack: the on-disk format of an embedded region, and search in it.

A pack is a folder:
  manifest.yaml  schema version, region, grid, model_id, dim, metric, imagery, counts, file digests
  tiles.csv      tile_id, lat_deg, lon_deg, east_m, north_m, east_min_m, north_min_m, east_max_m, north_max_m
  map/           the map imagery in blocks read on demand (pack/blocks.py)
  index.faiss    the FAISS index of tile embeddings (ids = tile_id); with `binary`, a Hamming
                 index of learned codes, whose hash head is hash.npz beside it (pack/hashing.py)
  features/NAME/ the map's local features per extractor (tiles/features.py), memory-mapped onboard
  terrain.npy    optional: ground heights from a DEM (pack/terrain.py), memory-mapped onboard
  levels/SIZE/   optional: finer tiles of the same map (tiles.csv, index.faiss), for frames taken
                 too low for the main tiles to fit (take-off, landing, low inspection)
This module needs numpy, OpenCV, PyYAML and faiss only (no rasterio, no torch).
"""
from __future__ import annotations

import datetime as dt
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from skyfix.artifacts import digest_problem, file_digest
from skyfix.contracts import GeoTile
from skyfix.errors import ModelMismatch, PackError, require
from skyfix.geo import LocalFrame
from skyfix.pack.blocks import BLOCK_PX, TABLE_FILE, MapBlocks
from skyfix.pack.canvas import MapCanvas, MapGrid
from skyfix.pack.hashing import HASH_FILE, HashIndex, HashProjection
from skyfix.pack.map_features import MapFeatures, open_map_features, require_features
from skyfix.pack.schema import DIGEST, NUMBER, check_shape
from skyfix.pack.terrain import TERRAIN_FILE, Terrain, open_terrain

SCHEMA_VERSION = 2  # 2: map imagery in blocks (was one map.png)
METRIC = "inner_product"  # on L2-normalised vectors: cosine similarity
TILE_COLUMNS = ("tile_id", "lat_deg", "lon_deg", "east_m", "north_m",
                "east_min_m", "north_min_m", "east_max_m", "north_max_m")
PACK_FILES = ("tiles.csv", TABLE_FILE, "index.faiss")
VECTORS_FILE = "vectors.npy"  # packs with a compressed or graph index: exact vectors for re-ranking
RERANK_SHORTLIST = 200        # candidates the compact index proposes per query, re-ranked exactly
RERANK_NPROBE = 128           # IVF lists probed when re-ranking (bench faiss: recall@10 0.95 at 1M)
INDEX_KINDS = ("flat", "ivfpq", "hnsw", "binary")
LEVELS_DIR = "levels"
LEVEL_SHAPE = {"tile_size_m": NUMBER, "stride_m": NUMBER, "tile_px": int, "tiles": int}


def level_dir(tile_size_m: float) -> str:
    """The folder, inside a pack, of its level of tile_size_m tiles."""
    return f"{LEVELS_DIR}/{tile_size_m:g}"


# The manifest's shape: what TilePack.open relies on. A mapping is checked key by key; a type
# (or tuple of types) checks the value; "files" maps each pack file to its digest.
MANIFEST_SHAPE = {
    "schema_version": int, "model_id": str, "dim": int, "metric": str,
    "files": {name: DIGEST for name in PACK_FILES}, "counts": {"tiles": int},
    "local_frame": {"lat0_deg": NUMBER, "lon0_deg": NUMBER},
    "map": {"gsd_m": NUMBER, "east0_m": NUMBER, "north0_m": NUMBER, "width_px": int, "height_px": int,
            "block_px": int},
    "grid": {"tile_size_m": NUMBER, "stride_m": NUMBER, "tile_px": int},
}


def make_index(kind: str, vectors: np.ndarray, seed: int = 0, projection: Optional[HashProjection] = None):
    """Build a FAISS inner-product index over float32 N x D unit vectors.

    flat: exact. ivfpq: OPQ + inverted lists + product quantisation, 64 bytes per vector (large
    regions; needs N >= 10k to train). hnsw: graph index, uncompressed, fast on large regions.
    binary: Hamming search of the codes of a learned hash head (`projection`), bits/8 bytes a vector.
    """
    faiss = require("faiss")
    n, d = vectors.shape
    if kind == "binary":
        if projection is None:
            raise PackError("a binary index needs a trained hash head (skyfix train hash; "
                            "tiles build --hash-head)")
        return HashIndex.build(projection, vectors)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    elif kind == "ivfpq":
        nlist = int(max(16, min(4096, np.sqrt(n))))
        if n < 10000:
            raise PackError(f"ivfpq needs at least 10000 tiles to train, this region has {n}; "
                            "use --index flat (exact) or hnsw")
        # 64 sub-quantisers of 8 dims for d = 512; never fewer than 4 dims each.
        m = max(g for g in (64, 32, 16, 8, 4, 2, 1) if d % g == 0 and d // g >= 4)
        # OPQ rotates the space so the 8-bit sub-quantisers share the variance: in the benchmark
        # it lifts recall@10 from ~0.54 to ~0.77 at the same 64 bytes per vector.
        index = faiss.index_factory(d, f"OPQ{m},IVF{nlist},PQ{m}", faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index).cp.seed = seed
        # k-means on a sample: 64 points per list is plenty and keeps building large regions fast.
        sample = np.random.default_rng(seed).choice(n, size=min(n, 64 * nlist), replace=False)
        index.train(vectors[np.sort(sample)])
        faiss.extract_index_ivf(index).nprobe = 32
    else:
        raise PackError(f"unknown index kind '{kind}'; choose one of {', '.join(INDEX_KINDS)}")
    index.add(vectors)
    return index


class TileGrid:
    """Tile centres bucketed into square cells (sorted by cell), so the tiles of a search
    window are found by a few binary searches instead of a scan of every tile (at a million
    tiles the scan alone took milliseconds)."""

    def __init__(self, east_m: np.ndarray, north_m: np.ndarray, cell_m: float):
        self.east_m, self.north_m, self.cell_m = east_m, north_m, float(cell_m)
        self.e0, self.n0 = float(east_m.min()), float(north_m.min())
        cx = np.floor((east_m - self.e0) / self.cell_m).astype(np.int64)
        cy = np.floor((north_m - self.n0) / self.cell_m).astype(np.int64)
        self.ncx, self.ncy = int(cx.max()) + 1, int(cy.max()) + 1
        keys = cx * self.ncy + cy
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]

    def within(self, east_m: float, north_m: float, radius_m: float) -> np.ndarray:
        """Row indices (sorted) of the tiles whose centre lies within radius_m."""
        lo_x, hi_x = (np.floor((np.array([east_m - radius_m, east_m + radius_m]) - self.e0) / self.cell_m)
                      .clip(0, self.ncx - 1).astype(int))
        lo_y, hi_y = (np.floor((np.array([north_m - radius_m, north_m + radius_m]) - self.n0) / self.cell_m)
                      .clip(0, self.ncy - 1).astype(int))
        parts = []  # a window beyond the region clips to its edge cells; the distance test drops them
        for cx in range(lo_x, hi_x + 1):  # one contiguous key range per column of cells
            a, b = np.searchsorted(self.keys, [cx * self.ncy + lo_y, cx * self.ncy + hi_y + 1])
            parts.append(self.order[a:b])
        rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        d2 = (self.east_m[rows] - east_m) ** 2 + (self.north_m[rows] - north_m) ** 2
        return np.sort(rows[d2 <= radius_m ** 2])


def window_search(index, ids: np.ndarray, queries: np.ndarray, k: int, rows=None):
    """Top-k of `queries` (N x D) among the tiles `ids` only: their vectors are read back from
    the index (exact for flat and HNSW, the stored approximation for IVF-PQ) and scored
    directly, which costs microseconds for a window's tens or hundreds of tiles where a
    selector over the whole index scanned every vector. Returns (scores N x k, ids N x k),
    -inf / -1 where the window has fewer than k tiles. rows: a function reading exact vectors
    by id (the pack's vectors.npy) for indexes that keep only approximations."""
    ids = ids.astype(np.int64)
    vecs = rows(ids) if rows is not None and ids.size else _vectors_of(index, ids)
    sims = (vecs @ queries.T).T
    take = min(k, ids.size)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :take]
    scores = np.full((len(queries), k), -np.inf, np.float32)
    out = np.full((len(queries), k), -1, np.int64)
    scores[:, :take] = np.take_along_axis(sims, order, axis=1)
    out[:, :take] = ids[order]
    return scores, out


def _vectors_of(index, ids: np.ndarray) -> np.ndarray:
    """The stored vectors of `ids` (len(ids) x d). A flat index's storage is read in place (a
    numpy view of FAISS's array: 0.9 ms for 1,264 rows at 512-d where reconstruct_batch took 2.7)."""
    if ids.size == 0:
        return np.zeros((0, index.d), np.float32)
    faiss = require("faiss")
    if isinstance(index, faiss.IndexFlat):
        return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)[ids]
    return index.reconstruct_batch(ids)


def _ivf_of(index):
    """The IVF part of an index (inside OPQ), or None for flat, HNSW and binary indexes."""
    faiss = require("faiss")
    if isinstance(index, HashIndex):
        return None
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _enable_reconstruct(index) -> None:
    """IVF indexes need a direct map (id -> list position) to read vectors back by id; flat
    and HNSW reconstruct as they are."""
    ivf = _ivf_of(index)
    if ivf is not None:
        ivf.make_direct_map()


def write_tile_set(folder: Path, tiles: list[GeoTile], vectors: np.ndarray, index_kind: str,
                   projection: Optional[HashProjection] = None) -> tuple:
    """Write tiles.csv, index.faiss (and vectors.npy for a compact index, hash.npz for a binary
    one) of one tile set into `folder`. Returns (the tile table as an N x 9 array, the file names
    written)."""
    faiss = require("faiss")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(tiles) != len(vectors) or len(tiles) == 0:
        raise PackError(f"{len(tiles)} tiles but {len(vectors)} vectors; nothing to pack")
    folder.mkdir(parents=True, exist_ok=True)
    table = np.array([[t.tile_id, t.lat_deg, t.lon_deg, t.east_m, t.north_m,
                       t.east_m - t.size_m / 2, t.north_m - t.size_m / 2,
                       t.east_m + t.size_m / 2, t.north_m + t.size_m / 2] for t in tiles])
    np.savetxt(folder / "tiles.csv", table, delimiter=",", header=",".join(TILE_COLUMNS),
               comments="", fmt=["%d", "%.8f", "%.8f"] + ["%.3f"] * 6)
    index = make_index(index_kind, vectors, projection=projection)
    if isinstance(index, HashIndex):
        files = ["tiles.csv"] + index.write(folder)
    else:
        faiss.write_index(index, str(folder / "index.faiss"))
        files = ["tiles.csv", "index.faiss"]
    if index_kind != "flat":
        # The exact vectors, for re-ranking what the compact index proposes (read by rows).
        np.save(folder / VECTORS_FILE, vectors)
        files.append(VECTORS_FILE)
    return table, files


def write_pack_files(folder: Path, grid: MapGrid, tiles: list[GeoTile], vectors: np.ndarray, *,
                     model_id: str, tile_px: int, stride_m: float, index_kind: str = "flat",
                     imagery: Optional[dict] = None, source: str = "", crs: str = "",
                     model_source: str = "", extra_files: Optional[dict] = None,
                     features: Optional[dict] = None, block_px: int = BLOCK_PX,
                     projection: Optional[HashProjection] = None, map_accuracy_m: Optional[float] = None) -> None:
    """Write the tile table, the index and the manifest into `folder`, which already holds the
    map blocks (pack/blocks.py) and the map features (`features`: their manifest entries) of
    the map `grid` (MapCanvas or MapBlocks geometry). map_accuracy_m: the map's stated absolute
    horizontal error (m, 1 sigma per axis), recorded when given."""
    table, tile_files = write_tile_set(folder, tiles, vectors, index_kind, projection)
    files = [TABLE_FILE] + tile_files
    lat, lon = table[:, 1], table[:, 2]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model_id": model_id,
        "model_source": model_source,
        "dim": int(vectors.shape[1]),
        "metric": METRIC,
        "index": index_kind,
        "crs_source": crs,
        "source": source,
        "local_frame": {"lat0_deg": grid.frame.lat0_deg, "lon0_deg": grid.frame.lon0_deg},
        "map": {"gsd_m": grid.gsd_m, "east0_m": grid.east0_m, "north0_m": grid.north0_m,
                "width_px": int(grid.width_px), "height_px": int(grid.height_px), "block_px": int(block_px),
                **({} if map_accuracy_m is None else {"accuracy_m": float(map_accuracy_m)})},
        "region": {"lat_min_deg": float(lat.min()), "lat_max_deg": float(lat.max()),
                   "lon_min_deg": float(lon.min()), "lon_max_deg": float(lon.max()),
                   "bounds_en_m": [float(v) for v in grid.bounds_en()]},
        "grid": {"tile_size_m": float(tiles[0].size_m), "stride_m": float(stride_m),
                 "tile_px": int(tile_px)},
        "imagery": imagery or {},
        "counts": {"tiles": len(tiles)},
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "files": {name: file_digest(folder / name) for name in files},
        "features": features or {},
    }
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text)


def replace_manifest(pack_dir: Path, manifest: dict) -> None:
    """Write a pack's manifest in one rename (a reader sees the old one or the new one)."""
    tmp = Path(pack_dir) / ".manifest.yaml.tmp"
    tmp.write_text(yaml.safe_dump(manifest, sort_keys=False))
    os.replace(tmp, Path(pack_dir) / "manifest.yaml")


class TileSet:
    """Tiles of one size over the map and their FAISS index: the tile table, the geometry, and
    search by vector (the whole region, or a window). A pack's main tiles are one; each finer
    level (levels/SIZE/) is another."""

    def __init__(self, folder: Path, table: np.ndarray, index, dim: int, tile_size_m: float, exact_vectors: bool):
        self.folder, self.table, self.index = folder, table, index
        self._dim, self._tile_size_m = int(dim), float(tile_size_m)
        self.tile_ids = table[:, 0].astype(np.int64)
        self.east_m, self.north_m = table[:, 3], table[:, 4]
        self.grid = TileGrid(self.east_m, self.north_m, self._tile_size_m)
        self.vectors = None
        if exact_vectors:
            from skyfix.pack.map_features import NpyRows
            self.vectors = NpyRows(folder / VECTORS_FILE)
            if self.vectors.shape != (len(self.tile_ids), self._dim):
                raise PackError(f"pack {folder}: {VECTORS_FILE} is {self.vectors.shape}, expected "
                                f"{len(self.tile_ids)} x {self._dim}")
            ivf = _ivf_of(index)
            if ivf is not None:  # HNSW has no lists to probe
                ivf.nprobe = RERANK_NPROBE
        else:
            _enable_reconstruct(index)

    @staticmethod
    def read(folder: Path, n: int, dim: int) -> tuple:
        """Read tiles.csv and index.faiss of a tile set the manifest says holds n tiles of dim;
        PackError when they are corrupt or disagree with it."""
        try:
            with warnings.catch_warnings():  # an empty table is reported below, as a PackError
                warnings.simplefilter("ignore", UserWarning)
                table = np.loadtxt(folder / "tiles.csv", delimiter=",", skiprows=1, ndmin=2)
        except ValueError as exc:
            raise PackError(f"pack {folder}: tiles.csv is corrupt ({exc})") from exc
        faiss = require("faiss")
        try:
            index = (HashIndex.read(folder) if (folder / HASH_FILE).is_file()
                     else faiss.read_index(str(folder / "index.faiss")))
        except RuntimeError as exc:
            raise PackError(f"pack {folder}: index.faiss is corrupt ({exc}); rebuild the pack") from exc
        if table.shape != (n, len(TILE_COLUMNS)) or index.ntotal != n or index.d != dim:
            raise PackError(f"pack {folder}: manifest says {n} tiles of dim {dim}, found "
                            f"{table.shape[0]} rows and an index of {index.ntotal} x {index.d}")
        return table, index

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def tile_size_m(self) -> float:
        return self._tile_size_m

    def __len__(self) -> int:
        return len(self.tile_ids)

    def tile(self, tile_id: int) -> GeoTile:
        r = self.table[int(tile_id)]
        return GeoTile(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]), self.tile_size_m)

    def contains(self, east_m, north_m) -> np.ndarray:
        """Boolean (points x tiles): which tiles contain each local point (east_m, north_m)."""
        e, n = np.atleast_1d(east_m)[:, None], np.atleast_1d(north_m)[:, None]
        t = self.table
        return (e >= t[:, 5]) & (e <= t[:, 7]) & (n >= t[:, 6]) & (n <= t[:, 8])

    # ---- search -------------------------------------------------------------------------------
    def ids_within(self, east_m: float, north_m: float, radius_m: float) -> np.ndarray:
        """Tile ids whose centre lies within radius_m of (east_m, north_m)."""
        return self.tile_ids[self.grid.within(east_m, north_m, radius_m)]

    def nearest_tile_id(self, east_m: float, north_m: float) -> int:
        """The tile whose centre is nearest to (east_m, north_m)."""
        return int(self.tile_ids[np.argmin((self.east_m - east_m) ** 2 + (self.north_m - north_m) ** 2)])

    def search(self, vectors: np.ndarray, k: int, near: Optional[tuple] = None):
        """Top-k tiles for float32 N x D query vectors.

        near: (east_m, north_m, radius_m) restricts the search to tiles within the radius
        (`window_search`); None searches the whole region. Returns (scores N x k, tile_ids N x k); slots
        with no tile (fewer than k in the window) have id -1 and score -inf.
        """
        q = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ModelMismatch(f"query dim {q.shape[1]} != pack dim {self.dim}")
        k = int(min(k, len(self)))
        rows = self.vectors.take if self.vectors is not None else None
        if near is not None:
            scores, ids = window_search(self.index, self.ids_within(*near), q, k, rows)
        elif rows is None:
            scores, ids = self.index.search(q, k)
        else:  # the compact index proposes, the exact vectors decide
            shortlist = self.index.search(q, max(RERANK_SHORTLIST, k))[1]
            parts = [window_search(self.index, np.unique(c[c >= 0]), row[None], k, rows) for row, c in zip(q, shortlist)]
            scores, ids = np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts])
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids


class TilePack(TileSet):
    """An opened, validated TilePack. Use `TilePack.open(path)`."""

    def __init__(self, path: Path, manifest: dict, table: np.ndarray, index):
        dim = int(manifest["dim"])
        super().__init__(path, table, index, dim, float(manifest["grid"]["tile_size_m"]),
                         VECTORS_FILE in manifest["files"])
        self.path, self.manifest = path, manifest
        self.frame = LocalFrame(**manifest["local_frame"])
        self._canvas: Optional[MapCanvas] = None
        self._terrain: Optional[Terrain] = None
        # Finer tiles of the same map, largest first (`skyfix tiles level`).
        self.levels: list[TileSet] = []
        for entry in sorted(manifest.get("levels") or [], key=lambda e: -float(e.get("tile_size_m", 0))):
            check_shape(entry, LEVEL_SHAPE, f"{path}/manifest.yaml levels")
            folder = path / level_dir(float(entry["tile_size_m"]))
            self.levels.append(TileSet(folder, *TileSet.read(folder, int(entry["tiles"]), dim), dim,
                                       float(entry["tile_size_m"]), f"{level_dir(float(entry['tile_size_m']))}/{VECTORS_FILE}"
                                       in manifest["files"]))

    # ---- opening and validation -------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, expect_model_id: Optional[str] = None,
             expect_dim: Optional[int] = None, full_check: bool = False) -> "TilePack":
        """Open and validate a pack; raise PackError / ModelMismatch with what was expected.
        Checksums already verified for unchanged files are not recomputed unless full_check
        (`artifacts.digest_problem`); sizes always are."""
        path = Path(path)
        manifest = cls._read_manifest(path)
        for name, digest in manifest["files"].items():  # the main tiles, and vectors, terrain and levels where present
            cls._check_file(path, name, digest, full_check)
        if expect_model_id is not None and manifest["model_id"] != expect_model_id:
            raise ModelMismatch(
                f"pack {path} was embedded by model {manifest['model_id']}, but the model in use is "
                f"{expect_model_id}; rebuild the pack with this model (skyfix tiles build --model ...) "
                "or use the model that built it")
        if expect_dim is not None and manifest["dim"] != expect_dim:
            raise ModelMismatch(f"pack {path} has dim {manifest['dim']}, the model gives {expect_dim}")
        if manifest.get("metric") != METRIC:
            raise PackError(f"pack {path}: metric {manifest.get('metric')!r}, expected {METRIC!r}")
        return cls(path, manifest, *TileSet.read(path, int(manifest["counts"]["tiles"]), int(manifest["dim"])))

    @staticmethod
    def _read_manifest(path: Path) -> dict:
        mpath = path / "manifest.yaml"
        if not mpath.is_file():
            raise PackError(f"{path} is not a TilePack: {mpath.name} not found "
                            "(build one with `skyfix tiles build --ortho MAP --out PACK`)")
        try:
            manifest = yaml.safe_load(mpath.read_text())
        except yaml.YAMLError as exc:
            raise PackError(f"{mpath} is not valid YAML: {exc}") from exc
        if not isinstance(manifest, dict):
            raise PackError(f"{mpath} is not a mapping")
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PackError(f"{path}: pack schema version {version}, this skyfix reads "
                            f"{SCHEMA_VERSION}; rebuild the pack with this version")
        check_shape(manifest, MANIFEST_SHAPE, str(mpath))
        for key in ("dim", "counts"):
            if (manifest[key] if key == "dim" else manifest[key]["tiles"]) <= 0:
                raise PackError(f"{mpath}: {key} must be positive")
        if manifest["map"]["gsd_m"] <= 0 or manifest["grid"]["tile_size_m"] <= 0:
            raise PackError(f"{mpath}: map gsd_m and grid tile_size_m must be positive")
        if not isinstance(manifest.get("features") or {}, dict):
            raise PackError(f"{mpath}: 'features' must be a mapping")
        return manifest

    @staticmethod
    def _check_file(path: Path, name: str, digest: Optional[dict], full: bool = False) -> None:
        if digest is None:
            raise PackError(f"{path}: manifest has no digest for {name}")
        problem = digest_problem(path, name, digest, full)
        if problem == "missing":
            raise PackError(f"{path}: {name} is missing")
        if problem == "truncated":
            raise PackError(f"{path}: {name} has {(path / name).stat().st_size} bytes, manifest says "
                            f"{digest['bytes']} (truncated or replaced); copy or rebuild the pack")
        if problem == "corrupt":
            raise PackError(f"{path}: {name} checksum differs from the manifest (corrupt)")

    # ---- properties -------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def tile_px(self) -> int:
        return int(self.manifest["grid"]["tile_px"])

    def map_blocks(self, cache_blocks: int = 16) -> MapBlocks:
        """The pack's map imagery, read block by block on demand (onboard: memory and start-up
        do not grow with the region)."""
        m = self.manifest["map"]
        return MapBlocks(self.path, float(m["gsd_m"]), self.frame, float(m["east0_m"]), float(m["north0_m"]),
                         int(m["width_px"]), int(m["height_px"]), int(m["block_px"]), cache_blocks)

    def canvas(self) -> MapCanvas:
        """The pack's whole map imagery in memory (loaded on first use): for the simulator and
        plots of maps that fit; use `map_blocks` for windows of a large region."""
        if self._canvas is None:
            self._canvas = self.map_blocks().whole()
        return self._canvas

    @property
    def terrain(self) -> Optional[Terrain]:
        """The ground heights the pack was built with (`tiles build --dem`), or None: flat ground."""
        entry = self.manifest.get("terrain")
        if entry and self._terrain is None:
            if TERRAIN_FILE not in self.manifest["files"]:
                raise PackError(f"pack {self.path}: the manifest has a terrain but no digest of {TERRAIN_FILE}")
            self._terrain = open_terrain(self.path, entry, self.frame)
        return self._terrain

    @property
    def map_gsd_m(self) -> float:
        return float(self.manifest["map"]["gsd_m"])

    @property
    def map_accuracy_m(self) -> Optional[float]:
        """The map's absolute horizontal error (m, 1 sigma per axis) the pack records
        (`tiles build --map-accuracy-m`, `tiles accuracy`), or None where nobody stated it."""
        value = self.manifest["map"].get("accuracy_m")
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1000:
            raise PackError(f"pack {self.path}: map accuracy_m {value!r} is not a distance in metres")
        return float(value)

    def map_features(self, name: str, identity: Optional[str] = None, full_check: bool = False) -> MapFeatures:
        """The map's local features of extractor `name`, memory-mapped. PackError, with the
        command that adds them, when the pack has none or they come from another extractor."""
        return open_map_features(self.path, require_features(self.path, self.manifest, name, identity), name,
                                 full_check)


def describe(pack: TilePack) -> str:
    """A few lines about a pack for people: model, source, extent, grid, files."""
    m = pack.manifest
    e0, n0, e1, n1 = m["region"]["bounds_en_m"]
    r = m["region"]
    return (f"TilePack {pack.path}  (schema {m['schema_version']}, created {m['created_utc']})\n"
            f"  model_id   {m['model_id']}  dim {m['dim']}  metric {m['metric']}  index {m['index']}\n"
            f"  source     {m['source']}  ({m['crs_source']})\n"
            f"  imagery    {m.get('imagery')}\n"
            f"  extent     {e1 - e0:.0f} x {n1 - n0:.0f} m; tile centres lat {r['lat_min_deg']:.6f}.."
            f"{r['lat_max_deg']:.6f}, lon {r['lon_min_deg']:.6f}..{r['lon_max_deg']:.6f}\n"
            f"  grid       {m['grid']['tile_size_m']:g} m tiles every {m['grid']['stride_m']:g} m, "
            f"{m['grid']['tile_px']} px; map {m['map']['width_px']} x {m['map']['height_px']} px at "
            f"{m['map']['gsd_m']:.3f} m/px\n"
            f"  tiles      {len(pack)}  (files verified: {', '.join(m['files'])})\n"
            "  levels     " + (", ".join(f"{lv['tiles']} tiles of {lv['tile_size_m']:g} m" for lv in m.get("levels") or [])
                                or "none (add: skyfix tiles level PACK --tile-size-m 40)") + "\n"
            "  accuracy   " + (f"map {a:g} m (1 sigma per axis, stated)" if (a := m["map"].get("accuracy_m")) is not None
                               else "map not stated (nav.map_bias_m used; state it: skyfix tiles accuracy PACK "
                                    "--map-accuracy-m M)") + "\n"
            "  terrain    " + (f"{t['width_px']} x {t['height_px']} cells of {t['gsd_m']:g} m, heights {t['min_m']:.0f}.."
                               f"{t['max_m']:.0f} m ({t['source']}), vertical accuracy "
                               f"{t.get('vertical_accuracy_m', Terrain.vertical_accuracy_m):g} m "
                               f"({'stated' if t.get('vertical_accuracy_stated') else 'assumed'})"
                               if (t := m.get("terrain")) else
                               "none: flat ground assumed, slopes of nav.ground_slope_deg allowed for in the accuracy "
                               "(add: skyfix tiles terrain PACK --dem DEM | --dem-xyz URL)") + "\n"
            "  features   " + (", ".join(f"{k}: {v['count']} keypoints ({v['identity']})"
                                  for k, v in (m.get("features") or {}).items()) or
                                "none (add: skyfix tiles features PACK --matcher NAME)"))
