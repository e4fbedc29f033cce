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
