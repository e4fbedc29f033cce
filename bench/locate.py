"""`skyfix locate` on simulated survey photos (docs/locate.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from skyfix.bench.common import SHARED


def bench_locate(out: str = "out/bench", n_photos: int = 30, cases: str = "", shared: Path = SHARED) -> str:
    """`skyfix locate` on folders of simulated photos with EXIF GPS (the truth) and a noisy
    telemetry CSV: the Colorado map itself, and LEVIR-CD scenes photographed on date B over
    packs of date A; then a third of the recorded headings turned by 180 and by 90 deg.
    Reports located share, error and calibration per set. cases: comma-separated beginnings of
    the set names to run (default all)."""
    from skyfix.config import load_config
    from skyfix.edge.camera import PinholeCamera
    from skyfix.edge.locate import run_locate
    from skyfix.edge.models import model_for_pack
    from skyfix.export.models import load_embedder
    from skyfix.pack.tilepack import TilePack
    from skyfix.sim.photos import turn_recorded_headings, write_photo_set
    from skyfix.tiles.ortho import load_canvas
    cfg = load_config()
    cam = PinholeCamera.from_config(cfg.camera)
    sets = [("Colorado (same map)", Path(out) / "colorado", None, 0.0)]
    sets += [(f"LEVIR-CD {i} (date B)", Path(out) / f"levir_{i}", shared / "levircd" / "B" / f"test_{i}.png", 0.0)
             for i in range(1, 6)]
    # A third of the recorded headings wrong (the photos of the rows above, their CSV changed).
    sets += [(f"{name}, a third of the headings {turn:+.0f} deg", pack_dir, photos_from, turn)
             for name, pack_dir, photos_from, _ in sets[:2] for turn in (180.0, 90.0)]
    wanted = [c.strip() for c in cases.split(",") if c.strip()]
    sets = [s for s in sets if not wanted or any(s[0].startswith(w) for w in wanted)]
    rows = ["| photos | located | error median / p95 / max m | within 1x / 3x accuracy | image heading used | "
            "reasons when not located |", "|---|---|---|---|---|---|"]
    for name, pack_dir, photos_from, turn_deg in sets:
        pack = TilePack.open(pack_dir)
        canvas = pack.canvas() if photos_from is None else load_canvas(photos_from, pack.canvas().gsd_m,
                                                                       source_gsd_m=0.5, frame=pack.frame)
        folder = Path(out) / "locate" / (pack_dir.name + (f"_turned_{turn_deg:.0f}" if turn_deg else ""))
        csv_path = write_photo_set(canvas, cam, folder / "photos", n_photos, seed=1)
        if turn_deg:
            turn_recorded_headings(csv_path, 3, turn_deg)
        fixes = run_locate(str(pack_dir), [str(folder / "photos")], str(folder / "fixes.geojson"), cfg,
                           load_embedder(model_for_pack(pack, None), "drone", cfg.model), telemetry_csv=str(csv_path))
        got = [f for f in fixes if f.error_m is not None]
        err = np.array([f.error_m for f in got])
        ratio = np.array([f.error_m / f.accuracy_m for f in got])
        reasons = {}
        for f in fixes:
            if f.lat_deg is None:
                reasons[f.reason] = reasons.get(f.reason, 0) + 1
        stats = (f"{np.median(err):.1f} / {np.percentile(err, 95):.1f} / {err.max():.1f} | "
                 f"{np.mean(ratio <= 1):.0%} / {np.mean(ratio <= 3):.0%}") if len(got) else "n/a | n/a"
        overruled = sum("used instead" in f.detail for f in fixes)
        rows.append(f"| {name} | {len(got)}/{len(fixes)} | {stats} | {overruled} | "
                    f"{', '.join(f'{k} {v}' for k, v in sorted(reasons.items())) or '-'} |")
    return "\n".join(rows)
