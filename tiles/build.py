"""`skyfix tiles build`: orthophoto -> metric tile grid -> satellite-tower embeddings -> TilePack.

The build streams: the orthophoto is read and resampled block by block into the pack's map
blocks, tiles are rendered from those blocks, and embeddings are saved in chunks, so memory
follows a block and a chunk, not the region. An interrupted build resumes where it stopped when
run again with the same inputs (`<out>.partial` holds the work so far).
"""
from __future__ import annotations

import hashlib
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import yaml
from tqdm import tqdm

from skyfix.artifacts import atomic_directory, file_digest, replace_directory
from skyfix.config import SkyfixConfig, config_to_dict
from skyfix.contracts import GeoTile
from skyfix.errors import ModelMismatch, PackError
from skyfix.pack.blocks import (BLOCK_PX, COVERAGE_PX, MapBlocks, block_path, decode_block, row_sweep_cache,
                                 table_row, write_block, write_canvas_blocks, write_table)
from skyfix.pack.canvas import MapCanvas, MapGrid
from skyfix.pack.tilepack import SCHEMA_VERSION, TilePack, replace_manifest, write_pack_files
from skyfix.tiles import embed
from skyfix.tiles.features import write_map_features

if TYPE_CHECKING:  # onboard geometry, imported where used (tests/test_layout.py)
    from skyfix.edge.camera import PinholeCamera


