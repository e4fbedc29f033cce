"""Height above the ground: a descent below the hand-over height, and relief under the flight (docs/simulator.md)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from skyfix.bench.common import fmt, pack_drone_embedder


def _after(track_csv: Path, from_s: float) -> list[dict]:
    with open(track_csv) as f:
        return [r for r in csv.DictReader(f) if float(r["t_s"]) >= from_s]


def bench_altitude(pack_path: str, heights_m=(40.0, 60.0, 80.0, 120.0), start_agl_m: float = 120.0,
                   length_m: float = 800.0, out: str = "out/bench/altitude") -> str:
    """Fly the simulated drone along a straight leg from start_agl_m down to each height (3 m/s)
    and score the messages from the moment it is there: availability, error median / p95 / max,
    the worst error-to-accuracy ratio and the messages beyond 3x, and the frames refused as below
    the tile's height (no track to continue)."""
    import json

    from skyfix.config import load_config
    from skyfix.sim.run import run_sim
    from skyfix.sim.score import availability
    embedder = pack_drone_embedder(pack_path)
    rows = ["| survey height m | at height from s | availability there | error median / p95 / max m | "
            "median error / accuracy | worst error / accuracy | beyond 3x | frames tracked without retrieval | "
            "frames below a tile, no track |", "|---|---|---|---|---|---|---|---|---|"]
    for h in heights_m:
        cfg = load_config(overrides={"sim": {"route": "straight", "length_m": length_m, "alt_agl_m": h,
                                             "start_agl_m": start_agl_m}})
        folder = Path(out) / f"agl_{h:g}"
        s = run_sim(pack_path, embedder, cfg, out_dir=str(folder), progress=False)
        (folder / "summary.json").write_text(json.dumps(s, indent=2, default=str))
        at_s = max(0.0, (start_agl_m - h) / cfg.sim.descent_m_s)
        got = [r for r in _after(folder / "track.csv", at_s) if float(r["t_s"]) <= s["duration_s"]]
        err = np.array([float(r["error_m"]) for r in got])
        ratio = err / np.array([float(r["horiz_accuracy_m"]) for r in got]) if len(got) else np.array([])
        avail = availability(np.array([float(r["t_s"]) for r in got]), at_s, s["duration_s"])
        close = s["integrity"].get("close range: tracked without retrieval", 0)
        below = s["reasons"].get("crop outside frame", 0)
        stats = (f"{np.median(err):.1f} / {np.percentile(err, 95):.1f} / {err.max():.1f} | {np.median(ratio):.2f} | "
                 f"{ratio.max():.2f} | **{int((ratio > 3).sum())}**") if len(got) else "n/a | n/a | n/a | n/a"
        rows.append(f"| {h:g} | {at_s:.0f} | {100 * avail:.1f} % | {stats} | {close} | {below} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


def bench_low_start(pack_paths: list, heights_m=(40.0, 60.0), length_m: float = 600.0,
                    out: str = "out/bench/lowstart") -> str:
    """A vehicle lost from the start at each height (no hand-over from higher up: a take-off, a
    GPS lost low), per pack: availability, error, the worst error-to-accuracy ratio and the
    messages beyond 3x, time to the first fix, the frames searched on a finer level and those
    refused as below every tile."""
    import json

    from skyfix.config import load_config
    from skyfix.sim.run import run_sim
    rows = ["| pack | levels | height m | time to first fix s | availability | error median / p95 / max m | "
            "worst error / accuracy | beyond 3x | frames on a finer level | frames below every tile |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for pack_path in pack_paths:
        from skyfix.pack.tilepack import TilePack
        levels = ", ".join(f"{lv.tile_size_m:g} m" for lv in TilePack.open(pack_path).levels) or "none"
        embedder = pack_drone_embedder(pack_path)
        for h in heights_m:
            cfg = load_config(overrides={"sim": {"route": "straight", "length_m": length_m, "alt_agl_m": h}})
            folder = Path(out) / Path(pack_path).name / f"agl_{h:g}"
            s = run_sim(pack_path, embedder, cfg, out_dir=str(folder), progress=False)
            (folder / "summary.json").write_text(json.dumps(s, indent=2, default=str))
            e, cal = s["error_m"], s["calibration"]
            finer = sum(v for k, v in s["integrity"].items() if k.startswith("searched the"))
            rows.append(f"| {Path(pack_path).name} | {levels} | {h:g} | {fmt(s.get('time_to_first_fix_s'))} | "
                        f"{fmt(100 * s.get('availability', 0.0))} % | {fmt(e.get('median'))} / {fmt(e.get('p95'))} / "
                        f"{fmt(e.get('max'))} | {fmt(cal.get('worst_error_over_accuracy'), '{:.2f}')} | "
                        f"**{cal.get('beyond_3x', 0)}** | {finer} | {s['reasons'].get('crop outside frame', 0)} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def bench_relief(pack_path: str, reliefs_m=(0.0, 50.0, 150.0), length_m: float = 800.0,
                 out: str = "out/bench/relief", with_dem_runs=(False, True)) -> str:
    """Fly the simulated drone at 120 m over synthetic hills spanning each relief, once with the
    pack as it is (flat ground assumed, nav.ground_slope_deg allowed for) and once with the hills
    given as a DEM (written as a GeoTIFF in EPSG:4326 and added to a copy of the pack, as a user
    would), and score each flight: availability from the first fix, error median / p95 / max,
    worst error-to-accuracy ratio, messages beyond 3x, and the frames refused as implausible."""
    import json
    import shutil

    from skyfix.bench.integrity import _availability_from
    from skyfix.config import load_config
    from skyfix.pack.tilepack import TilePack
    from skyfix.render.views import synthetic_terrain
    from skyfix.sim.run import run_sim
    from skyfix.tiles.terrain import DemInput, add_terrain, write_dem
    embedder = pack_drone_embedder(pack_path)
    rows = ["| relief m (hills, 400 m wavelength) | DEM | availability from first fix | error median / p95 / max m | "
            "accuracy median m | median error / accuracy | worst error / accuracy | beyond 3x | messages | "
            "implausible / weak frames |", "|---|---|---|---|---|---|---|---|---|---|"]
    for relief in reliefs_m:
        for with_dem in with_dem_runs:
            cfg = load_config(overrides={"sim": {"route": "straight", "length_m": length_m, "relief_m": relief}})
            folder = Path(out) / f"relief_{relief:g}{'_dem' if with_dem else ''}"
            flown = pack_path
            if with_dem:
                flown = str(folder / "pack")
                shutil.rmtree(flown, ignore_errors=True)
                shutil.copytree(pack_path, flown)
                pack = TilePack.open(flown)
                hills = synthetic_terrain(relief, cfg.sim.relief_wavelength_m, cfg.sim.seed)
                dem_path = write_dem(folder / "dem.tif", pack.frame, tuple(pack.manifest["region"]["bounds_en_m"]),
                                     lambda e, n: cfg.sim.ground_alt_msl_m + hills(e, n))
                # The simulator's own ground, written exactly: its vertical accuracy is stated as 0.
                add_terrain(flown, DemInput(paths=(str(dem_path),), accuracy_m=0.0), log=lambda _: None)
            s = run_sim(flown, embedder, cfg, out_dir=str(folder), progress=False)
            (folder / "summary.json").write_text(json.dumps(s, indent=2, default=str))
            e, cal = s["error_m"], s["calibration"]
            with open(folder / "track.csv") as f:
                acc = [float(r["horiz_accuracy_m"]) for r in csv.DictReader(f)]
            avail = _availability_from(str(folder / "track.csv"), s.get("time_to_first_fix_s"), s["duration_s"])
            rows.append(f"| {relief:g} | {'yes' if with_dem else 'no'} | {fmt(100 * avail)} % | "
                        f"{fmt(e['median'])} / {fmt(e['p95'])} / {fmt(e['max'])} | "
                        f"{fmt(float(np.median(acc)) if acc else None)} | "
                        f"{fmt(cal.get('median_error_over_accuracy'), '{:.2f}')} | "
                        f"{fmt(cal.get('worst_error_over_accuracy'), '{:.2f}')} | **{cal.get('beyond_3x', 0)}** | "
                        f"{s['n_published']} | {s['reasons'].get('implausible match', 0)} / "
                        f"{s['reasons'].get('weak match', 0)} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)
