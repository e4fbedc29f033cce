"""A recorded flight replayed (docs/replay.md): the live simulator flight against its replay from
the recorded video and .tlog, and the camera-log offset the replay estimates."""
from __future__ import annotations

from pathlib import Path

from skyfix.bench.common import fmt, pack_drone_embedder


def bench_replay(pack_path: str, duration_s: float = 60.0, offsets_s=(0.0, 0.5, -1.0),
                 out: str = "out/bench/replay") -> str:
    """Fly the simulator for duration_s with the recording on, then replay its video and log with
    each camera-log offset added (a camera clock that far off): error, calibration and the
    offset the replay estimates, beside the live flight's."""
    from skyfix.config import load_config
    from skyfix.replay.run import run_replay
    from skyfix.sim.run import run_sim
    cfg = load_config(overrides={"sim": {"duration_s": duration_s, "route": "lawnmower", "seed": 5}})
    live = run_sim(pack_path, pack_drone_embedder(pack_path), cfg, out_dir=str(Path(out) / "live"), progress=False,
                   record=True)
    rec = live["recording"]
    cfg = load_config(overrides={"nav": {"model": _pack_model(pack_path)}})
    rows = ["| run | offset added s | fixes | availability | error median / p95 / max m | median error / accuracy | "
            "beyond 3x | --time-offset-s the replay suggests | warned |", "|---|---|---|---|---|---|---|---|---|",
            f"| live (simulator in the loop) | | {live['n_published']} | {fmt(100 * live['availability'])} % | "
            f"{fmt(live['error_m']['median'])} / {fmt(live['error_m']['p95'])} / {fmt(live['error_m']['max'])} | "
            f"{fmt(live['calibration'].get('median_error_over_accuracy'), '{:.2f}')} | "
            f"**{live['calibration'].get('beyond_3x', 0)}** | | |"]
    print(rows[-1], flush=True)
    for off in offsets_s:
        r = run_replay(rec["video"], rec["log"], pack_path, cfg, str(Path(out) / f"replay_{off:+g}"),
                       rec["video_start_utc"], off, progress=False)
        est = r.get("time_offset_estimate_s")
        e = r["error_m"]
        rows.append(f"| replay of the video and .tlog | {off:+g} | {r['n_published']} | {fmt(100 * r['availability'])} % | "
                    f"{fmt(e['median'])} / {fmt(e['p95'])} / {fmt(e['max'])} | "
                    f"{fmt(r['calibration'].get('median_error_over_accuracy'), '{:.2f}')} | "
                    f"**{r['calibration'].get('beyond_3x', 0)}** | "
                    f"{fmt(off + est[0], '{:+.2f}') if est else 'n/a'} | {'yes' if r.get('warnings') else 'no'} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


def _pack_model(pack_path: str) -> str:
    """The model a pack records (what its replay flies)."""
    from skyfix.edge.models import model_for_pack
    from skyfix.pack.tilepack import TilePack
    return str(model_for_pack(TilePack.open(pack_path), None))
