"""Benchmarks that print tables (README numbers). Not tests: nothing here asserts a speed.

  skyfix bench embed  --model MODEL_DIR      onnxruntime embedding latency, batch 1 and 8
  skyfix bench precision --model MODEL_DIR [--calib PACK,...]
                                             INT8 / FP16 exports: parity with FP32 and CPU latency
  skyfix bench faiss  --pack PACK            search latency on a pack and a synthetic 1M index
  skyfix bench retrieval                     builds packs and runs every README eval
  skyfix bench resection --pack PACK         vehicle position: telemetry tilt vs camera resection
  skyfix bench match [--methods sift,orb,xfeat] [--pairs 40] [--rotation-deg 15]
                                             local features across dates (LEVIR-CD) and on Colorado
  skyfix bench sues [--methods ...]           SUES-200 real drone photos: inliers per extractor
  skyfix bench attack --pack PACK [--datagrams 20000] [--duration-s 55]
                                             a hostile sender on skyfix's MAVLink port during a flight
  skyfix bench integrity --pack PACK [--conditions 'calm;wind 8 m/s'] [--sitl-wind 5,8]
                                             integrity under wind, attitude errors, time offsets, lens, blur
  skyfix bench soak --pack PACK [--duration-s 3600]  a long flight: RSS, files, threads, latency per minute
  skyfix bench odometry                       frame-to-frame displacement vs GPS on odm_toledo
  skyfix bench locate [--photos 30]           `skyfix locate` on simulated survey photos (Colorado, LEVIR-CD date B)
  skyfix bench telemetry                     attitude error: telemetry at capture time vs at processing
  skyfix bench orientation --checkpoint best.pt --model DIR --pack PACK --queries-from MAP
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from skyfix.errors import SkyfixError

SHARED = Path(__file__).resolve().parent / ".." / "shared" / "data"


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


def bench_embed(model_dir: str, runs: int = 50) -> str:
    from skyfix.edge.embedders import OnnxEmbedder
    emb = OnnxEmbedder(Path(model_dir) / "drone.onnx")
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
    from skyfix.edge.embedders import OnnxEmbedder
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
    embedders = {"fp32": OnnxEmbedder(Path(model_dir) / "drone.onnx", providers=["CPUExecutionProvider"])}
    embedders.update({p: OnnxEmbedder(d / "drone.onnx", providers=["CPUExecutionProvider"]) for p, d in last.items()})
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


def bench_locate(out: str = "out/bench", n_photos: int = 30, shared: Path = SHARED) -> str:
    """`skyfix locate` on folders of simulated photos with EXIF GPS (the truth) and a noisy
    telemetry CSV: the Colorado map itself, and LEVIR-CD scenes photographed on date B over
    packs of date A. Reports located share, error and calibration per set."""
    from skyfix.config import load_config
    from skyfix.edge.camera import PinholeCamera
    from skyfix.edge.locate import run_locate
    from skyfix.export.models import load_embedder, model_for_pack
    from skyfix.sim.photos import write_photo_set
    from skyfix.tiles.ortho import load_canvas
    from skyfix.tiles.pack import TilePack
    cfg = load_config()
    cam = PinholeCamera.from_config(cfg.camera)
    sets = [("Colorado (same map)", Path(out) / "colorado", None)]
    sets += [(f"LEVIR-CD {i} (date B)", Path(out) / f"levir_{i}", shared / "levircd" / "B" / f"test_{i}.png")
             for i in range(1, 6)]
    rows = ["| photos | located | error median / p95 / max m | within 1x / 3x accuracy | reasons when not located |",
            "|---|---|---|---|---|"]
    for name, pack_dir, photos_from in sets:
        pack = TilePack.open(pack_dir)
        canvas = pack.canvas() if photos_from is None else load_canvas(photos_from, pack.canvas().gsd_m,
                                                                       source_gsd_m=0.5, frame=pack.frame)
        folder = Path(out) / "locate" / pack_dir.name
        csv_path = write_photo_set(canvas, cam, folder / "photos", n_photos, seed=1)
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
        rows.append(f"| {name} | {len(got)}/{len(fixes)} | {stats} | "
                    f"{', '.join(f'{k} {v}' for k, v in sorted(reasons.items())) or '-'} |")
    return "\n".join(rows)


def synthetic_embeddings(n: int, d: int, seed: int = 0, intrinsic_dim: int = 32):
    """Unit vectors on a low-dimensional manifold (as image embeddings are) plus noise.

    Returns (float32 n x d vectors, a function making q queries near random base vectors).
    """
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((intrinsic_dim, d), dtype=np.float32) / np.sqrt(intrinsic_dim)
    out = np.empty((n, d), np.float32)
    latents = rng.standard_normal((n, intrinsic_dim), dtype=np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        out[i:i + m] = latents[i:i + m] @ basis + 0.05 * rng.standard_normal((m, d), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)

    def queries(q: int) -> np.ndarray:
        z = latents[rng.choice(n, q, replace=False)] + 0.1 * rng.standard_normal((q, intrinsic_dim), dtype=np.float32)
        x = z @ basis + 0.05 * rng.standard_normal((q, d), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return out, queries


def bench_faiss(pack_path: str | None, n_synthetic: int, queries: int = 200) -> str:
    from skyfix.tiles.pack import TileGrid, TilePack, make_index, window_search
    rows = ["| search | tiles | p50 ms | p95 ms | note |", "|---|---|---|---|---|"]
    rng = np.random.default_rng(1)
    if pack_path:
        pack = TilePack.open(pack_path)
        q = rng.standard_normal((queries, pack.dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        it = iter(range(10 ** 9))
        ms = _latency_ms(lambda: pack.search(q[next(it) % queries][None], 10), 10, queries)
        rows.append(f"| pack, exact, global top-10 | {len(pack)} | {np.percentile(ms, 50):.3f} | "
                    f"{np.percentile(ms, 95):.3f} | {pack.manifest['index']} |")
        e, n = float(pack.east_m.mean()), float(pack.north_m.mean())
        ms = _latency_ms(lambda: pack.search(q[next(it) % queries][None], 10, near=(e, n, 200.0)), 10, queries)
        rows.append(f"| pack, prior window r=200 m | {len(pack.ids_within(e, n, 200.0))} in window | "
                    f"{np.percentile(ms, 50):.3f} | {np.percentile(ms, 95):.3f} | tile grid + window_search |")
    d = 512
    t0 = time.perf_counter()
    xb, make_queries = synthetic_embeddings(n_synthetic, d)
    q = make_queries(queries)
    gen_s = time.perf_counter() - t0
    flat = make_index("flat", xb)
    exact = flat.search(q, 10)[1]
    it = iter(range(10 ** 9))
    ms = _latency_ms(lambda: flat.search(q[next(it) % queries][None], 10), 3, 50)
    rows.append(f"| synthetic, exact flat, global | {n_synthetic:,} | {np.percentile(ms, 50):.2f} | "
                f"{np.percentile(ms, 95):.2f} | {d}-d on a 32-d manifold, {xb.nbytes / 2**30:.1f} GiB, made in {gen_s:.0f} s |")
    side = int(np.ceil(np.sqrt(n_synthetic)))  # a square region, a tile every 50 m
    east, north = (np.arange(n_synthetic) % side) * 50.0, (np.arange(n_synthetic) // side) * 50.0
    grid = TileGrid(east, north, 100.0)
    ce, cn = float(east.mean()), float(north.mean())
    for radius_m in (200.0, 1000.0):
        window = grid.within(ce, cn, radius_m)
        ms = _latency_ms(lambda: window_search(flat, grid.within(ce, cn, radius_m), q[next(it) % queries][None], 10),
                         3, 100)
        rows.append(f"| synthetic, exact flat, prior window r={radius_m:.0f} m | {window.size:,} in window | "
                    f"{np.percentile(ms, 50):.3f} | {np.percentile(ms, 95):.3f} | window found by the tile grid, its vectors scored |")
    t0 = time.perf_counter()
    ivf = make_index("ivfpq", xb)
    build_s = time.perf_counter() - t0
    approx = ivf.search(q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact)])
    ms = _latency_ms(lambda: ivf.search(q[next(it) % queries][None], 10), 3, 100)
    import faiss
    inner = faiss.extract_index_ivf(ivf)
    code_mb = ivf.ntotal * inner.code_size / 2 ** 20
    rows.append(f"| synthetic, OPQ + IVF-PQ (nlist {inner.nlist}, {inner.code_size} B/vector, "
                f"nprobe {inner.nprobe}) | "
                f"{n_synthetic:,} | {np.percentile(ms, 50):.2f} | {np.percentile(ms, 95):.2f} | "
                f"recall@10 vs exact {recall:.3f}; codes {code_mb:.0f} MB; built in {build_s:.0f} s |")
    # Compact codes find candidates; the candidates' full vectors (onboard: rows read from the
    # pack's file, 2 KB each) re-rank them exactly.
    for nprobe, shortlist in ((32, 100), (64, 200), (128, 200)):
        inner.nprobe = nprobe

        def refined(qv):
            cand = ivf.search(qv, shortlist)[1]
            out = []
            for row, c in zip(qv, cand):
                c = c[c >= 0]
                out.append(c[np.argsort(-(xb[c] @ row))[:10]])
            return out
        got = refined(q)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
        ms = _latency_ms(lambda: refined(q[next(it) % queries][None]), 3, 100)
        rows.append(f"| synthetic, OPQ + IVF-PQ nprobe {nprobe}, top {shortlist} re-ranked exactly | {n_synthetic:,} | "
                    f"{np.percentile(ms, 50):.2f} | {np.percentile(ms, 95):.2f} | recall@10 vs exact {recall:.3f}; "
                    f"codes {code_mb:.0f} MB + {shortlist} rows read per query |")
    return "\n".join(rows)


# ---- retrieval suite ----------------------------------------------------------------------------
def _ensure_pack(ortho: Path, out: Path, model: str, source_gsd_m=None) -> None:
    """Build the pack unless one built by the same model is already there."""
    from skyfix.config import load_config
    from skyfix.errors import PackError
    from skyfix.export.models import load_embedder
    from skyfix.tiles.build import build_pack
    from skyfix.tiles.pack import TilePack
    cfg = load_config()
    sat = load_embedder(model, "sat", cfg.model)
    try:
        TilePack.open(out, expect_model_id=sat.model_id)
    except PackError:
        print(f"building {out} from {ortho}", flush=True)
        build_pack(ortho, out, cfg, sat, model_source=str(model), source_gsd_m=source_gsd_m, progress=False)


def _eval(pack_dir: Path, queries_from: Path, views: int, heading: str, json_path: Path,
          source_gsd_m=None) -> dict:
    """`skyfix eval` of one pack with the model that built it; writes JSON and PNG."""
    from skyfix.config import load_config
    from skyfix.export.models import load_embedder, model_for_pack
    from skyfix.tiles.pack import TilePack
    from skyfix.train.evaluate import run_eval
    print(f"eval {pack_dir} with views from {queries_from.name} (heading {heading})", flush=True)
    cfg = load_config(overrides={"eval": {"views": views, "heading": heading}})
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


def main(what: str, args) -> int:
    if what in ("resection", "attack", "soak", "onboard", "integrity") and not args.pack:
        raise SkyfixError(f"skyfix bench {what} needs --pack PACK (e.g. out/bench/colorado, built by "
                          "`skyfix bench retrieval`)")
    if what in ("embed", "all"):
        print(bench_embed(args.model))
    if what == "locate":
        print(bench_locate(args.out, args.photos))
    if what == "precision":
        sources = args.calib.split(",") if args.calib else [str(Path(args.out) / n) for n in ("colorado", "levir_1")]
        print(bench_precision(args.model, sources, str(Path(args.out) / "precision")))
    if what in ("faiss", "all"):
        print(bench_faiss(args.pack, args.n_synthetic))
    if what in ("retrieval", "all"):
        print(bench_retrieval(args.model, args.out, args.views))
    if what == "resection":
        print(bench_resection(args.pack))
    if what in ("telemetry", "all"):
        print(bench_telemetry())
    if what == "odometry":
        print(bench_odometry(tuple(m for m in args.methods.split(",") if m != "orb"), args.features_model))
    if what == "integrity":
        print(bench_integrity(args.pack, conditions=args.conditions.split(";") if args.conditions else None,
                              sitl_wind_m_s=tuple(float(w) for w in args.sitl_wind.split(",")) if args.sitl_wind else ()))
    if what == "soak":
        print(bench_soak(args.pack, args.duration_s or 3600.0))
    if what == "attack":
        print(bench_attack(args.pack, args.datagrams, args.duration_s or 55.0))
    if what == "sues":
        print(bench_sues(tuple(args.methods.split(",")), args.features_model, args.dense_model))
    if what == "match":
        print(bench_match(tuple(args.methods.split(",")), args.pairs, args.rotation_deg, args.features_model,
                          dense_model=args.dense_model, cases=args.cases))
    if what == "index":
        print(bench_index(args.model, args.out, n_large=args.n_synthetic))
        print(bench_distractors(args.model, args.out, args.views, n_matched=args.n_synthetic))
        print(bench_ivf_sweep(args.out, args.n_synthetic))
    if what == "build":
        print(bench_build(args.out, args.size_km, args.model, features_model=args.features_model, index=args.index,
                          cluster=args.cluster))
    if what == "onboard":
        print(bench_onboard(args.pack.split(","), args.model, args.features_model, args.frames))
    if what == "orientation":
        print(bench_orientation(args.checkpoint, args.model, args.pack, args.queries_from, args.views,
                                args.east_min_m))
    return 0


# ---- telemetry at capture time ------------------------------------------------------------------
def telemetry_lag_errors(lag_s: float, telemetry_hz: float = 20.0, duration_s: float = 120.0,
                         camera_hz: float = 3.0, alt_agl_m: float = 120.0, seed: int = 0) -> dict:
    """Attitude and height used to rectify each frame of a simulated lawnmower flight (12 m/s,
    rounded turns, 3 deg wobble, no sensor noise) against the truth at its capture time, for
    the newest telemetry when the frame is processed lag_s later (what the loop did before) and
    for telemetry interpolated at the capture time. Returns {method: {quantity: errors}}.

    The ground error is what a wrong attitude does to a fix: the vehicle is placed from the
    image-centre ray, so it moves by the difference of that ray's ground point."""
    from pymavlink.dialects.v20 import common as mavlink2

    from skyfix.config import SimConfig
    from skyfix.edge.camera import PinholeCamera, ground_of_pixel, image_from_ground
    from skyfix.firmware_bridge.telemetry import TelemetryStore
    from skyfix.sim.route import Trajectory, make_route, round_corners
    from skyfix.sim.vehicle import VehicleModel
    cfg = SimConfig(route="lawnmower", length_m=1500.0, alt_agl_m=alt_agl_m, seed=seed)
    traj = Trajectory(round_corners(make_route(cfg, (-600, -600, 600, 600), 100.0), cfg.speed_m_s ** 2 / 2.5),
                      cfg.speed_m_s)
    vehicle, store, cam = VehicleModel(traj, cfg), TelemetryStore(), PinholeCamera.from_hfov(640, 480, 70.0)
    boot_minus_mono_s, link_delay_s = 60.0, 0.005
    samples = iter(np.arange(0.0, duration_s + 1.0, 1.0 / telemetry_hz))

    def receive_until(t_mono_s):  # the telemetry that has arrived by t_mono_s (as in flight)
        while (t := next(samples)) + link_delay_s <= t_mono_s:
            p = vehicle.pose(t)
            ms, recv = int(round((t + boot_minus_mono_s) * 1e3)), t + link_delay_s
            yaw = (p.yaw_rad + np.pi) % (2 * np.pi) - np.pi
            store.update(mavlink2.MAVLink_attitude_message(ms, p.roll_rad, p.pitch_rad, yaw, 0, 0, 0), recv)
            store.update(mavlink2.MAVLink_global_position_int_message(
                ms, 0, 0, 0, int(p.agl_m * 1e3), 0, 0, 0, 65535), recv)

    def centre_en(roll, pitch, yaw, agl):
        return np.array(ground_of_pixel(image_from_ground(cam, roll, pitch, yaw, 0.0, 0.0, agl), cam.cx_px, cam.cy_px))

    out = {m: {"heading_deg": [], "tilt_deg": [], "ground_m": []} for m in ("newest at processing", "interpolated at capture")}
    for t in np.arange(1.0, duration_s, 1.0 / camera_hz):
        receive_until(t + lag_s)  # the frame is processed lag_s after its capture
        true = vehicle.pose(t)
        # The newest values when processed: asked at processing time (max age widened by the lag
        # so they are never refused); interpolated: asked at capture time.
        for method, ask_s, max_age_s in (("newest at processing", t + lag_s, 0.5 + lag_s),
                                         ("interpolated at capture", t, 0.5)):
            tel = store.at(ask_s, max_age_s)
            d_yaw = (tel.yaw_rad - true.yaw_rad + np.pi) % (2 * np.pi) - np.pi
            e = out[method]
            e["heading_deg"].append(abs(np.degrees(d_yaw)))
            e["tilt_deg"].append(np.degrees(np.hypot(tel.roll_rad - true.roll_rad, tel.pitch_rad - true.pitch_rad)))
            e["ground_m"].append(float(np.linalg.norm(
                centre_en(tel.roll_rad, tel.pitch_rad, tel.yaw_rad, tel.alt_agl_m)
                - centre_en(true.roll_rad, true.pitch_rad, true.yaw_rad, true.agl_m))))
    return out


