"""What the benchmarks share: the shared data folder, latency timing, table rows."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # beside the repository


def _latency_ms(fn, warmup: int, runs: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return np.array(out)


def _row(name: str, ms: np.ndarray, extra: str = "") -> str:
    return f"| {name} | {np.percentile(ms, 50):.2f} | {np.percentile(ms, 95):.2f} | {extra} |"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def pack_drone_embedder(pack_path: str):
    """The drone tower of the model a pack was built by (the flights of the benchmarks)."""
    from skyfix.config import load_config
    from skyfix.edge.models import model_for_pack
    from skyfix.export.models import load_embedder
    from skyfix.pack.tilepack import TilePack
    return load_embedder(model_for_pack(TilePack.open(pack_path)), "drone", load_config().model)


def fmt(value, spec: str = "{:.1f}") -> str:
    """A table cell: the value formatted, or 'n/a' for None."""
    return "n/a" if value is None else spec.format(value)
