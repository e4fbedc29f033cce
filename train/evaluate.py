"""`skyfix eval`: drone <-> satellite retrieval on simulated drone views of a real map.

Views are rendered from `--queries-from` (the pack's own map, or another date of the same area),
rectified with noisy telemetry like the onboard crop does, embedded by the drone tower and
ranked against every tile of the pack. numpy/OpenCV/faiss only; the embedders bring the model.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from skyfix.config import CameraConfig, EvalConfig
from skyfix.edge.camera import PinholeCamera, rectify
from skyfix.errors import ModelMismatch, SkyfixError
from skyfix.render.views import ViewPose, photometric, render_view
from skyfix.pack.canvas import MapCanvas
from skyfix.pack.tilepack import TilePack
from skyfix.train.metrics import retrieval_metrics


@dataclass
class QuerySet:
    crops: np.ndarray       # Q x R x px x px x 3: R rectified crops per view (R = rotations)
    east_m: np.ndarray      # Q true centre
    north_m: np.ndarray
    poses: list


def sample_poses(pack: TilePack, cfg: EvalConfig, rng: np.random.Generator) -> list[ViewPose]:
    """Random poses whose footprint centre stays inside the tiled area."""
    tilt = np.radians(cfg.tilt_max_deg)
    margin = pack.tile_size_m / 2 + cfg.alt_agl_max_m * np.tan(tilt)
    e0, e1 = pack.east_m.min() - pack.tile_size_m / 2, pack.east_m.max() + pack.tile_size_m / 2
    n0, n1 = pack.north_m.min() - pack.tile_size_m / 2, pack.north_m.max() + pack.tile_size_m / 2
    if cfg.east_min_m is not None:  # held-out area: the whole query crop (and tilt) east of it
        e0 = max(e0, cfg.east_min_m)
    if e1 - e0 <= 2 * margin or n1 - n0 <= 2 * margin:
        raise SkyfixError(f"the tiled area ({e1 - e0:.0f} x {n1 - n0:.0f} m) is too small for views "
                          f"needing a {margin:.0f} m margin; lower --alt or tilt")
    return [ViewPose(float(rng.uniform(e0 + margin, e1 - margin)),
                     float(rng.uniform(n0 + margin, n1 - margin)),
                     float(rng.uniform(cfg.alt_agl_min_m, cfg.alt_agl_max_m)),
                     float(rng.uniform(-tilt, tilt)), float(rng.uniform(-tilt, tilt)),
                     float(rng.uniform(0, 2 * np.pi))) for _ in range(cfg.views)]


def assumed_headings(cfg: EvalConfig, true_yaw_rad: float, rng: np.random.Generator) -> list[float]:
    """Headings the crop is rectified with: telemetry + error (known), or R guesses (unknown)."""
    if cfg.heading == "known":
        return [true_yaw_rad + np.radians(rng.normal(0, cfg.heading_err_deg))]
    if cfg.heading == "unknown":
        return list(np.arange(cfg.tta_rotations) * 2 * np.pi / cfg.tta_rotations)
    raise SkyfixError(f"heading must be 'known' or 'unknown', got '{cfg.heading}'")


def make_queries(pack: TilePack, query_canvas: MapCanvas, cam_cfg: CameraConfig, cfg: EvalConfig,
                 out_px: int, progress: bool = True) -> QuerySet:
    """Render, perturb and rectify `cfg.views` drone views (deterministic for a seed)."""
    rng = np.random.default_rng(cfg.seed)
    cam = PinholeCamera.from_config(cam_cfg)
    crops, east, north, poses = [], [], [], sample_poses(pack, cfg, rng)
    for pose in tqdm(poses, desc="render views", unit="view", disable=not progress):
        frame, _, (e, n) = render_view(query_canvas, cam, pose)
        if cfg.photometric:
            frame = photometric(frame, rng)
        roll = pose.roll_rad + np.radians(rng.normal(0, 1.0))  # attitude error ~1 deg
        pitch = pose.pitch_rad + np.radians(rng.normal(0, 1.0))
        agl = pose.agl_m * (1 + rng.normal(0, cfg.alt_err_frac))
        crops.append([rectify(frame, cam, roll, pitch, yaw, agl, pack.tile_size_m, out_px)[0]
                      for yaw in assumed_headings(cfg, pose.yaw_rad, rng)])
        east.append(e)
        north.append(n)
    return QuerySet(np.array(crops), np.array(east), np.array(north), poses)


def embed_queries(embedder, crops: np.ndarray, batch: int = 16) -> np.ndarray:
    """Q x R x px x px x 3 -> float32 Q x R x D."""
    q, r = crops.shape[:2]
    flat = crops.reshape(q * r, *crops.shape[2:])
    out = np.concatenate([embedder.embed(flat[i:i + batch]) for i in range(0, len(flat), batch)])
    return out.reshape(q, r, -1)


def similarity_to_tiles(pack: TilePack, vectors: np.ndarray) -> np.ndarray:
    """Q x R x D query vectors -> Q x T similarity, best over the R rotations, via the pack's index."""
    q, r, d = vectors.shape
    scores, ids = pack.search(vectors.reshape(q * r, d), k=len(pack))
    full = np.full((q * r, len(pack)), -np.inf, np.float32)
    np.put_along_axis(full, np.where(ids < 0, 0, ids), np.where(ids < 0, -np.inf, scores), axis=1)
    return full.reshape(q, r, -1).max(axis=1)