def tile_grid(grid: MapGrid, tile_size_m: float, stride_m: float, max_nodata_frac: float = 0.02,
              coverage: Optional[tuple[np.ndarray, int]] = None) -> tuple[list[GeoTile], int]:
    """Square north-up tiles of `tile_size_m` every `stride_m` over the map, skipping nodata.

    coverage: (valid fraction per cell, cell size in map pixels), e.g. the build's 1/8-resolution
    map of valid pixels; default the canvas's own valid mask (a MapCanvas).
    Returns (tiles with ids 0..N-1 in row-major order from the north-west, number skipped).
    """
    if stride_m <= 0 or tile_size_m <= 0:
        raise PackError(f"tile size and stride must be positive, got {tile_size_m}, {stride_m}")
    frac, cell_px = coverage if coverage is not None else (grid.valid.astype(np.float64), 1)
    e_min, n_min, e_max, n_max = grid.bounds_en()
    half = tile_size_m / 2
    easts = np.arange(e_min + half, e_max - half + 1e-6, stride_m)
    norths = np.arange(n_max - half, n_min + half - 1e-6, -stride_m)
    if easts.size == 0 or norths.size == 0:
        raise PackError(f"the map ({e_max - e_min:.0f} x {n_max - n_min:.0f} m) is smaller than "
                        f"one tile of {tile_size_m} m")
    # Integral image of the valid fraction for a fast per-tile nodata fraction.
    good = np.pad(frac.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    tiles, skipped = [], 0
    size_cells = tile_size_m / grid.gsd_m / cell_px
    for n in norths:
        for e in easts:
            c0, r0 = grid.px_from_en(e - half, n + half)
            c0, r0 = int(round((c0 + 0.5) / cell_px)), int(round((r0 + 0.5) / cell_px))
            c1, r1 = c0 + int(round(size_cells)), r0 + int(round(size_cells))
            area = max((r1 - r0) * (c1 - c0), 1)
            nodata = 1.0 - (good[r1, c1] - good[r0, c1] - good[r1, c0] + good[r0, c0]) / area
            if nodata > max_nodata_frac + 1e-9:
                skipped += 1
                continue
            lat, lon, _ = grid.frame.to_lla(e, n)
            tiles.append(GeoTile(len(tiles), float(lat), float(lon), float(e), float(n), tile_size_m))
    return tiles, skipped


def write_map_blocks(folder: Path, src, layout, progress: bool = True) -> tuple[list[dict], np.ndarray]:
    """Resample the source into the pack's map blocks (skipping blocks already written by an
    interrupted run; blocks without data are remembered in folder/.build). Returns (block table
    rows, valid fraction per COVERAGE_PX cell)."""
    from skyfix.tiles.ortho import iter_blocks
    cover = np.zeros((-(-layout.height_px // COVERAGE_PX), -(-layout.width_px // COVERAGE_PX)), np.float32)
    all_blocks = layout.blocks(BLOCK_PX)
    empty = folder / ".build" / "empty_blocks"
    empty.mkdir(parents=True, exist_ok=True)
    done = {(r, c) for r, c in all_blocks if block_path(folder, r, c).is_file() or (empty / f"{r}_{c}").is_file()}
    entries = []
    bar = tqdm(total=len(all_blocks), unit="block", desc="read map", disable=not progress, initial=len(done))
    for r, c in sorted(done):
        if block_path(folder, r, c).is_file():  # else a block without data
            data = block_path(folder, r, c).read_bytes()
            entries.append(table_row(r, c, data))
            _cover(cover, r, c, decode_block(data, f"map block {r}_{c} of the interrupted build in {folder}")[1])
    for r, c, rgb, valid in iter_blocks(src, layout, BLOCK_PX, skip=done):
        entry = write_block(folder, r, c, rgb, valid)
        if entry is None:
            (empty / f"{r}_{c}").touch()
        else:
            entries.append(entry)
            _cover(cover, r, c, valid)
        bar.update(1)
    bar.close()
    return entries, cover


def _cover(cover: np.ndarray, r: int, c: int, valid: np.ndarray) -> None:
    """Write a block's valid fraction per COVERAGE_PX cell into the coverage map."""
    import cv2
    h, w = valid.shape
    ch, cw = -(-h // COVERAGE_PX), -(-w // COVERAGE_PX)
    padded = np.zeros((ch * COVERAGE_PX, cw * COVERAGE_PX), np.float32)
    padded[:h, :w] = valid
    cells = cv2.resize(padded, (cw, ch), interpolation=cv2.INTER_AREA)
    k = BLOCK_PX // COVERAGE_PX
    cover[r * k:r * k + ch, c * k:c * k + cw] = cells


def _build_key(ortho, source_gsd_m, cfg: SkyfixConfig, model_id: str, extractors) -> str:
    """What a resumed build must share with the interrupted one: inputs (path, size, mtime),
    settings, model and feature extractors."""
    paths = [Path(p) for p in (ortho if isinstance(ortho, (list, tuple)) else [ortho])]
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else str(p) for p in paths]
    text = yaml.safe_dump({"schema": SCHEMA_VERSION, "inputs": stats, "source_gsd_m": source_gsd_m,
                           "tiles": config_to_dict(cfg)["tiles"], "model_id": model_id,
                           "features": [ex.identity for ex in extractors]})
    return hashlib.sha256(text.encode()).hexdigest()


OPENED = "opened"  # in the staging's .build/: the input was opened (the build is worth resuming)


def _input_opened(staging: Path) -> bool:
    """Whether a build got past opening its input: an input that cannot be opened (a text file
    named .tif) leaves nothing to resume. A source that fails while it is read (a tile server's
    error) can be resumed: what was read is kept (blocks here, tiles in GDAL's cache)."""
    return (staging / ".build" / OPENED).is_file()


def _staging(out: Path, key: str, log) -> Path:
    """The `<out>.partial` folder of this build: reused when an interrupted build of the same
    inputs left it, started afresh otherwise."""
    staging = out.with_name(f".{out.name}.partial")
    key_file = staging / ".build" / "key"
    if staging.exists():
        if key_file.is_file() and key_file.read_text() == key:
            log(f"resuming the interrupted build in {staging}")
            return staging
        log(f"{staging} is from a build of other inputs or settings: starting afresh")
        shutil.rmtree(staging)
    try:
        (staging / ".build").mkdir(parents=True)
        key_file.write_text(key)
    except OSError as exc:  # name what the user typed: the staging folder beside it is hidden
        raise PackError(f"cannot write {out}: {exc.strerror} (in {out.resolve().parent})") from exc
    return staging


def build_pack(ortho: "str | Path | Sequence", out: str | Path, cfg: SkyfixConfig, embedder, *,
               model_source: str = "", source_gsd_m: Optional[float] = None, progress: bool = True,
               log=print, cluster: Optional[str] = None) -> Path:
    """Build a TilePack from an orthophoto (one path, or several GeoTIFFs mosaicked) with the
    satellite-tower `embedder`, streaming and resumable (module docstring). Returns `out`.

    cluster: 'local:N' or a Dask scheduler address: the embedding stage runs there
    (tiles/distributed.py; the workers open `model_source`), the rest here."""
    from skyfix.edge.features import open_extractor
    t0, out, tc = time.perf_counter(), Path(out), cfg.tiles
    # Open the feature extractors first: a missing model fails before minutes of embedding.
    extractors = [open_extractor(name, cfg.nav.features_model or None) for name in tc.features]
    from skyfix.tiles.terrain import DemInput
    dem = DemInput.from_config(tc)
    if dem is not None and not dem.xyz:  # an unreadable DEM fails now, not after the embedding
        from skyfix.tiles.terrain import DemSource
        for path in dem.paths:
            DemSource(Path(path)).close()
    elif dem is not None:
        dem.label()  # an encoding the URL does not tell fails now
    projection = hash_head(tc, model_source, embedder) if tc.index == "binary" else None
    staging = _staging(out, _build_key(ortho, source_gsd_m, cfg, embedder.model_id, extractors), log)
    try:
        n_tiles, dt_embed = _build_into(staging, out, ortho, cfg, embedder, extractors, model_source, source_gsd_m,
                                        progress, log, cluster, projection)
    except BaseException:  # Ctrl-C included: the finished blocks and chunks stay for the next run
        if _input_opened(staging):
            log(f"build stopped; the work so far is kept in {staging}: run the same command again to resume")
        else:  # nothing finished (an unreadable input): nothing to resume, nothing left behind
            shutil.rmtree(staging, ignore_errors=True)
        raise
    total = time.perf_counter() - t0
    log(f"wrote {out}: {n_tiles} tiles, model {embedder.model_id}, {embedder.backend}; "
        f"embedding {n_tiles / max(dt_embed, 1e-9):.1f} tiles/s, total {total:.1f} s")
    return out


def hash_head(tc, model_source: str, embedder):
    """The hash head a binary index codes tiles with: tiles.hash_head, else the model folder's
    hash.npz; refused when it was trained on another model or takes another embedding size."""
    from skyfix.pack.hashing import HASH_FILE, HashProjection
    path = Path(tc.hash_head) if tc.hash_head else Path(model_source or ".") / HASH_FILE
    if not path.is_file():
        raise PackError(f"--index binary needs a hash head: {path} not found (train one with "
                        f"`skyfix train hash --model {model_source or 'MODEL'}`, or give --hash-head)")
    projection = HashProjection.load(path)
    if projection.model_id and projection.model_id != embedder.model_id:
        raise ModelMismatch(f"hash head {path} was trained on model {projection.model_id}, the tiles are "
                            f"embedded by {embedder.model_id}")
    if projection.dim != embedder.dim:
        raise ModelMismatch(f"hash head {path} takes {projection.dim}-d embeddings, the model gives {embedder.dim}")
    return projection


def _build_into(staging: Path, out: Path, ortho, cfg: SkyfixConfig, embedder, extractors, model_source: str,
                source_gsd_m, progress: bool, log, cluster, projection=None) -> tuple[int, float]:
    """The build's stages in the staging folder, each skipping what an interrupted run finished;
    the finished pack replaces `out`. Returns (tiles, seconds spent embedding)."""
    from skyfix.tiles.ortho import canvas_layout, read_source
    tc = cfg.tiles
    work = staging / ".build"
    src = read_source(ortho, source_gsd_m, mosaic_dir=work, nodata=tc.nodata, tiles_per_s=tc.server_tiles_per_s)
    (work / OPENED).touch()
    try:
        layout = canvas_layout(src, tc.gsd_m)
        log(f"map {src.name}: {layout.width_m:.0f} x {layout.height_m:.0f} m at {layout.gsd_m:.3f} m/px "
            f"({layout.width_px} x {layout.height_px} px, {len(layout.blocks(BLOCK_PX))} blocks)")
        entries, cover = write_map_blocks(staging, src, layout, progress)
    finally:
        src.close()
    write_table(staging, entries)
    blocks = MapBlocks(staging, layout.gsd_m, layout.frame, layout.east0_m, layout.north0_m,
                       layout.width_px, layout.height_px,
                       cache_blocks=row_sweep_cache(layout.width_px))
    tiles, skipped = tile_grid(blocks, tc.tile_size_m, tc.stride_m, tc.max_nodata_frac, (cover, COVERAGE_PX))
    log(f"map valid (not no-data): {100 * float(cover.mean()):.1f} %; {len(tiles)} tiles of {tc.tile_size_m:g} m "
        f"every {tc.stride_m:g} m ({skipped} skipped: more than {100 * tc.max_nodata_frac:g} % no-data)")
    t1 = time.perf_counter()
    if cluster:
        from skyfix.tiles.distributed import embed_on_cluster
        embed_on_cluster(cluster, model_source, cfg.model, embedder.model_id, blocks, tiles, tc.batch_size,
                         work, embed.EMBED_CHUNK, progress, log)
    # Chunks already embedded (by a cluster, or before an interruption) are loaded, not redone.
    vectors = embed.embed_tiles(blocks, tiles, embedder, tc.batch_size, progress, chunk_dir=work)
    dt_embed = time.perf_counter() - t1
    features = {}
    for ex in extractors:
        done = work / f"features_{ex.name}.yaml"
        if done.is_file():
            features[ex.name] = yaml.safe_load(done.read_text())
            continue
        features[ex.name] = write_map_features(staging, blocks, ex, tc.features_per_mpx, progress)
        done.write_text(yaml.safe_dump(features[ex.name]))
    t2 = time.perf_counter()
    source = ", ".join(map(str, ortho)) if isinstance(ortho, (list, tuple)) else str(ortho)
    imagery = {"source": tc.imagery_source or source, "date": tc.imagery_date, "licence": tc.imagery_licence}
    write_pack_files(staging, blocks, tiles, vectors, model_id=embedder.model_id, tile_px=embedder.input_px,
                     stride_m=tc.stride_m, index_kind=tc.index, imagery=imagery, source=source,
                     crs=str(src.crs) if src.crs is not None else "local (not georeferenced)",
                     model_source=model_source, features=features, projection=projection,
                     map_accuracy_m=tc.map_accuracy_m,
                     extra_files={"config.yaml": yaml.safe_dump(config_to_dict(cfg), sort_keys=False)})
    log(f"index {tc.index}: {time.perf_counter() - t2:.1f} s")
    _ground_and_levels(staging, cfg, embedder, model_source, cluster, progress, log)
    shutil.rmtree(work)
    replace_directory(staging, out)
    return len(tiles), dt_embed


def _ground_and_levels(staging: Path, cfg: SkyfixConfig, embedder, model_source: str, cluster, progress: bool,
                       log) -> None:
    """The build's last stages: what the map's accuracy is taken as, the terrain (or the
    flat-ground allowance, said), and the finer levels the heights flown need (said)."""
    tc, work = cfg.tiles, staging / ".build"
    if tc.map_accuracy_m is None:
        log(f"the map's absolute accuracy is not stated: nav.map_bias_m ({cfg.nav.map_bias_m:g} m per axis) is "
            "added to every fix's accuracy; state it with --map-accuracy-m")
    from skyfix.tiles.terrain import DemInput, add_terrain
    dem = DemInput.from_config(tc)
    if dem is not None:
        add_terrain(staging, dem, tc.dem_gsd_m, log)
    else:
        log(f"no terrain: flat ground assumed, slopes of nav.ground_slope_deg ({cfg.nav.ground_slope_deg:g} deg) "
            "allowed for in every fix's accuracy; add heights with --dem DEM.tif or --dem-xyz URL")
    from skyfix.edge.camera import PinholeCamera
    cam = PinholeCamera.from_config(cfg.camera)
    levels_m = planned_levels_m(tc.tile_size_m, tc.levels_m, tc.min_agl_m, cam)
    for size_m in levels_m:  # embedded like the main tiles: in resumable chunks, on the cluster when given
        add_level(staging, float(size_m), float(size_m) * tc.stride_m / tc.tile_size_m, embedder, tc.batch_size,
                  tc.max_nodata_frac, tc.index if tc.index == "flat" else "hnsw", progress, log,
                  chunk_dir=work / f"level_{size_m:g}", cluster=(cluster, model_source, cfg.model) if cluster else None)
    log(describe_heights([tc.tile_size_m, *levels_m], cam))


def write_pack(out_dir: str | Path, canvas: MapCanvas, tiles: list[GeoTile], vectors: np.ndarray,
               *, model_id: str, tile_px: int, stride_m: float, index_kind: str = "flat",
               imagery: Optional[dict] = None, source: str = "", crs: str = "",
               model_source: str = "", extra_files: Optional[dict] = None,
               extractors: tuple = (), features_per_mpx: int = 8000, progress: bool = False,
               projection=None) -> Path:
    """Write a TilePack of an in-memory canvas atomically (built in a temporary folder, then
    renamed). Returns out_dir. (`skyfix tiles build` streams large maps through
    `write_pack_files` instead.)

    vectors: float32 N x D unit vectors, row i embeds tiles[i] (tile_id == i).
    extra_files: {name: text} written beside the manifest (e.g. the resolved config).
    extractors: local-feature extractors (edge.features) whose map features the pack carries.
    projection: the hash head (pack.hashing.HashProjection) of a binary index.
    """
    with atomic_directory(out_dir) as tmp:
        write_canvas_blocks(tmp, canvas)
        features = {ex.name: write_map_features(tmp, canvas, ex, features_per_mpx, progress) for ex in extractors}
        write_pack_files(tmp, canvas, tiles, vectors, model_id=model_id, tile_px=tile_px, stride_m=stride_m,
                         index_kind=index_kind, imagery=imagery, source=source, crs=crs,
                         model_source=model_source, extra_files=extra_files, features=features,
                         projection=projection)
    return Path(out_dir)


def record_accuracy(pack_path: str | Path, map_accuracy_m: Optional[float] = None,
                    dem_accuracy_m: Optional[float] = None) -> dict:
    """Record the map's stated absolute horizontal accuracy and/or its terrain's vertical
    accuracy (m, 1 sigma) in a pack's manifest (one rename); returns the manifest. PackError
    for a terrain accuracy on a pack without terrain."""
    pack = TilePack.open(pack_path)
    manifest = dict(pack.manifest)
    if map_accuracy_m is not None:
        manifest["map"] = {**manifest["map"], "accuracy_m": float(map_accuracy_m)}
    if dem_accuracy_m is not None:
        if not manifest.get("terrain"):
            raise PackError(f"pack {pack.path} has no terrain to state the accuracy of: skyfix tiles terrain first")
        manifest["terrain"] = {**manifest["terrain"], "vertical_accuracy_m": float(dem_accuracy_m),
                               "vertical_accuracy_stated": True}
    replace_manifest(pack.path, manifest)
    return manifest


def add_features(pack_path: str | Path, extractor, per_mpx: int, progress: bool = True) -> dict:
    """Compute the map's features with `extractor` and add (or replace) them in an existing pack.

    The folder is written beside the old one and swapped in, then the manifest is replaced in
    one rename, so an interrupted run leaves the pack as it was. Returns the manifest entry."""
    pack = TilePack.open(pack_path)
    canvas = pack.map_blocks(cache_blocks=row_sweep_cache(int(pack.manifest["map"]["width_px"])))
    staging = pack.path / f".features-{extractor.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        entry = write_map_features(staging, canvas, extractor, per_mpx, progress)
        final = pack.path / "features" / extractor.name
        final.parent.mkdir(exist_ok=True)
        old = final.with_name(f".{extractor.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        (staging / "features" / extractor.name).rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest = dict(pack.manifest)
    manifest["features"] = {**(manifest.get("features") or {}), extractor.name: entry}
    replace_manifest(pack.path, manifest)
    return entry


def map_coverage(blocks: MapBlocks) -> np.ndarray:
    """The valid fraction of a pack's map per COVERAGE_PX cell, read block by block (what the
    build keeps while it writes the blocks, for a pack already built)."""
    cover = np.zeros((-(-blocks.height_px // COVERAGE_PX), -(-blocks.width_px // COVERAGE_PX)), np.float32)
    bp = blocks.block_px
    for r in range(-(-blocks.height_px // bp)):
        for c in range(-(-blocks.width_px // bp)):
            _, valid = blocks.read_px(r * bp, min((r + 1) * bp, blocks.height_px), c * bp,
                                      min((c + 1) * bp, blocks.width_px))
            _cover(cover, r, c, valid)
    return cover


def planned_levels_m(tile_size_m: float, levels_m: Sequence[float], min_agl_m: float,
                     cam: PinholeCamera) -> list[float]:
    """The finer tile sizes (m) a build adds: `levels_m` when given, else the one level whose tiles
    a frame of `cam` covers from `min_agl_m` up (none when the main tiles already do, or
    min_agl_m is 0). Its size scales with the height; at least 10 m."""
    from skyfix.edge.camera import lowest_agl_m
    if levels_m:
        return sorted({float(s) for s in levels_m}, reverse=True)
    main_from_m = lowest_agl_m(cam, tile_size_m)
    if not min_agl_m or main_from_m <= min_agl_m:
        return []
    return [max(10.0, float(math.floor(tile_size_m * min_agl_m / main_from_m)))]


def describe_heights(tile_sizes_m: Sequence[float], cam: PinholeCamera) -> str:
    """One line: from which height (m above ground) a lost vehicle with camera `cam` gets fixes,
    and from which height each tile size serves."""
    from skyfix.edge.camera import lowest_agl_m
    served = sorted(((float(s), lowest_agl_m(cam, float(s))) for s in tile_sizes_m), key=lambda p: -p[0])
    each = ", ".join(f"{size:g} m tiles from {agl:.0f} m" for size, agl in served)
    return (f"fixes from {served[-1][1]:.0f} m above ground up for a {cam.width_px}x{cam.height_px} camera of "
            f"fx {cam.fx_px:.0f} px ({each}); lower, only a track goes on (a finer level: skyfix tiles level "
            "PACK --tile-size-m S)")


def add_level(pack_path: str | Path, tile_size_m: float, stride_m: float, embedder, batch_size: int = 16,
              max_nodata_frac: float = 0.02, index_kind: str = "flat", progress: bool = True, log=print,
              chunk_dir: Optional[Path] = None, cluster: Optional[tuple] = None) -> dict:
    """Add (or replace) a level of finer tiles to a pack: tile_size_m tiles every stride_m over
    the same map, embedded by the pack's own satellite tower (`embedder`), in levels/SIZE/. The
    onboard loop searches them when the frame is too low for the main tiles to fit (take-off,
    landing, low inspection). The files are written under a temporary name and renamed into
    place, then the manifest is replaced in one rename. Returns the manifest entry.
    chunk_dir: keep the embedded chunks there (an interrupted build resumes them); cluster:
    (spec, model source, ModelConfig) to embed the chunks on (tiles/distributed.py)."""
    from skyfix.pack.tilepack import level_dir, write_tile_set
    pack = TilePack.open(pack_path)
    if embedder.model_id != pack.model_id:
        raise ModelMismatch(f"pack {pack.path} was embedded by {pack.model_id}, the model given is "
                            f"{embedder.model_id}: a level must be embedded by the pack's own model")
    if not 10.0 <= tile_size_m < pack.tile_size_m:
        raise PackError(f"a level's tiles must be at least 10 m and smaller than the pack's {pack.tile_size_m:g} m; "
                        f"got {tile_size_m:g} m")
    blocks = pack.map_blocks(cache_blocks=row_sweep_cache(int(pack.manifest["map"]["width_px"])))
    tiles, skipped = tile_grid(blocks, tile_size_m, stride_m, max_nodata_frac, (map_coverage(blocks), COVERAGE_PX))
    log(f"level of {tile_size_m:g} m tiles every {stride_m:g} m: {len(tiles)} tiles ({skipped} skipped: no-data)")
    if chunk_dir is not None:
        chunk_dir.mkdir(parents=True, exist_ok=True)
    if cluster:
        from skyfix.tiles.distributed import embed_on_cluster
        embed_on_cluster(cluster[0], cluster[1], cluster[2], embedder.model_id, blocks, tiles, batch_size, chunk_dir,
                         embed.EMBED_CHUNK, progress, log)
    vectors = embed.embed_tiles(blocks, tiles, embedder, batch_size, progress, chunk_dir=chunk_dir)
    name = level_dir(tile_size_m)
    final = pack.path / name
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    _, files = write_tile_set(staging, tiles, vectors, index_kind)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    entry = {"tile_size_m": float(tile_size_m), "stride_m": float(stride_m), "tile_px": int(embedder.input_px),
             "tiles": len(tiles), "index": index_kind}
    manifest = dict(pack.manifest)
    manifest["levels"] = sorted([e for e in manifest.get("levels") or [] if float(e["tile_size_m"]) != tile_size_m]
                                + [entry], key=lambda e: -float(e["tile_size_m"]))
    kept = {k: v for k, v in manifest["files"].items() if not k.startswith(name + "/")}
    manifest["files"] = {**kept, **{f"{name}/{f}": file_digest(final / f) for f in files}}
    replace_manifest(pack.path, manifest)
    return entry
