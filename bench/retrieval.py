"""Retrieval on held-out maps, and the orientation head (docs/retrieval.md)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from skyfix.bench.common import SHARED
from skyfix.errors import SkyfixError


def _ensure_pack(ortho: Path, out: Path, model: str, source_gsd_m=None, map_features: bool = True) -> None:
    """Build the pack unless one built by the same model is already there (without the map's
    local features when only retrieval is measured)."""
    from skyfix.config import load_config
    from skyfix.errors import PackError
    from skyfix.export.models import load_embedder
    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.build import build_pack
    cfg = load_config(overrides=None if map_features else {"tiles": {"features": []}})
    sat = load_embedder(model, "sat", cfg.model)
    try:
        TilePack.open(out, expect_model_id=sat.model_id)
    except PackError:
        print(f"building {out} from {ortho}", flush=True)
        build_pack(ortho, out, cfg, sat, model_source=str(model), source_gsd_m=source_gsd_m, progress=False)


def _eval(pack_dir: Path, queries_from: Path, views: int, heading: str, json_path: Path,
          source_gsd_m=None, east_min_m=None) -> dict:
    """`skyfix eval` of one pack with the model that built it; writes JSON and PNG."""
    from skyfix.config import load_config
    from skyfix.edge.models import model_for_pack
    from skyfix.export.models import load_embedder
    from skyfix.pack.tilepack import TilePack
    from skyfix.train.evaluate import run_eval
    print(f"eval {pack_dir} with views from {queries_from.name} (heading {heading})", flush=True)
    cfg = load_config(overrides={"eval": {"views": views, "heading": heading, "east_min_m": east_min_m}})
    pack = TilePack.open(pack_dir)
    drone = load_embedder(model_for_pack(pack), "drone", cfg.model)
    return run_eval(pack, drone, queries_from, cfg, source_gsd_m, json_path, json_path.with_suffix(".png"),
                    progress=False)


def bench_retrieval(model: str, out: str = "out/bench", views: int = 200) -> str:
    """Build the packs and run the README's retrieval evals; returns a markdown table."""
    out_dir = Path(out)
    shared = SHARED.resolve()
    if not shared.exists():
        raise SkyfixError(f"{shared} not found: the retrieval benchmark needs ../shared/data")
    colorado = shared / "colorado_z18" / "mosaic_epsg3857.tif"
    _ensure_pack(colorado, out_dir / "colorado", model)
    results = [(f"Colorado, same map, heading {heading}",
                _eval(out_dir / "colorado", colorado, views, heading, out_dir / f"colorado_{heading}.json"))
               for heading in ("known", "unknown")]
    for date in ("B", "A"):
        scenes = []
        for i in range(1, 6):
            pack = out_dir / f"levir_{i}"
            _ensure_pack(shared / "levircd" / "A" / f"test_{i}.png", pack, model, 0.5)
            scenes.append(_eval(pack, shared / "levircd" / date / f"test_{i}.png", max(views // 5, 10),
                                "known", out_dir / f"levir_{i}_{date}.json", 0.5))
        results.append((f"LEVIR-CD map A, views {date} (5 scenes, heading known)", _pool(scenes)))
    rows = ["| case | tiles | views | D->S R@1 | R@5 | R@10 | R@1% | AP | S->D R@1 | S->D AP | top-1 error median / p90 m |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results:
        d, s, e = r["drone_to_sat"], r["sat_to_drone"], r["error_m"]
        rows.append(f"| {name} | {r['n_tiles']} | {r['n_queries']} | {d['r1']:.3f} | {d['r5']:.3f} | "
                    f"{d['r10']:.3f} | {d['r1pct']:.3f} | {d['ap']:.3f} | {s['r1']:.3f} | {s['ap']:.3f} | "
                    f"{e['median']:.0f} / {e['p90']:.0f} |")
    table = "\n".join(rows)
    (out_dir / "retrieval.md").write_text(table + "\n")
    return table


def _pool(results: list[dict]) -> dict:
    """Combine per-scene results, weighting each by its number of queries."""
    def avg(section, key):
        w = np.array([r[section]["n_queries"] for r in results], float)
        return float(np.sum(w * [r[section][key] for r in results]) / w.sum())
    out = {sec: {k: avg(sec, k) for k in ("r1", "r5", "r10", "r1pct", "ap")}
           for sec in ("drone_to_sat", "sat_to_drone")}
    out["error_m"] = {"median": float(np.mean([r["error_m"]["median"] for r in results])),
                      "p90": float(np.mean([r["error_m"]["p90"] for r in results]))}
    out["n_tiles"] = f"{sum(r['n_tiles'] for r in results)} (5 packs)"
    out["n_queries"] = sum(r["n_queries"] for r in results)
    return out


def bench_orientation(checkpoint: str, model_dir: str, pack_path: str, queries_from: str,
                      views: int = 200, east_min_m: float | None = None) -> str:
    """Heading unknown: 8 test-time rotations vs. one crop turned by the orientation head.

    Both use the same trained towers and pack; returns a markdown table.
    """

    import cv2
    import torch
    from skyfix.config import load_config
    from skyfix.edge.embedders import OnnxEmbedder, tower_onnx
    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.ortho import load_canvas
    from skyfix.train.evaluate import embed_queries, make_queries, similarity_to_tiles
    from skyfix.train.metrics import retrieval_metrics
    from skyfix.train.towers import OrientationHead, load_checkpoint
    pack = TilePack.open(pack_path)
    model = load_checkpoint(checkpoint)
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not blob["extra"].get("orientation_head"):
        raise SkyfixError(f"{checkpoint} has no orientation head (train with orientation_weight > 0)")
    head = OrientationHead(model.drone.proj.in_features)
    head.load_state_dict(blob["extra"]["orientation_head"])
    head.eval()
    emb = OnnxEmbedder(tower_onnx(model_dir, "drone"))
    canvas = load_canvas(queries_from, pack.canvas().gsd_m, frame=pack.frame)
    cfg = load_config(overrides={"eval": {"views": views, "heading": "unknown", "east_min_m": east_min_m}})
    rows = ["| heading unknown | D->S R@1 | R@5 | AP | S->D R@1 | embeds per view | heading error median / p90 deg |",
            "|---|---|---|---|---|---|---|"]
    for mode, rotations in (("8 test-time rotations", 8), ("orientation head, 1 crop", 1)):
        cfg.eval.tta_rotations = rotations
        qs = make_queries(pack, canvas, cfg.camera, cfg.eval, emb.input_px, progress=False)
        crops, err = qs.crops, ""
        if rotations == 1:
            with torch.inference_mode():
                cs = head(model.drone.features(torch.from_numpy(qs.crops[:, 0]))).numpy()
            theta = np.arctan2(cs[:, 1], cs[:, 0])  # predicted true heading (crops made at yaw 0)
            c = (emb.input_px - 1) / 2
            crops = np.stack([[cv2.warpAffine(q[0], cv2.getRotationMatrix2D((c, c), -math.degrees(t), 1.0),
                                              (emb.input_px, emb.input_px))] for q, t in zip(qs.crops, theta)])
            true = np.array([p.yaw_rad for p in qs.poses])
            e = np.degrees(np.abs((theta - true + np.pi) % (2 * np.pi) - np.pi))
            err = f"{np.median(e):.1f} / {np.percentile(e, 90):.1f}"
        S = similarity_to_tiles(pack, embed_queries(emb, crops))
        P = pack.contains(qs.east_m, qs.north_m)
        d, s = retrieval_metrics(S, P), retrieval_metrics(S.T, P.T)
        rows.append(f"| {mode} | {d['r1']:.3f} | {d['r5']:.3f} | {d['ap']:.3f} | {s['r1']:.3f} | {rotations} | {err} |")
    return "\n".join(rows)


def _held_out_figures(model: str, out_dir: Path, shared: Path) -> dict:
    """The held-out figures of one model: Colorado's east third (200 views, heading known),
    LEVIR-CD scenes 4-5 (map A, views B, 40 views each), SUES-200 (real drone photos)."""
    from skyfix.config import load_config
    from skyfix.export.models import load_embedder
    from skyfix.train.evaluate import crossview_smoke
    colorado = shared / "colorado_z18" / "mosaic_epsg3857.tif"
    _ensure_pack(colorado, out_dir / "colorado", model, map_features=False)
    east = _eval(out_dir / "colorado", colorado, 200, "known", out_dir / "colorado_east.json", east_min_m=199.0)
    levir = []
    for i in (4, 5):
        _ensure_pack(shared / "levircd" / "A" / f"test_{i}.png", out_dir / f"levir_{i}", model, 0.5, map_features=False)
        levir.append(_eval(out_dir / f"levir_{i}", shared / "levircd" / "B" / f"test_{i}.png", 40, "known",
                           out_dir / f"levir_{i}_B.json", 0.5))
    cfg = load_config()
    sues = crossview_smoke(shared / "sues200", load_embedder(model, "drone", cfg.model), load_embedder(model, "sat", cfg.model))
    return {"colorado": east["drone_to_sat"], "levir": _pool(levir)["drone_to_sat"],
            "sues": f"{sues['passed']} / {sues['total']}"}


def bench_towers(models: list, out: str = "out/bench") -> str:
    """Held-out retrieval of towers side by side (docs/retrieval.md, "The default towers"): one
    column per model ('default', 'imagenet' or a model folder); packs in OUT/towers/<n>/."""
    shared = SHARED.resolve()
    if not shared.exists():
        raise SkyfixError(f"{shared} not found: the towers benchmark needs ../shared/data")
    figures = [_held_out_figures(m, Path(out) / "towers" / str(k), shared) for k, m in enumerate(models)]
    rows = ["| held-out test (never trained on) | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|",
            "| Colorado east third, heading known, D->S R@1 / R@5 / AP (200 views) | "
            + " | ".join(f"{f['colorado']['r1']:.3f} / {f['colorado']['r5']:.3f} / {f['colorado']['ap']:.3f}"
                         for f in figures) + " |",
            "| LEVIR-CD 4 and 5, map A, views B, D->S R@1 / R@5 / AP (2 x 40 views) | "
            + " | ".join(f"{f['levir']['r1']:.3f} / {f['levir']['r5']:.3f} / {f['levir']['ap']:.3f}" for f in figures) + " |",
            "| SUES-200 scene A, real drone photos ranking their satellite image first | "
            + " | ".join(f["sues"] for f in figures) + " |"]
    return "\n".join(rows)


def bench_lost(pack_path: str, seeds=(0, 1, 2, 3), duration_s: float = 25.0, out: str = "out/bench/lost") -> str:
    """A vehicle lost from the start (no prior), flown with and without the retrieval density
    position searched first (nav.coarse_first): the time to the first published fix and the
    first fix's error, per seed (each seed a different route start and noise)."""
    from skyfix.bench.common import fmt, pack_drone_embedder
    from skyfix.config import load_config
    from skyfix.sim.run import run_sim
    embedder = pack_drone_embedder(pack_path)
    rows = ["| seed | coarse position first | time to first fix s | error median m | beyond 3x |", "|---|---|---|---|---|"]
    for seed in seeds:
        for first in (False, True):
            cfg = load_config(overrides={"sim": {"duration_s": duration_s, "route": "lawnmower", "seed": seed},
                                         "nav": {"coarse_first": first}})
            s = run_sim(pack_path, embedder, cfg, out_dir=str(Path(out) / f"seed{seed}_{first}"), progress=False)
            rows.append(f"| {seed} | {'yes' if first else 'no'} | {fmt(s.get('time_to_first_fix_s'))} | "
                        f"{fmt(s['error_m']['median'])} | **{s['calibration'].get('beyond_3x', 0)}** |")
            print(rows[-1], flush=True)
    return "\n".join(rows)
