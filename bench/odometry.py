"""Frame-to-frame odometry against GPS on a real flight (docs/odometry.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from skyfix.bench.common import SHARED
from skyfix.sim.score import odometry_errors


def bench_odometry(methods=("sift", "xfeat"), features_model: str = "models/xfeat", shared: Path = SHARED) -> str:
    """Markdown table: frame-to-frame displacement from images vs GPS on odm_toledo."""
    rows = ["| method (odm_toledo, 56 consecutive pairs, EXIF height, f = 702 px) | pairs matched | "
            "error median / p90 m | error median / p90 % of distance | GPS distance median m |", "|---|---|---|---|---|"]
    for method in methods:
        r = odometry_errors(shared / "odm_toledo", method, features_model)
        ok = [x for x in r if x["vo_m"] is not None]
        err = np.array([abs(x["vo_m"] - x["gps_m"]) for x in ok])
        pct = np.array([100 * abs(x["vo_m"] - x["gps_m"]) / max(x["gps_m"], 1e-6) for x in ok])
        rows.append(f"| {method} | {len(ok)} / {len(r)} | {np.median(err):.2f} / {np.percentile(err, 90):.2f} | "
                    f"{np.median(pct):.1f} / {np.percentile(pct, 90):.1f} | {np.median([x['gps_m'] for x in r]):.1f} |")
    return "\n".join(rows)
