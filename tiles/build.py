"""`skyfix tiles build`: orthophoto -> metric tile grid -> satellite-tower embeddings -> TilePack."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import yaml
from tqdm import tqdm

from skyfix.config import SkyfixConfig, config_to_dict
from skyfix.contracts import GeoTile
from skyfix.errors import PackError
from skyfix.tiles.canvas import MapCanvas
from skyfix.tiles.pack import write_pack


def tile_grid(canvas: MapCanvas, tile_size_m: float, stride_m: float,
              max_nodata_frac: float = 0.02) -> tuple[list[GeoTile], int]:
    """Square north-up tiles of `tile_size_m` every `stride_m` over the canvas, skipping nodata.

    Returns (tiles with ids 0..N-1 in row-major order from the north-west, number skipped).
    """
    if stride_m <= 0 or tile_size_m <= 0:
        raise PackError(f"tile size and stride must be positive, got {tile_size_m}, {stride_m}")
    e_min, n_min, e_max, n_max = canvas.bounds_en()
    half = tile_size_m / 2
    easts = np.arange(e_min + half, e_max - half + 1e-6, stride_m)
    norths = np.arange(n_max - half, n_min + half - 1e-6, -stride_m)
    if easts.size == 0 or norths.size == 0:
        raise PackError(f"the map ({e_max - e_min:.0f} x {n_max - n_min:.0f} m) is smaller than "
                        f"one tile of {tile_size_m} m")
    # Integral image of nodata for a fast per-tile nodata fraction.
    bad = np.pad((~canvas.valid).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    tiles, skipped = [], 0
    size_px = tile_size_m / canvas.gsd_m
    for n in norths:
        for e in easts:
            c0, r0 = canvas.px_from_en(e - half, n + half)
            c0, r0 = int(round(c0 + 0.5)), int(round(r0 + 0.5))
            c1, r1 = c0 + int(round(size_px)), r0 + int(round(size_px))
            nodata = bad[r1, c1] - bad[r0, c1] - bad[r1, c0] + bad[r0, c0]
            if nodata / max((r1 - r0) * (c1 - c0), 1) > max_nodata_frac:
                skipped += 1
                continue
            lat, lon, _ = canvas.frame.to_lla(e, n)
            tiles.append(GeoTile(len(tiles), float(lat), float(lon), float(e), float(n), tile_size_m))
    return tiles, skipped


def render_tiles(canvas: MapCanvas, tiles: list[GeoTile], tile_px: int) -> np.ndarray:
    """uint8 N x tile_px x tile_px x 3 north-up renders of the tiles."""
    return np.stack([canvas.render(t.east_m, t.north_m, t.size_m, tile_px)[0] for t in tiles])


def embed_tiles(canvas: MapCanvas, tiles: list[GeoTile], embedder, batch_size: int,
                progress: bool = True) -> np.ndarray:
    """Render and embed tiles in batches; float32 N x D."""
    out = []
    bar = tqdm(total=len(tiles), unit="tile", desc="embed tiles", disable=not progress)
    for i in range(0, len(tiles), batch_size):
        batch = tiles[i:i + batch_size]
        out.append(embedder.embed(render_tiles(canvas, batch, embedder.input_px)))
        bar.update(len(batch))
    bar.close()
    return np.concatenate(out)


def build_pack(ortho: str | Path, out: str | Path, cfg: SkyfixConfig, embedder, *,
               model_source: str = "",
               source_gsd_m: Optional[float] = None, progress: bool = True, log=print) -> Path:
    """Build a TilePack from an orthophoto with the satellite-tower `embedder`. Returns `out`."""
    from skyfix.edge.features import open_extractor
    from skyfix.tiles.ortho import read_source, to_canvas
    t0 = time.perf_counter()
    # Open the feature extractors first: a missing model fails before minutes of embedding.
    extractors = [open_extractor(name, cfg.nav.features_model or None) for name in cfg.tiles.features]
    src = read_source(ortho, source_gsd_m)
    canvas = to_canvas(src, cfg.tiles.gsd_m)
    tc = cfg.tiles
    tiles, skipped = tile_grid(canvas, tc.tile_size_m, tc.stride_m, tc.max_nodata_frac)
    log(f"map {Path(ortho).name}: {canvas.width_m:.0f} x {canvas.height_m:.0f} m at "
        f"{canvas.gsd_m:.3f} m/px; {len(tiles)} tiles of {tc.tile_size_m:g} m every "
        f"{tc.stride_m:g} m ({skipped} skipped for nodata)")
    t1 = time.perf_counter()
    vectors = embed_tiles(canvas, tiles, embedder, tc.batch_size, progress)
    dt_embed = time.perf_counter() - t1
    imagery = {"source": tc.imagery_source or str(ortho), "date": tc.imagery_date,
               "licence": tc.imagery_licence}
    crs = str(src.crs) if src.crs is not None else "local (not georeferenced)"
    write_pack(out, canvas, tiles, vectors, model_id=embedder.model_id, tile_px=embedder.input_px,
               stride_m=tc.stride_m, index_kind=tc.index, imagery=imagery, source=str(ortho),
               crs=crs, model_source=model_source, extractors=extractors,
               features_per_mpx=tc.features_per_mpx, progress=progress,
               extra_files={"config.yaml": yaml.safe_dump(config_to_dict(cfg), sort_keys=False)})
    total = time.perf_counter() - t0
    log(f"wrote {out}: {len(tiles)} tiles, model {embedder.model_id}, {embedder.backend}; "
        f"embedding {len(tiles) / dt_embed:.1f} tiles/s, total {total:.1f} s "
        f"({len(tiles) / total:.1f} tiles/s)")
    return Path(out)
