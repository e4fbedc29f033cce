"""A long flight: memory, files, threads and latency per period (docs/soak.md)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from skyfix.bench.common import _rss_mb, pack_drone_embedder
from skyfix.sim.score import rss_floors_mb, rss_trend_mb_per_h


def _process_sample(t0: float) -> dict:
    import threading
    return {"t_min": (time.monotonic() - t0) / 60, "rss_mb": _rss_mb(),
            "fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count()}


def bench_soak(pack_path: str, duration_s: float = 3600.0, sample_s: Optional[float] = None,
               out_dir: str = "out/bench/soak") -> str:
    """A long simulated lawnmower flight in real time, sampling RSS, open file descriptors and
    threads every sample_s (default: 48 samples over the flight, at most one a minute), and the
    per-frame latency per sample period. Writes soak.json and
    soak.png to out_dir; returns a markdown summary."""
    import json
    import threading

    from skyfix.config import load_config
    from skyfix.pack.tilepack import TilePack
    from skyfix.sim.run import fly, prepare_flight, summarise, write_outputs
    # Long enough for the whole duration: the rounded turns at the legs' ends are flown slower.
    cfg = load_config(overrides={"sim": {"route": "lawnmower", "duration_s": duration_s,
                                         "length_m": duration_s * 12.0 * 1.3 + 1000.0}})
    embedder = pack_drone_embedder(pack_path)
    sample_s = sample_s or min(60.0, duration_s / 48)
    samples: list = []

    def sampler(_connection):
        stop, t0 = threading.Event(), time.monotonic()

        def run():
            while True:
                samples.append(_process_sample(t0))
                if stop.wait(sample_s):
                    return
        thread = threading.Thread(target=run, daemon=True, name="soak-sampler")
        thread.start()
        return lambda: (stop.set(), thread.join(5))

    flight = prepare_flight(TilePack.open(pack_path, expect_model_id=embedder.model_id), embedder, cfg)
    frames, received, link = fly(flight, cfg, progress=False, interference=sampler)
    s = summarise(flight, frames, received, link, cfg)
    write_outputs(flight, received, s, Path(out_dir))
    for smp in samples:  # frame latency in the period before each sample
        ms = [f["frame_ms"] for f in frames
              if f.get("frame_ms") and smp["t_min"] - sample_s / 60 <= f["t_s"] / 60 < smp["t_min"]]
        smp.update({"frame_ms_p50": float(np.percentile(ms, 50)) if ms else None,
                    "frame_ms_p95": float(np.percentile(ms, 95)) if ms else None})
    Path(out_dir, "soak.json").write_text(json.dumps({"summary": {k: s[k] for k in ("error_m", "availability",
                                                        "n_published", "confident_wrong_fixes")},
                                                       "samples": samples}, indent=1))
    _plot_soak(samples, Path(out_dir) / "soak.png")
    after5 = [x for x in samples if x["t_min"] >= 5] or samples
    rss = [x["rss_mb"] for x in after5]
    lat = [x["frame_ms_p50"] for x in after5 if x["frame_ms_p50"]]
    return "\n".join([
        f"| soak: {duration_s / 60:.0f} min lawnmower, {len(samples)} samples | value |", "|---|---|",
        f"| RSS after 5 min: min / max / end, MB | {min(rss):.0f} / {max(rss):.0f} / {rss[-1]:.0f} |",
        "| RSS floor after 5 min, first / last third (lowest sample), MB | {:.0f} / {:.0f} |".format(*rss_floors_mb(after5)),
        f"| RSS trend after 5 min (least squares), MB per hour | {rss_trend_mb_per_h(after5):+.0f} |",
        f"| frame latency p50, first / last period after 5 min, ms | {lat[0]:.0f} / {lat[-1]:.0f} |" if lat else "| frame latency | n/a |",
        f"| threads min / max | {min(x['threads'] for x in samples)} / {max(x['threads'] for x in samples)} |",
        f"| open files min / max | {min(x['fds'] for x in samples)} / {max(x['fds'] for x in samples)} |",
        f"| published / availability / error median, max m / wrong confident | {s['n_published']} / "
        f"{100 * s['availability']:.1f} % / {s['error_m']['median']:.2f}, {s['error_m']['max']:.2f} / "
        f"{s['confident_wrong_fixes']} |"])


def _plot_soak(samples: list, path: Path) -> None:
    """Three stacked line plots (RSS MB, frame latency p50/p95 ms, threads and open files)
    against minutes, drawn with OpenCV."""
    import cv2
    w, h, pad = 900, 200, 50
    img = np.full((3 * h + pad, w, 3), 255, np.uint8)
    t = np.array([x["t_min"] for x in samples])
    panels = [("RSS MB", [("rss_mb", (200, 0, 0))]),
              ("frame ms p50 (blue) / p95 (red)", [("frame_ms_p50", (200, 0, 0)), ("frame_ms_p95", (0, 0, 200))]),
              ("threads (blue) / open files (red)", [("threads", (200, 0, 0)), ("fds", (0, 0, 200))])]
    tmax = max(float(t.max()) if len(t) else 1.0, 1e-6)
    for k, (title, series) in enumerate(panels):
        y0 = k * h + pad // 2
        vals = [v for key, _ in series for v in (x[key] for x in samples) if v is not None]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        lo, hi = min(lo, 0.0), hi * 1.1 + 1e-6
        cv2.rectangle(img, (pad, y0), (w - 10, y0 + h - pad), (180, 180, 180), 1)
        cv2.putText(img, f"{title}  (0 .. {hi:.0f})", (pad + 5, y0 + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        for key, colour in series:
            pts = [(int(pad + (w - 10 - pad) * tt / tmax), int(y0 + (h - pad) * (1 - (v - lo) / (hi - lo))))
                   for tt, v in zip(t, (x[key] for x in samples)) if v is not None]
            if len(pts) > 1:
                cv2.polylines(img, [np.array(pts, np.int32)], False, colour, 2)
    cv2.putText(img, f"minutes (0 .. {tmax:.0f})", (w // 2 - 60, 3 * h + pad // 2 - 5), cv2.FONT_HERSHEY_SIMPLEX,
                0.5, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)