def bench_telemetry(lags_s=(0.1, 0.2, 0.3)) -> str:
    """Markdown table of telemetry_lag_errors for several processing lags."""
    rows = ["| processing lag | telemetry used | heading error p50 / p95 / max deg | tilt error p50 / p95 / max deg | "
            "ground error p50 / p95 / max m |", "|---|---|---|---|---|"]
    for lag in lags_s:
        for method, e in telemetry_lag_errors(lag).items():
            cells = [" / ".join(f"{np.percentile(e[k], q):.2f}" for q in (50, 95, 100))
                     for k in ("heading_deg", "tilt_deg", "ground_m")]
            rows.append(f"| {lag * 1e3:.0f} ms | {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# ---- camera resection ---------------------------------------------------------------------------------
def bench_resection(pack_path: str, views: int = 15, attitude_err_deg: float = 3.0,
                    height_err_frac: float = 0.03, seed: int = 0) -> str:
    """Vehicle position from a match, placed (a) by the telemetry tilt (the match centre minus
    the crop's offset from the nadir) and (b) by camera resection, when the telemetry attitude
    is off by attitude_err_deg (1 sigma per axis) and the height by height_err_frac. Rendered
    views at 120 m over the pack's map; markdown table."""
    import math

    from skyfix.edge.camera import PinholeCamera, image_from_crop, rectify
    from skyfix.edge.pose import image_px_of_crop_px, resect
    from skyfix.config import NavConfig
    from skyfix.edge.navigator import open_matcher
    from skyfix.sim.views import ViewPose, render_view
    from skyfix.tiles.pack import TilePack
    pack = TilePack.open(pack_path)
    canvas, cam, rng = pack.canvas(), PinholeCamera.from_hfov(640, 480, 70.0), np.random.default_rng(seed)
    matcher, size_m = open_matcher(pack, NavConfig()), pack.tile_size_m
    px = int(round(size_m / canvas.gsd_m))
    e0, n0, e1, n1 = canvas.bounds_en()
    tilt, resected = [], []
    while len(tilt) < views:
        pose = ViewPose(rng.uniform(e0 + 250, e1 - 250), rng.uniform(n0 + 250, n1 - 250), 120.0,
                        math.radians(rng.uniform(-8, 8)), math.radians(rng.uniform(-8, 8)), rng.uniform(0, 2 * math.pi))
        img = render_view(canvas, cam, pose)[0]
        dr, dp, dy = np.radians(rng.normal(0, attitude_err_deg, 3))
        att = (pose.roll_rad + dr, pose.pitch_rad + dp, pose.yaw_rad + dy, 120.0 * (1 + rng.normal(0, height_err_frac)))
        crop, _, (oe, on) = rectify(img, cam, *att, size_m, px)
        m = matcher.match(crop, canvas.gsd_m, (pose.east_m, pose.north_m), 80.0)
        if m is None:
            continue
        t = math.radians(m.rotation_deg)
        tilt.append(math.hypot(m.east_m - (oe * math.cos(t) + on * math.sin(t)) - pose.east_m,
                               m.north_m - (on * math.cos(t) - oe * math.sin(t)) - pose.north_m))
        cp = resect(cam, image_px_of_crop_px(m.crop_px, image_from_crop(cam, *att, size_m, px)[0]), m.ground_en_m)
        resected.append(math.inf if cp is None else math.hypot(cp.east_m - pose.east_m, cp.north_m - pose.north_m))
    rows = [f"| vehicle placed by ({views} views, attitude error {attitude_err_deg:g} deg, height error "
            f"{100 * height_err_frac:g} %) | median m | p90 m | max m |", "|---|---|---|---|"]
    for name, e in (("telemetry tilt (before)", tilt), ("camera resection (now)", resected)):
        rows.append(f"| {name} | {np.median(e):.2f} | {np.percentile(e, 90):.2f} | {np.max(e):.2f} |")
    return "\n".join(rows)


# ---- orientation head ---------------------------------------------------------------------------
def bench_orientation(checkpoint: str, model_dir: str, pack_path: str, queries_from: str,
                      views: int = 200, east_min_m: float | None = None) -> str:
    """Heading unknown: 8 test-time rotations vs. one crop turned by the orientation head.

    Both use the same trained towers and pack; returns a markdown table.
    """
    import math

    import cv2
    import torch

    from skyfix.config import load_config
    from skyfix.edge.embedders import OnnxEmbedder
    from skyfix.tiles.ortho import load_canvas
    from skyfix.tiles.pack import TilePack
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
    emb = OnnxEmbedder(Path(model_dir) / "drone.onnx")
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


# ---- local feature matching ---------------------------------------------------------------------
def match_scores(matcher, pairs, gsd_m: float, crop_gsd_m: float, radius_m: float,
                 min_inliers: int) -> dict:
    """Run matcher.match on each pair: inliers, success (centre within MATCH_SUCCESS_PX map
    pixels of the truth with >= min_inliers), ms per pair (extraction + matching + fit), and
    the inliers found at the wrong place (what chance alone reaches)."""
    from skyfix.sim.views import match_error_px, match_is_right
    inliers, ok, ms, null, err_px = [], [], [], [], []
    for crop, (te, tn), prior, wrong in pairs:
        t0 = time.perf_counter()
        described = matcher.describe(crop)
        m = matcher.match(crop, crop_gsd_m, prior, radius_m, described=described)
        ms.append((time.perf_counter() - t0) * 1e3)
        inliers.append(0 if m is None else m.inliers)
        ok.append(match_is_right(m, (te, tn), gsd_m, min_inliers))
        if m is not None and m.inliers >= min_inliers:
            err_px.append(match_error_px(m, (te, tn), gsd_m))
        if wrong is not None:
            w = matcher.match(crop, crop_gsd_m, wrong, radius_m, described=described)
            null.append(0 if w is None else w.inliers)
    return {"inliers_median": float(np.median(inliers)), "success": float(np.mean(ok)),
            "accepted_err_px_median": float(np.median(err_px)) if err_px else float("nan"),
            "ms_p50": float(np.percentile(ms, 50)), "n": len(ok),
            "null_p99": float(np.percentile(null, 99)) if null else float("nan"),
            "null_max": int(max(null)) if null else 0}


def match_cases(shared: Path = SHARED):
    """(name, map image, frame image, source GSD m) for the matching benchmark."""
    lev = shared / "levircd"
    cases = [(f"LEVIR-CD {i} A->B", lev / "A" / f"test_{i}.png", lev / "B" / f"test_{i}.png", 0.5)
             for i in range(1, 6)]
    cases.append(("LEVIR-CD 1 A->A (same date)", lev / "A" / "test_1.png", lev / "A" / "test_1.png", 0.5))
    colorado = shared / "colorado_z18" / "mosaic_epsg3857.tif"
    cases.append(("Colorado (same date)", colorado, colorado, None))
    return cases


def _open_method(method: str, features_model: str, dense_model: str):
    """The extractor `method`, a learned one from its own model folder."""
    from skyfix.edge.features import open_extractor
    return open_extractor(method, {"xfeat": features_model, "dense": dense_model}.get(method))


def bench_match(methods=("sift", "orb", "xfeat"), pairs: int = 40, rotation_deg: float = 15.0,
                features_model: str = "models/xfeat", shared: Path = SHARED, dense_model: Optional[str] = None,
                cases: str = "") -> str:
    """Markdown table: per case and method, median inliers, success rate, ms per pair. cases:
    comma-separated beginnings of case names to run (all when empty)."""
    from skyfix.config import NavConfig, TilesConfig
    from skyfix.edge.refine import MapMatcher
    from skyfix.tiles.features import features_in_memory
    from skyfix.sim.views import match_pairs
    from skyfix.tiles.ortho import load_canvas
    nav = NavConfig()
    rows = [f"| case (rotation +-{rotation_deg:g} deg, scale 0.8-1.25, {pairs} pairs) | method | median inliers | "
            f"success | centre error px (accepted, median) | inliers at a wrong place p99 / max | ms/pair p50 |",
            "|---|---|---|---|---|---|---|"]
    wanted = [c for c in cases.split(",") if c]
    for name, map_path, frame_path, src_gsd in match_cases(shared):
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        map_canvas = load_canvas(map_path, source_gsd_m=src_gsd)
        frame_canvas = map_canvas if frame_path == map_path else load_canvas(
            frame_path, source_gsd_m=src_gsd, frame=map_canvas.frame)
        for method in methods:
            ex = _open_method(method, features_model, dense_model)
            mf = features_in_memory(map_canvas, ex, TilesConfig().features_per_mpx)
            matcher = MapMatcher(mf, ex, map_canvas.gsd_m, nav.crop_features)
            r = match_scores(matcher, match_pairs(map_canvas, frame_canvas, pairs, rotation_deg),
                             map_canvas.gsd_m, map_canvas.gsd_m, 30.0, nav.min_inliers)
            rows.append(f"| {name} | {method} | {r['inliers_median']:.0f} | {100 * r['success']:.0f} % | "
                        f"{r['accepted_err_px_median']:.1f} | {r['null_p99']:.0f} / {r['null_max']} | {r['ms_p50']:.0f} |")
    return "\n".join(rows)


# ---- SUES-200: real drone photos against their satellite image ----------------------------------
def bench_sues(methods=("sift", "orb", "xfeat"), features_model: str = "models/xfeat", dense_model: Optional[str] = None,
               shared: Path = SHARED, size_px: int = 512, rotations: int = 8) -> str:
    """Markdown table: per real drone photo of SUES-200 scene A, the inliers of a RANSAC
    homography against scene A's satellite image (best of `rotations` turns of the photo,
    since its heading is unknown), per extractor; scene B's photos (another place) against the
    same image give what chance reaches. Photos and satellite image are resized to size_px:
    the photos are oblique, with no attitude to rectify them, so this is a harder test than
    the onboard one."""
    import cv2

    from skyfix.edge.features import match_descriptors
    from skyfix.edge.refine import MATCH_RULES
    from skyfix.tiles.ortho import read_image_px
    root = shared / "sues200"
    sat = read_image_px(root / "sceneA" / "satellite" / "s0.png", size_px)
    photos = sorted((root / "sceneA" / "drone").glob("*.jpg")) + sorted((root / "sceneB" / "drone").glob("*.jpg"))
    extractors = {m: _open_method(m, features_model, dense_model) for m in methods}
    sat_f = {m: ex.extract(sat, 2000) for m, ex in extractors.items()}
    rows = ["| photo | " + " | ".join(f"{m} inliers" for m in methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for path in photos:
        img = read_image_px(path, size_px)
        cells = []
        for m, ex in extractors.items():
            best = 0
            for r in range(rotations):
                turn = cv2.getRotationMatrix2D(((size_px - 1) / 2, (size_px - 1) / 2), 360.0 * r / rotations, 1.0)
                f = ex.extract(cv2.warpAffine(img, turn, (size_px, size_px)), 2000)
                iq, it = match_descriptors(f.desc, sat_f[m].desc, ex.binary, *MATCH_RULES[m])
                if iq.size >= 8:
                    _, mask = cv2.findHomography(f.xy_px[iq], sat_f[m].xy_px[it], cv2.USAC_MAGSAC, 4.0)
                    best = max(best, 0 if mask is None else int(mask.sum()))
            cells.append(str(best))
        scene = "A" if "sceneA" in str(path) else "B (other place: chance)"
        rows.append(f"| {scene} {path.stem} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# ---- a hostile sender on the MAVLink port -------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def hostile_sender(n_datagrams: int, duration_s: float, n_sockets: int = 500, seed: int = 0):
    """An interference for `sim.run.fly`: from n_sockets source ports, n_datagrams over
    duration_s, a mix of junk bytes, MAVLink from system 42 (an autopilot HEARTBEAT, a wrong
    ATTITUDE and height, SYSTEM_TIME 2^63) and the same messages with the autopilot's own ids.
    Returns (start, sent): `sent["n"]` counts the datagrams sent."""
    import socket
    import threading

    from pymavlink.dialects.v20 import common as m2
    rng = np.random.default_rng(seed)

    def packets(sysid: int) -> list[bytes]:
        mav = m2.MAVLink(None, srcSystem=sysid, srcComponent=1)
        return [mav.heartbeat_encode(m2.MAV_TYPE_QUADROTOR, m2.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 4).pack(mav),
                mav.attitude_encode(10 ** 6, 0.5, -0.5, -3.0, 0, 0, 0).pack(mav),
                mav.global_position_int_encode(10 ** 6, 0, 0, 0, 900_000, 0, 0, 0, 0).pack(mav),
                mav.system_time_encode(2 ** 63, 10 ** 6).pack(mav)]
    payloads = packets(42) + packets(1) + [bytes(rng.integers(0, 256, 60, dtype=np.uint8)) for _ in range(4)]

    sent = {"n": 0}

    def start(connection: str):
        host, port = connection.split(":")[1:3]
        stop = threading.Event()

        def run():
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n_sockets)]
            period = duration_s / n_datagrams
            t0 = time.monotonic()
            try:
                while sent["n"] < n_datagrams and not stop.is_set():
                    socks[sent["n"] % n_sockets].sendto(payloads[sent["n"] % len(payloads)], (host, int(port)))
                    sent["n"] += 1
                    ahead = t0 + sent["n"] * period - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
            finally:
                for s in socks:
                    s.close()

        thread = threading.Thread(target=run, daemon=True, name="hostile-sender")
        thread.start()

        def stop_it():
            stop.set()
            thread.join(timeout=5)
        return stop_it
    return start, sent


def bench_attack(pack_path: str, n_datagrams: int = 20000, duration_s: float = 55.0) -> str:
    """The same simulated flight twice, with and without a hostile sender on skyfix's port:
    fixes published, received by the autopilot, error, what the link refused, RSS (MB)."""
    from skyfix.config import load_config
    from skyfix.export.models import load_embedder, model_for_pack
    from skyfix.sim.run import run_sim
    from skyfix.tiles.pack import TilePack
    cfg = load_config(overrides={"sim": {"route": "straight", "duration_s": duration_s}})
    embedder = load_embedder(model_for_pack(TilePack.open(pack_path), None), "drone", cfg.model)
    rows = [f"| {duration_s:g} s flight | hostile datagrams | published | availability | error median / max m | "
            "dropped from other senders | values refused | encode failures | RSS before / after MB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for attack in (False, True):
        start, sent = hostile_sender(n_datagrams, duration_s * 0.9) if attack else (None, {"n": 0})
        rss0 = _rss_mb()
        s = run_sim(pack_path, embedder, cfg, out_dir=f"out/bench/attack_{int(attack)}", progress=False,
                    interference=start)
        link, e = s["link"], s["error_m"]
        dropped = link.get("foreign_datagrams", 0) + sum(link.get("dropped", {}).values())
        rows.append(f"| {'under attack' if attack else 'quiet'} | {sent['n']} | {s['n_published']} | "
                    f"{100 * s['availability']:.1f} % | {e['median']:.2f} / {e['max']:.2f} | {dropped} | "
                    f"{sum(link.get('rejected_values', {}).values())} | {link.get('encode_failures', 0)} | "
                    f"{rss0:.0f} / {_rss_mb():.0f} |")
    return "\n".join(rows)


# ---- integrity under the disturbances of real flight ------------------------------------------------
_LENS = {"camera": {"fx_px": 457.0, "dist_coeffs": [-0.25, 0.08, 0.0, 0.0]}}
_MIX = {"wind_m_s": 8.0, "wind_from_deg": 300.0, "gust_m_s": 3.0, "attitude_bias": {"yaw_deg": 5.0},
        "attitude_drift_per_s": {"roll_deg": 0.1, "pitch_deg": -0.05}, "attitude_lag_s": 0.1,
        "time_offset_s": 0.03, "time_jitter_s": 0.01, "exposure_ms": 4.0, "gain_jitter": 0.2}
# name -> (sim.disturb, other config sections). Every row flies with the tilt that holds the track
# against the air (tilt_from_drag), so "calm" differs from the rows below by their disturbance only.
INTEGRITY_CONDITIONS = {
    "calm": ({}, {}),
    "wind 8 m/s": ({"wind_m_s": 8.0, "wind_from_deg": 300.0}, {}),
    "wind 8 m/s, gusts 3 m/s": ({"wind_m_s": 8.0, "wind_from_deg": 300.0, "gust_m_s": 3.0}, {}),
    "roll bias 10 deg": ({"attitude_bias": {"roll_deg": 10.0}}, {}),
    "attitude drift 0.2 deg/s": ({"attitude_drift_per_s": {"roll_deg": 0.2, "pitch_deg": 0.2}}, {}),
    "attitude step 8 deg at 20 s": ({"attitude_step": {"roll_deg": -8.0}, "attitude_step_at_s": 20.0}, {}),
    "attitude lag 0.2 s": ({"attitude_lag_s": 0.2, "gust_m_s": 3.0}, {}),
    "yaw bias 15 deg": ({"attitude_bias": {"yaw_deg": 15.0}}, {}),
    "time offset 50 ms, jitter 20 ms": ({"time_offset_s": 0.05, "time_jitter_s": 0.02}, {}),
    "lens distortion (k1 -0.25)": ({}, _LENS),
    "motion blur 8 ms, gain jitter 0.3": ({"exposure_ms": 8.0, "gain_jitter": 0.3}, {}),
    "mix: all of the above, milder": (_MIX, _LENS),
}


def _integrity_row(name: str, s: dict, handover_availability: float) -> str:
    e, cal = s["error_m"], s["calibration"]
    fmt = lambda v, f="{:.1f}": "n/a" if v is None else f.format(v)  # noqa: E731
    beyond, first_fix_s = cal.get("beyond_3x", 0), s.get("time_to_first_fix_s")
    autopilot = s.get("autopilot_error_m")
    extra = "" if autopilot is None else (f" | {fmt(autopilot['median'])} / {fmt(autopilot['max'])} | "
                                          f"{s['ekf_glitches']} | {'yes' if s['mission_completed'] else 'NO'}")
    return (f"| {name} | {fmt(100 * handover_availability)} % | {fmt(100 * s['availability'])} % | "
            f"{fmt(e['median'])} / {fmt(e['p95'])} / {fmt(e['max'])} | {fmt(cal.get('worst_error_over_accuracy'), '{:.2f}')} | "
            f"**{beyond}** | {s['n_published']} | {fmt(first_fix_s)} | "
            f"{sum(v for k, v in s.get('integrity', {}).items() if k.startswith('attitude'))}{extra} |")


def _availability_from(track_csv: str, start_s: Optional[float], end_s: float) -> float:
    """Availability of a flight's messages (its track.csv) from start_s (the first fix or the
    hand-over) to end_s; 0 when it never started."""
    import csv

    from skyfix.sim.score import availability
    if start_s is None:
        return 0.0
    with open(track_csv) as f:
        t = np.array([float(row["t_s"]) for row in csv.DictReader(f)])
    return availability(t, start_s, end_s)


def bench_integrity(pack_path: str, length_m: float = 600.0, conditions: Optional[list] = None,
                    sitl_wind_m_s: tuple = (), out: str = "out/bench/integrity") -> str:
    """Fly the simulated drone through INTEGRITY_CONDITIONS (each alone, and a milder mix), and
    ArduCopter SITL in each of sitl_wind_m_s, and print per condition: availability from the
    first fix (SIL) or the hand-over (SITL) to the end and over the whole flight, error median
    / p95 / max, the worst error-to-accuracy ratio, messages beyond 3x their accuracy, frames
    where the image contradicted the telemetry's attitude, and in SITL the autopilot's own
    error, its GPS glitches and whether the mission completed."""
    import json

    from skyfix.config import load_config
    from skyfix.export.models import load_embedder, model_for_pack
    from skyfix.sim.run import run_sim
    from skyfix.tiles.pack import TilePack
    embedder = load_embedder(model_for_pack(TilePack.open(pack_path), None), "drone", load_config().model)
    rows = ["| condition | availability from first fix / hand-over | whole flight | error median / p95 / max m | "
            "worst error / accuracy | beyond 3x | messages | first fix s | attitude contradicted (frames) |"
            " autopilot error median / max m | EKF glitches | mission completed |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    names = conditions or list(INTEGRITY_CONDITIONS)
    for name in names:
        disturb, sections = INTEGRITY_CONDITIONS[name]
        cfg = load_config(overrides={**sections, "sim": {"route": "straight", "length_m": length_m,
                                                          "disturb": {"tilt_from_drag": True, **disturb}}})
        slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
        s = run_sim(pack_path, embedder, cfg, out_dir=f"{out}/{slug}", progress=False)
        handover = _availability_from(f"{out}/{slug}/track.csv", s.get("time_to_first_fix_s"), s["duration_s"])
        rows.append(_integrity_row(name, s, handover) + " | | |")
        print(rows[-1], flush=True)
    for wind in sitl_wind_m_s:
        from skyfix.sim.sitl_flight import run_sitl
        cfg = load_config(overrides={"sim": {"route": "straight", "length_m": 500.0, "declination_deg": 8.66,
                                             "disturb": {"wind_m_s": wind, "wind_from_deg": 180.0}}})
        s = run_sitl(pack_path, embedder, cfg, out_dir=f"{out}/sitl_wind_{wind:g}", progress=False)
        end_s = s["handover_s"] + s["mission_s"] if s["handover_s"] is not None and s["mission_s"] else 0.0
        handover = _availability_from(f"{out}/sitl_wind_{wind:g}/track.csv", s["handover_s"], end_s)
        rows.append(_integrity_row(f"ArduCopter SITL, wind {wind:g} m/s", s, handover))
        print(rows[-1], flush=True)
        Path(f"{out}/sitl_wind_{wind:g}.json").write_text(json.dumps(s, indent=2, default=str))
    return "\n".join(rows)


# ---- soak: a long flight --------------------------------------------------------------------------
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
    from skyfix.export.models import load_embedder, model_for_pack
    from skyfix.sim.run import fly, prepare_flight, summarise, write_outputs
    from skyfix.tiles.pack import TilePack
    # Long enough for the whole duration: the rounded turns at the legs' ends are flown slower.
    cfg = load_config(overrides={"sim": {"route": "lawnmower", "duration_s": duration_s,
                                         "length_m": duration_s * 12.0 * 1.3 + 1000.0}})
    embedder = load_embedder(model_for_pack(TilePack.open(pack_path), None), "drone", cfg.model)
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
        "| RSS floor after 5 min, first / last third (lowest sample), MB | {:.0f} / {:.0f} |".format(*_rss_floors_mb(after5)),
        f"| RSS trend after 5 min (least squares), MB per hour | {_rss_trend_mb_per_h(after5):+.0f} |",
        f"| frame latency p50, first / last period after 5 min, ms | {lat[0]:.0f} / {lat[-1]:.0f} |" if lat else "| frame latency | n/a |",
        f"| threads min / max | {min(x['threads'] for x in samples)} / {max(x['threads'] for x in samples)} |",
        f"| open files min / max | {min(x['fds'] for x in samples)} / {max(x['fds'] for x in samples)} |",
        f"| published / availability / error median, max m / wrong confident | {s['n_published']} / "
        f"{100 * s['availability']:.1f} % / {s['error_m']['median']:.2f}, {s['error_m']['max']:.2f} / "
        f"{s['confident_wrong_fixes']} |"])


def _rss_trend_mb_per_h(samples: list) -> float:
    """Slope of a least-squares line through (t_min, rss_mb), in MB per hour: a leak shows as a
    steady slope, while the allocator's ups and downs (tens of MB either way between minutes in
    the 12-minute soaks) would make an end-minus-start figure say whatever the last sample was."""
    if len(samples) < 2:
        return float("nan")
    t = np.array([x["t_min"] for x in samples])
    return float(np.polyfit(t, [x["rss_mb"] for x in samples], 1)[0] * 60.0)


def _rss_floors_mb(samples: list) -> tuple:
    """(lowest RSS of the first third of the samples, of the last third), MB. A leak lifts the
    floor; memory the allocator takes and gives back between samples does not."""
    rss = [x["rss_mb"] for x in samples]
    third = max(1, len(rss) // 3)
    return min(rss[:third]), min(rss[-third:])


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


# ---- visual odometry on a real flight -------------------------------------------------------------
def odometry_errors(folder: Path, method: str, features_model: str = "models/xfeat",
                    fx_px: float = 702.0, agl_m: Optional[float] = None) -> list[dict]:
    """Consecutive photos of a real flight (EXIF GPS): the image displacement at the EXIF
    height against the GPS displacement. One dict per pair: gps_m, vo_m (None when no match)."""
    import cv2

    from skyfix.edge.camera import PinholeCamera
    from skyfix.edge.features import XFeatExtractor, open_extractor
    from skyfix.edge.odometry import frame_shift
    from skyfix.edge.sources import read_exif
    from skyfix.geo import LocalFrame
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    exifs = [read_exif(p) for p in paths]
    frame = LocalFrame(exifs[0]["lat_deg"], exifs[0]["lon_deg"])
    # Frames are finer than a map: XFeat at their own resolution.
    ex = XFeatExtractor(features_model, upscale=1.0) if method == "xfeat" else open_extractor(method)
    out, prev = [], None
    for path, exif in zip(paths, exifs):
        img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        cam = PinholeCamera(w, h, fx_px, fx_px, (w - 1) / 2, (h - 1) / 2)
        e, n, _ = frame.to_enu(exif["lat_deg"], exif["lon_deg"])
        if prev is not None:
            shift = frame_shift(prev[0], img, ex, cam, agl_m or exif["alt_m"])
            out.append({"pair": f"{prev[2]}->{path.stem}", "gps_m": float(np.hypot(e - prev[1][0], n - prev[1][1])),
                        "vo_m": None if shift is None else shift.distance_m,
                        "inliers": 0 if shift is None else shift.inliers})
        prev = (img, (e, n), path.stem)
    return out


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


# ---- region scale: a large build and onboard memory ---------------------------------------------
def make_region_geotiff(out: Path, size_km: float, shared: Path = SHARED) -> Path:
    """A large test orthophoto: the shared Colorado GeoTIFF (1.19 km square, 2560 px, EPSG:3857)
    laid out n x n times, every other copy mirrored (so neighbouring copies join without a seam),
    written tile by tile as a tiled JPEG GeoTIFF. The content repeats: it measures memory and
    speed, not retrieval on real unique ground."""
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window
    if out.is_file():
        return out
    src_path = shared / "colorado_z18" / "mosaic_epsg3857.tif"
    with rasterio.open(src_path) as src:
        img, tr, crs = src.read(), src.transform, src.crs
    side = img.shape[1]
    ground_m = side * tr.a * math.cos(math.radians(39.0))  # Web Mercator metres -> ground at 39 N
    n = int(math.ceil(size_km * 1000 / ground_m))
    profile = dict(driver="GTiff", width=n * side, height=n * side, count=3, dtype="uint8", crs=crs,
                   transform=Affine(tr.a, 0, tr.c, 0, tr.e, tr.f), tiled=True, blockxsize=512, blockysize=512,
                   compress="jpeg", jpeg_quality=90, photometric="ycbcr", BIGTIFF="IF_SAFER")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for i in range(n):
            for j in range(n):
                part = img[:, ::-1 if i % 2 else 1, ::-1 if j % 2 else 1]
                dst.write(np.ascontiguousarray(part), window=Window(j * side, i * side, side, side))
    tmp.rename(out)
    return out


def _run_peak_rss_mb(cmd: list) -> tuple[float, float, float]:
    """Run a command; (wall time s, peak RSS of its largest process MB, peak RSS summed over the
    process and its children MB, sampled every 0.5 s with psutil: a Dask build's workers)."""
    import resource
    import subprocess
    import threading
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak_tree = [0.0]

    def sample():
        try:
            import psutil
        except ImportError:
            return
        while proc.poll() is None:
            try:
                p = psutil.Process(proc.pid)
                total = sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])
                peak_tree[0] = max(peak_tree[0], total / 2 ** 20)
            except psutil.Error:
                pass
            time.sleep(0.5)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    if proc.wait() != 0:
        raise SkyfixError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    watcher.join()
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return time.perf_counter() - t0, largest, peak_tree[0]


def bench_build(out: str = "out/bench", size_km: float = 10.0, model: str = "models/imagenet",
                features: str = "xfeat,sift", features_model: str = "models/xfeat", index: str = "flat",
                cluster: Optional[str] = None) -> str:
    """Build a pack of a size_km x size_km region (make_region_geotiff) with `skyfix tiles build`
    in a child process (with `cluster`, its embedding on Dask); print its time, peak RSS and size."""
    tif = make_region_geotiff(Path(out) / f"region_{size_km:g}km.tif", size_km)
    pack = Path(out) / f"region_{size_km:g}km"
    cmd = [sys.executable, "-m", "skyfix.cli", "tiles", "build", "--ortho", str(tif), "--out", str(pack),
           "--model", model, "--gsd-m", "0.5", "--index", index, "--features", features,
           "--features-model", features_model] + (["--cluster", cluster] if cluster else [])
    wall_s, rss_mb, tree_mb = _run_peak_rss_mb(cmd)
    from skyfix.tiles.pack import TilePack
    p = TilePack.open(pack)
    m = p.manifest["map"]
    disk_mb = sum(f.stat().st_size for f in pack.rglob("*") if f.is_file()) / 2 ** 20
    area_km2 = m["width_px"] * m["height_px"] * m["gsd_m"] ** 2 / 1e6
    return ("| region | map px | tiles | features | embedding on | build s | peak RSS MB: largest process / "
            "all processes | pack MB |\n|---|---|---|---|---|---|---|---|\n"
            f"| {area_km2:.0f} km2 at {m['gsd_m']} m/px | {m['width_px']} x {m['height_px']} | {len(p)} | "
            f"{features} | {cluster or 'this process'} | {wall_s:.0f} | {rss_mb:.0f} / {tree_mb:.0f} | {disk_mb:.0f} |")


def onboard_probe(pack_path: str, model: str, features_model: str, frames: int = 20, seed: int = 0) -> dict:
    """Start the onboard loop's parts on a pack as `skyfix fly` does (pack, model, matcher), then
    locate `frames` rendered views at random tiles. Returns start-up time, RSS after start-up and
    at the end (MB), and ms per located frame. Run in a fresh process (`bench_onboard`)."""
    from skyfix.config import load_config
    from skyfix.contracts import Frame, Telemetry
    from skyfix.edge.fly import startup
    from skyfix.edge.navigator import Navigator
    from skyfix.sim.views import ViewPose, render_view
    t0 = time.perf_counter()
    cfg = load_config(overrides={"nav": {"pack": pack_path, "model": model, "features_model": features_model}})
    pack, embedder, cam = startup(cfg)
    nav = Navigator(pack, embedder, cam, cfg.nav)
    startup_s, rss_start = time.perf_counter() - t0, _rss_mb()
    blocks, rng, ms, hits, fixes = pack.map_blocks(), np.random.default_rng(seed), [], 0, 0
    for i in range(frames):
        tile = pack.tile(int(rng.integers(len(pack))))
        yaw = float(rng.uniform(0, 2 * math.pi))
        col, row = blocks.px_from_en(tile.east_m, tile.north_m)
        half = int(300 / blocks.gsd_m)  # the ground a 120 m high 70 deg view can see, and more
        region = blocks.region_px(int(row) - half, int(row) + half, int(col) - half, int(col) + half)
        image = render_view(region, cam, ViewPose(tile.east_m, tile.north_m, 120.0, 0.0, 0.0, yaw))[0]
        t_us = int(i * 1e6)
        t1 = time.perf_counter()
        m, _, _ = nav.locate(Frame(image, t_us, Telemetry(t_us, 0.0, 0.0, yaw, 120.0), f"view{i}"))
        ms.append((time.perf_counter() - t1) * 1e3)
        fixes += m is not None
        if m is not None and math.hypot(m.east_m - tile.east_m, m.north_m - tile.north_m) < 10:
            hits += 1
    return {"tiles": len(pack), "startup_s": startup_s, "rss_start_mb": rss_start, "rss_end_mb": _rss_mb(),
            "locate_ms_p50": float(np.median(ms)), "located": fixes, "located_within_10m": hits, "frames": frames}


def bench_onboard(packs: list, model: str = "models/imagenet", features_model: str = "models/xfeat",
                  frames: int = 20) -> str:
    """onboard_probe on each pack, each in a fresh process so memory and start-up are its own."""
    import json
    import subprocess
    rows = ["| pack | tiles | pack MB | start-up s: checksums read / recorded | RSS after start-up MB | "
            "RSS after frames MB | locate ms p50 | located / within 10 m of the view |", "|---|---|---|---|---|---|---|---|"]
    from skyfix.artifacts import VERIFIED_FILE
    for pack in packs:
        for stamp in Path(pack).rglob(VERIFIED_FILE):  # the first start reads every checksum
            stamp.unlink()
        runs = []
        for _ in range(2):
            code = (f"import json; from skyfix.bench import onboard_probe; "
                    f"print(json.dumps(onboard_probe({str(pack)!r}, {model!r}, {features_model!r}, {frames})))")
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        r = runs[1]
        disk_mb = sum(f.stat().st_size for f in Path(pack).rglob("*") if f.is_file()) / 2 ** 20
        rows.append(f"| {pack} | {r['tiles']} | {disk_mb:.0f} | {runs[0]['startup_s']:.2f} / {r['startup_s']:.2f} | "
                    f"{r['rss_start_mb']:.0f} | {r['rss_end_mb']:.0f} | {r['locate_ms_p50']:.0f} | "
                    f"{r['located']} / {r['located_within_10m']} of {r['frames']} |")
    return "\n".join(rows)


# ---- the index on real tile embeddings ----------------------------------------------------------
REAL_MAPS = ["Colorado"] + [f"LEVIR-CD {i}{d}" for d in "AB" for i in range(1, 6)]


def real_embeddings(n: int, model: str, tower: str, seed: int, shared: Path = SHARED,
                    batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """float32 n x D embeddings of real map tiles: the shared maps (REAL_MAPS: Colorado; LEVIR-CD
    1-5 on both dates) rendered at random places, headings 0-360 deg, sizes 80-125 m and
    photometric change, embedded by `tower` of `model`, and the map of each (index into
    REAL_MAPS). The distribution an index meets, not isotropic noise."""
    from skyfix.config import load_config
    from skyfix.export.models import load_embedder
    from skyfix.sim.views import photometric
    from skyfix.tiles.ortho import load_canvas
    from tqdm import tqdm
    canvases = [load_canvas(shared / "colorado_z18" / "mosaic_epsg3857.tif")]
    canvases += [load_canvas(shared / "levircd" / d / f"test_{i}.png", source_gsd_m=0.5) for d in "AB" for i in range(1, 6)]
    area = np.array([c.width_m * c.height_m for c in canvases])
    embedder = load_embedder(model, tower, load_config().model)
    rng = np.random.default_rng(seed)
    out, source = np.empty((n, embedder.dim), np.float32), np.empty(n, np.int64)
    for start in tqdm(range(0, n, batch), unit="batch", desc=f"embed {n} real tiles ({tower})"):
        images = []
        for i in range(min(batch, n - start)):
            source[start + i] = rng.choice(len(canvases), p=area / area.sum())
            c = canvases[source[start + i]]
            size = 100.0 * rng.uniform(0.8, 1.25)
            e0, n0, e1, n1 = c.bounds_en()
            e, nn = rng.uniform(e0 + 0.8 * size, e1 - 0.8 * size), rng.uniform(n0 + 0.8 * size, n1 - 0.8 * size)
            images.append(photometric(c.render(e, nn, size, embedder.input_px, rng.uniform(0, 360))[0], rng))
        out[start:start + len(images)] = embedder.embed(np.stack(images))
    return out, source


def _matched_gaussian(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n unit vectors drawn from a Gaussian with the real embeddings' mean and covariance (a
    million-tile stand-in with their spectrum, where embedding a million real tiles takes hours)."""
    rng = np.random.default_rng(seed)
    mean = real.mean(0)
    w, v = np.linalg.eigh(np.cov(real, rowvar=False))
    proj = (v * np.sqrt(np.clip(w, 0, None))).T.astype(np.float32)
    out = np.empty((n, real.shape[1]), np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        out[i:i + m] = rng.standard_normal((m, real.shape[1]), dtype=np.float32) @ proj + mean
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _reranked_search(index, xb: np.ndarray, shortlist: int):
    """A search function: the index's top `shortlist`, re-ranked exactly on xb; top 10 ids per query."""
    def search(qv):
        cand = index.search(qv, shortlist)[1]
        return [c[c >= 0][np.argsort(-(xb[c[c >= 0]] @ row))[:10]] for row, c in zip(qv, cand)]
    return search


def _index_rows(name: str, xb: np.ndarray, q: np.ndarray, kinds: tuple) -> list:
    """Build each index kind over xb; recall@10 against exact search, latency, memory, build time."""
    import faiss
    from skyfix.tiles.pack import make_index
    exact = make_index("flat", xb).search(q, 10)[1]
    rows, it = [], iter(range(10 ** 9))

    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "binary":  # 512-bit sign codes after a random rotation, trained thresholds
            index = faiss.index_factory(xb.shape[1], "LSHrt")
            index.train(xb)
            index.add(xb)
        else:
            index = make_index(kind, xb)
        build_s = time.perf_counter() - t0
        mem_mb = len(faiss.serialize_index(index)) / 2 ** 20
        variants = [("", lambda qv: index.search(qv, 10)[1])]
        if kind == "ivfpq":
            inner = faiss.extract_index_ivf(index)
            variants = [("nprobe 32", lambda qv: (setattr(inner, "nprobe", 32), index.search(qv, 10)[1])[1]),
                        ("nprobe 128, top 200 re-ranked", lambda qv: (setattr(inner, "nprobe", 128),
                                                                      _reranked_search(index, xb, 200)(qv))[1])]
        if kind == "binary":
            variants.append(("top 200 re-ranked", _reranked_search(index, xb, 200)))
        for label, search in variants:
            got = search(q)
            recall = np.mean([len(set(np.asarray(a).tolist()) & set(b.tolist())) / 10 for a, b in zip(got, exact)])
            ms = _latency_ms(lambda: search(q[next(it) % len(q)][None]), 3, 100)
            rows.append(f"| {name} | {len(xb):,} | {kind} {label} | {recall:.3f} | {np.percentile(ms, 50):.2f} | "
                        f"{np.percentile(ms, 95):.2f} | {mem_mb:.0f} | {build_s:.0f} |")
    return rows


def _cached_real(path: Path, n: int, model: str, tower: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """real_embeddings, computed once and kept in `path` (.npz)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        vectors, source = real_embeddings(n, model, tower, seed)
        np.savez(path, vectors=vectors, source=source)
    with np.load(path, allow_pickle=False) as z:
        return z["vectors"], z["source"]


def bench_index(model: str = "models/imagenet", out: str = "out/bench", n_real: int = 100_000,
                n_large: int = 1_000_000, queries: int = 500, kinds=("flat", "hnsw", "ivfpq", "binary")) -> str:
    """Index recall/latency/memory/build time on real tile embeddings (n_real, cached in OUT) and
    on a million drawn with their covariance; queries are drone-tower embeddings of real views."""
    xb, _ = _cached_real(Path(out) / f"real_embeddings_{n_real}.npz", n_real, model, "sat", 0)
    q, _ = _cached_real(Path(out) / f"real_queries_{queries}.npz", queries, model, "drone", 1)
    rows = ["| embeddings | vectors | index | recall@10 vs exact | p50 ms | p95 ms | index MB | build s |",
            "|---|---|---|---|---|---|---|---|"]
    rows += _index_rows("real tiles", xb, q, kinds)
    if n_large:
        rows += _index_rows("covariance-matched", _matched_gaussian(xb, n_large, seed=2), q,
                            tuple(k for k in kinds if k != "hnsw" or n_large <= 200_000))
    return "\n".join(rows)


def bench_distractors(model: str = "models/imagenet", out: str = "out/bench", views: int = 200,
                      n_matched: int = 1_000_000, window_m: float = 200.0) -> str:
    """Drone -> satellite R@1 of the Colorado pack's tiles alone and hidden among distractor
    tiles of other places: real tiles of the LEVIR-CD maps (from bench index's cache) and
    n_matched covariance-matched vectors; global search vs the prior window (radius window_m
    around the true position: distractors elsewhere never enter it)."""
    from skyfix.config import load_config
    from skyfix.export.models import load_embedder
    from skyfix.tiles.pack import TilePack
    from skyfix.train.evaluate import embed_queries, make_queries, similarity_to_tiles
    cfg = load_config()
    cfg.eval.views = views
    pack = TilePack.open(Path(out) / "colorado")
    drone = load_embedder(model, "drone", cfg.model)
    qs = make_queries(pack, pack.canvas(), cfg.camera, cfg.eval, drone.input_px, progress=False)
    vectors = embed_queries(drone, qs.crops)   # Q x R x D (R assumed headings)
    S, P = similarity_to_tiles(pack, vectors), pack.contains(qs.east_m, qs.north_m)
    top1 = np.argmax(S, axis=1)
    hit = P[np.arange(len(top1)), top1]
    real, source = _cached_real(Path(out) / "real_embeddings_100000.npz", 100_000, model, "sat", 0)
    sets = [("LEVIR-CD real tiles (10 maps, augmented)", real[source != 0])]
    if n_matched:
        sets.append(("covariance-matched vectors", _matched_gaussian(real, n_matched, seed=3)))
    flat = vectors.reshape(-1, vectors.shape[-1])
    near = np.hypot(pack.east_m[None] - qs.east_m[:, None], pack.north_m[None] - qs.north_m[:, None]) <= window_m
    in_window = np.where(near, S, -np.inf)
    win_top1 = np.argmax(in_window, axis=1)
    rows = ["| tiles searched | distractors | R@1 global | R@1 prior window r=200 m |", "|---|---|---|---|",
            f"| Colorado pack, {len(pack)} tiles | none | {hit.mean():.3f} | "
            f"{P[np.arange(len(win_top1)), win_top1].mean():.3f} |"]
    for name, d in sets:
        best = np.full(len(flat), -np.inf, np.float32)
        for i in range(0, len(d), 100_000):
            best = np.maximum(best, (flat @ d[i:i + 100_000].T).max(axis=1))
        dmax = best.reshape(vectors.shape[:2]).max(axis=1)
        beaten = hit & (S[np.arange(len(top1)), top1] > dmax)
        rows.append(f"| Colorado among {len(d):,} {name} | {len(d):,} | {beaten.mean():.3f} | "
                    f"{P[np.arange(len(win_top1)), win_top1].mean():.3f} (none enters the window) |")
    return "\n".join(rows)


def bench_ivf_sweep(out: str = "out/bench", n_large: int = 1_000_000) -> str:
    """OPQ + IVF-PQ at a million covariance-matched vectors: recall@10 and latency over nprobe and
    the re-ranked shortlist (bench index's cached real embeddings and queries)."""
    import faiss
    from skyfix.tiles.pack import make_index
    xb, _ = _cached_real(Path(out) / "real_embeddings_100000.npz", 100_000, "models/imagenet", "sat", 0)
    q, _ = _cached_real(Path(out) / "real_queries_500.npz", 500, "models/imagenet", "drone", 1)
    big = _matched_gaussian(xb, n_large, seed=2)
    exact = make_index("flat", big).search(q, 10)[1]
    ivf = make_index("ivfpq", big)
    inner, it = faiss.extract_index_ivf(ivf), iter(range(10 ** 9))
    rows = ["| nprobe | re-ranked | recall@10 | p50 ms | p95 ms |", "|---|---|---|---|---|"]
    for nprobe in (48, 64, 96, 128):
        for shortlist in (200, 400):
            inner.nprobe = nprobe
            search = _reranked_search(ivf, big, shortlist)
            got = search(q)
            recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(got, exact)])
            ms = _latency_ms(lambda: search(q[next(it) % len(q)][None]), 3, 200)
            rows.append(f"| {nprobe} | {shortlist} | {recall:.3f} | {np.percentile(ms, 50):.2f} | "
                        f"{np.percentile(ms, 95):.2f} |")
    return "\n".join(rows)