def evaluate(pack: TilePack, drone_embedder, query_canvas: MapCanvas, cam_cfg: CameraConfig,
             cfg: EvalConfig, progress: bool = True) -> dict:
    """Run the evaluation; returns the result dict (see README for the JSON schema)."""
    if drone_embedder.model_id != pack.model_id:
        raise ModelMismatch(f"drone model {drone_embedder.model_id} != pack model {pack.model_id}: "
                            "evaluate with the model that built the pack")
    t0 = time.perf_counter()
    qs = make_queries(pack, query_canvas, cam_cfg, cfg, drone_embedder.input_px, progress)
    vectors = embed_queries(drone_embedder, qs.crops)
    S = similarity_to_tiles(pack, vectors)
    P = pack.contains(qs.east_m, qs.north_m)
    d2s, s2d = retrieval_metrics(S, P), retrieval_metrics(S.T, P.T)
    top1 = np.argmax(S, axis=1)
    err = np.hypot(pack.east_m[top1] - qs.east_m, pack.north_m[top1] - qs.north_m)
    return {
        "density_error_m": density_errors(pack, S, qs, cfg),
        "drone_to_sat": d2s,
        "sat_to_drone": s2d,
        "error_m": {"median": float(np.median(err)), "p90": float(np.percentile(err, 90)),
                    "mean": float(err.mean())},
        "n_queries": int(len(qs.east_m)),
        "n_tiles": len(pack),
        "model_id": pack.model_id,
        "heading": cfg.heading,
        "seconds": round(time.perf_counter() - t0, 1),
        "_internal": {"S": S, "P": P, "queries": qs},
    }


def density_errors(pack: TilePack, S: np.ndarray, qs, cfg: EvalConfig) -> dict:
    """{k: {median, p90}} metre error of the retrieval density peak (edge/coarse.py) of each
    query's top-k tiles, for k in cfg.density_k."""
    from skyfix.edge.coarse import density_position
    sigma_m = cfg.density_sigma_m or pack.tile_size_m / 2
    out = {}
    for k in (int(v) for v in cfg.density_k):
        top = np.argsort(-S, axis=1, kind="stable")[:, :k]
        err = np.array([math.hypot(c.east_m - e, c.north_m - n) for c, e, n in
                        ((density_position(pack.east_m[ids], pack.north_m[ids], S[q, ids], sigma_m), qs.east_m[q],
                          qs.north_m[q]) for q, ids in enumerate(top))])
        out[str(k)] = {"median": float(np.median(err)), "p90": float(np.percentile(err, 90))}
    return out


def run_eval(pack: TilePack, drone_embedder, queries_from: str | Path, cfg, source_gsd_m: Optional[float] = None,
             json_path: Optional[str | Path] = None, png_path: Optional[str | Path] = None,
             progress: bool = True) -> dict:
    """Evaluate retrieval with views rendered from `queries_from` (cfg: the whole SkyfixConfig);
    write the example PNG and the JSON when given. Returns the JSON-able result."""
    from skyfix.tiles.ortho import load_canvas
    canvas = load_canvas(queries_from, pack.canvas().gsd_m, source_gsd_m=source_gsd_m, frame=pack.frame)
    result = evaluate(pack, drone_embedder, canvas, cfg.camera, cfg.eval, progress=progress)
    if png_path:
        plot_examples(pack, result, png_path)
    result.pop("_internal")
    result.update({"pack": str(pack.path), "queries_from": str(queries_from),
                   "config": {"eval": asdict(cfg.eval), "camera": asdict(cfg.camera)}})
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result


def plot_examples(pack: TilePack, result: dict, path: str | Path, n: int = 6, k: int = 5,
                  cell_px: int = 160) -> Path:
    """PNG: rows of (query crop | its top-k tiles), green border = contains the true centre."""
    S, P, qs = result["_internal"]["S"], result["_internal"]["P"], result["_internal"]["queries"]
    canvas = pack.canvas()
    rows = []
    for qi in np.linspace(0, len(S) - 1, min(n, len(S))).astype(int):
        cells = [cv2.resize(qs.crops[qi, 0], (cell_px, cell_px))]
        for tid in np.argsort(-S[qi])[:k]:
            t = pack.tile(tid)
            tile = canvas.render(t.east_m, t.north_m, t.size_m, cell_px)[0]
            colour = (0, 200, 0) if P[qi, tid] else (220, 0, 0)
            cells.append(cv2.copyMakeBorder(tile[4:-4, 4:-4], 4, 4, 4, 4, cv2.BORDER_CONSTANT,
                                            value=colour))
        rows.append(np.hstack([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255)
                               for c in cells]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR)):
        raise SkyfixError(f"cannot write {path}")
    return Path(path)


