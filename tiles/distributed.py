"""The embedding stage of `skyfix tiles build` on a Dask cluster (ground station only).

The tile list is cut into shards (the build's chunks of EMBED_CHUNK tiles); each Dask task opens
the model and the pack's map blocks from the build folder, renders and embeds its shard, and
saves the chunk file the single-machine build would have saved. The build then merges the chunks
in tile order exactly as it resumes an interrupted build, so both paths write the same pack.

Workers must see the build folder and the model at the same paths (one machine, or a shared
file system). Dask moves tasks with pickle: run the cluster on a network you trust.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from skyfix.errors import SkyfixError, require


def _embed_shard(model: str, model_cfg, model_id: str, blocks, tiles: list, start: int,
                 batch_size: int, chunk_dir: str) -> str:
    """One task: embed tiles (tiles[start:start + len] of the build) into their chunk file;
    returns the file name."""
    from skyfix.edge.models import open_towers
    from skyfix.tiles.embed import chunk_path, embed_batches, save_chunk
    embedder = open_towers(model, "sat", model_cfg)
    if embedder.model_id != model_id:
        raise SkyfixError(f"worker's model {model} is {embedder.model_id}, the build's is {model_id}: "
                          "workers must see the same model files")
    path = chunk_path(Path(chunk_dir), start, len(tiles))
    save_chunk(path, embed_batches(blocks, tiles, embedder, batch_size))
    return path.name


def parse_cluster(spec: str) -> tuple[Optional[int], Optional[str]]:
    """'local:N' -> (N workers on this machine, None); 'tcp://host:port' -> (None, address)."""
    if spec.startswith("local:") and spec[6:].isdigit() and int(spec[6:]) > 0:
        return int(spec[6:]), None
    if "://" in spec:
        return None, spec
    raise SkyfixError(f"--cluster '{spec}': give local:N (N workers here) or a scheduler address tcp://HOST:PORT")


def embed_on_cluster(spec: str, model: str, model_cfg, model_id: str, blocks, tiles: list, batch_size: int,
                     chunk_dir: Path, chunk: int, progress: bool = True, log=print) -> None:
    """Embed every chunk of `tiles` not yet in chunk_dir on the Dask cluster `spec` (parse_cluster)."""
    from skyfix.tiles.embed import chunk_path
    distributed = require("distributed")
    n_local, address = parse_cluster(spec)
    todo = [s for s in range(0, len(tiles), chunk) if not chunk_path(chunk_dir, s, len(tiles[s:s + chunk])).is_file()]
    if not todo:
        return
    # LocalCluster writes its workers' settings into this process's environment (OMP_NUM_THREADS=1,
    # PYTHONHASHSEED, ...), where they would change later child processes: put it back after.
    environ = dict(os.environ)
    cluster = (distributed.LocalCluster(n_workers=n_local, threads_per_worker=1, processes=True,
                                        dashboard_address=None) if n_local else None)
    try:
        with distributed.Client(cluster or address) as client:
            log(f"embedding {len(todo)} shards of {chunk} tiles on {len(client.scheduler_info()['workers'])} "
                f"Dask workers ({spec})")
            fresh = blocks.reopened()  # what each task receives: the block table, no decoded blocks
            futures = [client.submit(_embed_shard, model, model_cfg, model_id, fresh, tiles[s:s + chunk], s,
                                     batch_size, str(chunk_dir), pure=False) for s in todo]
            iterator = distributed.as_completed(futures)
            if progress:
                from tqdm import tqdm
                iterator = tqdm(iterator, total=len(futures), unit="shard", desc="embed tiles (cluster)")
            for future in iterator:
                future.result()  # a failed shard raises here, with the worker's error
    finally:
        if cluster is not None:
            cluster.close()
        os.environ.clear()
        os.environ.update(environ)
