"""Embedding latency and lower-precision exports (docs/precision.md)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from skyfix.bench.common import _latency_ms, _row


def bench_embed(model_dir: str, runs: int = 50) -> str:
    from skyfix.edge.embedders import OnnxEmbedder, tower_onnx
    emb = OnnxEmbedder(tower_onnx(model_dir, "drone"))
    rng = np.random.default_rng(0)
    rows = ["| embedding (onnxruntime, " + emb.backend + ") | p50 ms | p95 ms | per image |",
            "|---|---|---|---|"]
    for batch in (1, 8):
        x = rng.integers(0, 256, (batch, emb.input_px, emb.input_px, 3), dtype=np.uint8)
        ms = _latency_ms(lambda: emb.embed(x), warmup=5, runs=runs)
        rows.append(_row(f"batch {batch}, {emb.input_px} px", ms,
                         f"{np.percentile(ms, 50) / batch:.2f} ms"))
    return "\n".join(rows)


def bench_precision(model_dir: str, sources: list, out: str = "out/bench/precision", calib_n: int = 512,
                    method: str = "minmax", runs: int = 50) -> str:
    """Export INT8 and FP16 from an FP32 model folder for each calibration source (loss
    accepted, so every figure is seen), then time batch-1 onnxruntime CPU latency of FP32, INT8
    and FP16 in one interleaved run (same machine state)."""
    from skyfix.edge.embedders import OnnxEmbedder, tower_onnx
    from skyfix.export.precision import export_precision
    rows = ["| views from | precision | calibration | R@1 FP32 -> low (onboard / both towers) | top-1 agreement (onboard / both) | cosine to FP32 min / median | gate |",
            "|---|---|---|---|---|---|---|"]
    last = {}
    for src in sources:
        for precision in ("int8", "fp16"):
            dst = Path(out) / f"{Path(src).name}-{precision}"
            card = export_precision(model_dir, dst, precision, src, calib_n=calib_n, method=method,
                                    accept_loss=True, log=lambda m: print(m, flush=True))
            g = card["parity_gate"]
            calib = f"{method}, {calib_n} views" if precision == "int8" else "-"
            rows.append(f"| {Path(src).name} | {precision} | {calib} | {g['fp32']['r1']:.3f} -> {g['onboard']['r1']:.3f} / "
                        f"{g['both']['r1']:.3f} | {g['onboard']['top1_agreement']:.1%} / {g['both']['top1_agreement']:.1%} | "
                        f"{g['cosine']['min']:.4f} / {g['cosine']['median']:.4f} | {'pass' if g['passed'] else 'FAIL'} |")
            last[precision] = dst
    embedders = {"fp32": OnnxEmbedder(tower_onnx(model_dir, "drone"), providers=["CPUExecutionProvider"])}
    embedders.update({p: OnnxEmbedder(tower_onnx(d, "drone"), providers=["CPUExecutionProvider"]) for p, d in last.items()})
    x = np.random.default_rng(0).integers(0, 256, (1, embedders["fp32"].input_px, embedders["fp32"].input_px, 3),
                                          dtype=np.uint8)
    times = {p: [] for p in embedders}
    for _ in range(5):
        for e in embedders.values():
            e.embed(x)
    for _ in range(runs):  # interleaved, so a busy moment of the machine hits all alike
        for p, e in embedders.items():
            t0 = time.perf_counter()
            e.embed(x)
            times[p].append((time.perf_counter() - t0) * 1e3)
    rows += ["", "| drone tower, onnxruntime CPU, batch 1 | p50 ms | p95 ms | vs FP32 |", "|---|---|---|---|"]
    base = np.percentile(times["fp32"], 50)
    rows += [_row(p, np.array(t), f"{np.percentile(t, 50) / base:.2f}x") for p, t in times.items()]
    return "\n".join(rows)