def format_table(result: dict) -> str:
    d, s, e = result["drone_to_sat"], result["sat_to_drone"], result["error_m"]
    lines = [f"model {result['model_id']}, heading {result['heading']}, {result['n_queries']} views, "
             f"{result['n_tiles']} tiles",
             "direction       R@1    R@5    R@10   R@1%   AP     P@1    P@5    P@10   ANMRR",
             *(f"{name}  " + " ".join(f"{m[key]:6.3f}" for key in ("r1", "r5", "r10", "r1pct", "ap", "p1", "p5", "p10",
                                                                     "anmrr"))
               for name, m in (("drone -> sat", d), ("sat -> drone", s))),
             f"   ({s['n_queries']} tiles seen by a view)",
             f"top-1 tile centre error: median {e['median']:.1f} m, p90 {e['p90']:.1f} m",
             *(f"density peak of the top {k}: median {v['median']:.1f} m, p90 {v['p90']:.1f} m"
               for k, v in result.get("density_error_m", {}).items())]
    return "\n".join(lines)


def embed_image_files(embedder, paths: list, batch: int = 32, centre_square: bool = False) -> np.ndarray:
    """Embed image files (read, resized to the model's input), float32 N x D."""
    from skyfix.tiles.ortho import read_image_px
    if not paths:
        return np.zeros((0, embedder.dim), np.float32)
    return np.concatenate([embedder.embed(np.stack([read_image_px(p, embedder.input_px, centre_square)
                                                    for p in paths[i:i + batch]]))
                           for i in range(0, len(paths), batch)])


def crossview_smoke(data_dir: str | Path, drone_embedder, sat_embedder) -> dict:
    """SUES-200 check: every scene-A drone photo must score scene A's satellite image above every
    scene-B photo. Returns per-view margins (sim to s0 minus best sim to scene B)."""
    data_dir = Path(data_dir)
    a_paths = sorted((data_dir / "sceneA" / "drone").glob("*.jpg"))
    b_paths = sorted((data_dir / "sceneB" / "drone").glob("*.jpg"))
    if not a_paths or not b_paths:
        raise SkyfixError(f"{data_dir}: expected sceneA/drone/*.jpg and sceneB/drone/*.jpg")
    a = embed_image_files(drone_embedder, a_paths, centre_square=True)
    b = embed_image_files(drone_embedder, b_paths, centre_square=True)
    s0 = embed_image_files(sat_embedder, [data_dir / "sceneA" / "satellite" / "s0.png"])
    sim_s0 = (a @ s0.T)[:, 0]
    sim_ab = a @ b.T
    sim_b = sim_ab.max(axis=1)
    margins = sim_s0 - sim_b
    within = a @ a.T
    return {"mean_sim_within_a": float(within[~np.eye(len(a), dtype=bool)].mean()),
            "mean_sim_a_to_b": float(sim_ab.mean()), "views": [p.name for p in a_paths],
            "sim_sat": sim_s0.tolist(), "best_sim_scene_b": sim_b.tolist(), "margin": margins.tolist(),
            "passed": int((margins > 0).sum()), "total": len(a_paths)}


def evaluate_u1652(root: str | Path, drone_embedder, sat_embedder, batch: int = 32) -> dict:
    """University-1652 protocol: drone -> satellite (query_drone vs gallery_satellite) and
    satellite -> drone (query_satellite vs gallery_drone); positives share the location id."""
    from skyfix.train.data import u1652_test_sets

    def embed(embedder, folder: dict):
        ids = [k for k, paths in folder.items() for _ in paths]
        return np.array(ids), embed_image_files(embedder, [p for k in folder for p in folder[k]], batch)

    sets = u1652_test_sets(root)
    out = {}
    for name, (qname, qemb, gname, gemb) in {
            "drone_to_sat": ("query_drone", drone_embedder, "gallery_satellite", sat_embedder),
            "sat_to_drone": ("query_satellite", sat_embedder, "gallery_drone", drone_embedder)}.items():
        if not sets[qname] or not sets[gname]:
            out[name] = None
            continue
        qi, qv = embed(qemb, sets[qname])
        gi, gv = embed(gemb, sets[gname])
        out[name] = retrieval_metrics(qv @ gv.T, qi[:, None] == gi[None, :])
    return out
