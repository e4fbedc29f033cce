"""Embedding the pack's tiles: render each tile north-up from the map and embed it with the
satellite tower, in chunks saved as they are done (the unit of resuming an interrupted build and
of a Dask shard, tiles/distributed.py)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from tqdm import tqdm

from skyfix.contracts import GeoTile

if TYPE_CHECKING:
    from skyfix.pack.blocks import MapBlocks
    from skyfix.pack.canvas import MapCanvas

EMBED_CHUNK = 4096  # tiles per saved chunk of embeddings (the unit of resuming)


def render_tiles(canvas: "MapCanvas | MapBlocks", tiles: list[GeoTile], tile_px: int) -> np.ndarray:
    """uint8 N x tile_px x tile_px x 3 north-up renders of the tiles."""
    return np.stack([canvas.render(t.east_m, t.north_m, t.size_m, tile_px)[0] for t in tiles])


def chunk_path(chunk_dir: Path, start: int, n: int) -> Path:
    """The file of the embeddings of tiles[start:start + n] (the unit of resuming and of a Dask shard)."""
    return chunk_dir / f"vectors_{start:09d}_{n}.npy"


def embed_batches(canvas: "MapCanvas | MapBlocks", tiles: list[GeoTile], embedder, batch_size: int,
                  on_batch=lambda n: None) -> np.ndarray:
    """Render and embed tiles, batch_size at a time; float32 N x D. on_batch(n) after each batch."""
    vecs = []
    for i in range(0, len(tiles), batch_size):
        batch = tiles[i:i + batch_size]
        vecs.append(embedder.embed(render_tiles(canvas, batch, embedder.input_px)))
        on_batch(len(batch))
    return np.concatenate(vecs)


def save_chunk(path: Path, vectors: np.ndarray) -> None:
    """Write a chunk file atomically: a chunk cut short by a stop never has its final name."""
    np.save(path.with_suffix(".tmp.npy"), vectors, allow_pickle=False)
    path.with_suffix(".tmp.npy").rename(path)


def embed_tiles(canvas: "MapCanvas | MapBlocks", tiles: list[GeoTile], embedder, batch_size: int,
                progress: bool = True, chunk_dir: Optional[Path] = None) -> np.ndarray:
    """Render and embed tiles in batches; float32 N x D. With `chunk_dir`, every EMBED_CHUNK
    tiles are saved there as they are done and chunks already there are loaded, not redone."""
    bar = tqdm(total=len(tiles), unit="tile", desc="embed tiles", disable=not progress)
    if chunk_dir is None:
        out = embed_batches(canvas, tiles, embedder, batch_size, bar.update)
        bar.close()
        return out
    out = []
    for start in range(0, len(tiles), EMBED_CHUNK):
        part = tiles[start:start + EMBED_CHUNK]
        path = chunk_path(chunk_dir, start, len(part))
        if path.is_file():
            out.append(np.load(path, allow_pickle=False))
            bar.update(len(part))
            continue
        out.append(embed_batches(canvas, part, embedder, batch_size, bar.update))
        save_chunk(path, out[-1])
    bar.close()
    return np.concatenate(out)
