"""The `skyfix` command line. Each subcommand is a thin layer over a library function."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
import logging
import sys
from pathlib import Path

from skyfix.config import load_config
from skyfix.errors import SkyfixError

log = logging.getLogger("skyfix")


def _config(args, **overrides):
    return load_config(getattr(args, "config", None), overrides)


# ---- doctor ---------------------------------------------------------------------------------
def cmd_doctor(args) -> int:
    from skyfix.doctor import report
    print(report())
    return 0


# ---- tiles ----------------------------------------------------------------------------------
def cmd_tiles_build(args) -> int:
    from skyfix.edge.embedders import load_embedder
    from skyfix.tiles.build import build_pack
    cfg = _config(args, tiles={"tile_size_m": args.tile_size_m, "stride_m": args.stride_m,
                               "gsd_m": args.gsd_m, "index": args.index,
                               "imagery_date": args.imagery_date,
                               "imagery_licence": args.imagery_licence})
    embedder = load_embedder(args.model, "sat", cfg.model)
    build_pack(args.ortho, args.out, cfg, embedder, model_source=str(args.model),
               source_gsd_m=args.source_gsd_m, progress=not args.quiet)
    print(f"next: skyfix tiles inspect {args.out}")
    return 0


def cmd_tiles_inspect(args) -> int:
    from skyfix.tiles.pack import TilePack
    pack = TilePack.open(args.pack)
    m = pack.manifest
    e0, n0, e1, n1 = m["region"]["bounds_en_m"]
    r = m["region"]
    print(f"TilePack {args.pack}  (schema {m['schema_version']}, created {m['created_utc']})\n"
          f"  model_id   {m['model_id']}  dim {m['dim']}  metric {m['metric']}  index {m['index']}\n"
          f"  source     {m['source']}  ({m['crs_source']})\n"
          f"  imagery    {m.get('imagery')}\n"
          f"  extent     {e1 - e0:.0f} x {n1 - n0:.0f} m; tile centres lat {r['lat_min_deg']:.6f}.."
          f"{r['lat_max_deg']:.6f}, lon {r['lon_min_deg']:.6f}..{r['lon_max_deg']:.6f}\n"
          f"  grid       {m['grid']['tile_size_m']:g} m tiles every {m['grid']['stride_m']:g} m, "
          f"{m['grid']['tile_px']} px; map {m['map']['width_px']} x {m['map']['height_px']} px at "
          f"{m['map']['gsd_m']:.3f} m/px\n"
          f"  tiles      {len(pack)}  (files verified: {', '.join(m['files'])})")
    return 0


# ---- export ---------------------------------------------------------------------------------
def cmd_export_onnx(args) -> int:
    from skyfix.export.onnx_export import export_onnx
    from skyfix.train.towers import build_towers, load_checkpoint
    cfg = _config(args, model={"lpn_parts": args.lpn_parts, "dim": args.dim})
    model = load_checkpoint(args.checkpoint) if args.checkpoint else build_towers(cfg.model)
    out = export_onnx(model, args.out)
    print(f"wrote {out}; next: skyfix tiles build --ortho MAP --out PACK --model {out}")
    return 0


# ---- eval -----------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from skyfix.edge.embedders import load_embedder
    from skyfix.tiles.ortho import load_canvas
    from skyfix.tiles.pack import TilePack
    from skyfix.train.evaluate import evaluate, format_table, plot_examples
    cfg = _config(args, eval={"views": args.views, "heading": args.heading, "seed": args.seed,
                              "alt_agl_min_m": args.alt_min_m, "alt_agl_max_m": args.alt_max_m,
                              "east_min_m": args.east_min_m})
    pack = TilePack.open(args.pack)
    model = args.model or pack.manifest.get("model_source") or "imagenet"
    embedder = load_embedder(model, "drone", cfg.model)
    canvas = load_canvas(args.queries_from, pack.canvas().gsd_m, source_gsd_m=args.source_gsd_m,
                         frame=pack.frame)
    result = evaluate(pack, embedder, canvas, cfg.camera, cfg.eval, progress=not args.quiet)
    print(format_table(result))
    png = Path(args.png) if args.png else (Path(args.json).with_suffix(".png") if args.json else None)
    if png:
        plot_examples(pack, result, png)
        print(f"examples: {png}")
    result.pop("_internal")
    result.update({"pack": str(args.pack), "queries_from": str(args.queries_from),
                   "config": {"eval": asdict(cfg.eval), "camera": asdict(cfg.camera)}})
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_crossview_check(args) -> int:
    from skyfix.edge.embedders import load_embedder
    from skyfix.train.evaluate import crossview_smoke
    cfg = _config(args)
    res = crossview_smoke(args.data, load_embedder(args.model, "drone", cfg.model),
                          load_embedder(args.model, "sat", cfg.model))
    for name, s, b, m in zip(res["views"], res["sim_sat"], res["best_sim_scene_b"], res["margin"]):
        print(f"{name:12s} sim(s0) {s:.3f}  best sim(scene B) {b:.3f}  margin {m:+.3f}")
    print(f"{res['passed']}/{res['total']} scene-A views rank their satellite image first; mean "
          f"drone-drone similarity within scene A {res['mean_sim_within_a']:.3f}, A to B "
          f"{res['mean_sim_a_to_b']:.3f}")
    return 0 if res["passed"] == res["total"] else 1


# ---- onboard --------------------------------------------------------------------------------
def _sim_overrides(args) -> dict:
    return {"route": args.route, "alt_agl_m": args.alt_agl_m, "duration_s": args.duration_s,
            "length_m": args.length_m, "speed_m_s": args.speed_m_s, "seed": args.seed}


def cmd_sim(args) -> int:
    from skyfix.edge.sim import format_summary, run_sim
    cfg = _config(args, sim=_sim_overrides(args), bridge={"protocol": args.protocol})
    model = args.model or _pack_model(args.pack)
    summary = run_sim(args.pack, model, cfg, frames_from=args.frames_from or args.ortho,
                      source_gsd_m=args.source_gsd_m, out_dir=args.out, progress=not args.quiet)
    print(format_summary(summary))
    print(f"track: {Path(args.out) / 'track.png'}, {Path(args.out) / 'track.csv'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return 0


def _pack_model(pack_path: str) -> str:
    from skyfix.tiles.pack import TilePack
    return TilePack.open(pack_path).manifest.get("model_source") or "imagenet"


def cmd_demo(args) -> int:
    from skyfix.demo import run_demo
    return run_demo(args.ortho, args.out, args.duration_s, args.source_gsd_m)


def cmd_fly(args) -> int:
    from skyfix.edge.fly import run_fly
    cfg = _config(args)
    print(json.dumps(run_fly(cfg, max_frames=args.max_frames), indent=2))
    return 0


def cmd_query(args) -> int:
    import numpy as np

    from skyfix.edge.embedders import load_embedder
    from skyfix.edge.gallery import FrameGallery
    from skyfix.errors import ModelMismatch
    from skyfix.tiles.pack import TilePack
    pack = TilePack.open(args.pack)
    gallery = FrameGallery.load(args.gallery)
    if gallery.model_id != pack.model_id:
        raise ModelMismatch(f"gallery model {gallery.model_id} != pack model {pack.model_id}")
    sat = load_embedder(args.model or pack.manifest.get("model_source") or "imagenet", "sat")
    if args.tile_id is not None:
        tile = pack.tile(args.tile_id)
    else:
        e, n, _ = pack.frame.to_enu(args.lat, args.lon)
        d = np.hypot(pack.east_m - e, pack.north_m - n)
        tile = pack.tile(int(np.argmin(d)))
    img = pack.canvas().render(tile.east_m, tile.north_m, tile.size_m, sat.input_px)[0]
    hits = gallery.query(sat.embed(img[None]), args.k)[0]
    print(f"tile {tile.tile_id} at {tile.lat_deg:.6f}, {tile.lon_deg:.6f}: frames that saw it")
    for h in hits:
        where = f"fix {h['lat_deg']:.6f}, {h['lon_deg']:.6f}" if np.isfinite(h["lat_deg"]) else "no fix"
        print(f"  {h['frame_id']}  score {h['score']:.3f}  t {h['t_capture_us'] / 1e6:.2f} s  {where}")
    return 0


# ---- train ----------------------------------------------------------------------------------
TRAIN_PRESETS = {
    # Minutes on a laptop CPU: small batches, few steps; proves the loop and gives a first gain.
    "cpu-quick": {"train": {"batch_size": 12, "epochs": 3, "steps_per_epoch": 25, "lr": 1e-4,
                            "warmup_steps": 5, "val_views": 60, "location_spacing_m": 20.0}},
    # A workstation GPU: large contrastive batches (grad cache keeps memory flat), AMP.
    "workstation": {"train": {"batch_size": 128, "grad_cache_chunk": 32, "epochs": 30,
                              "lr": 3e-4, "warmup_steps": 200, "val_views": 300,
                              "location_spacing_m": 10.0, "amp": True}},
}


def cmd_train(args) -> int:
    import yaml

    from skyfix.config import load_config
    from skyfix.train.trainer import train
    overrides = {k: dict(v) for k, v in TRAIN_PRESETS.get(args.preset, {}).items()}
    if args.preset and args.preset not in TRAIN_PRESETS:
        raise SkyfixError(f"unknown preset '{args.preset}'; presets: {', '.join(TRAIN_PRESETS)}")
    t = overrides.setdefault("train", {})
    for key in ("ortho", "drone_from", "source_gsd_m", "u1652_root", "loss", "epochs", "out", "seed"):
        if getattr(args, key) is not None:
            t[key] = getattr(args, key)
    if args.config:
        user = yaml.safe_load(Path(args.config).read_text()) or {}
        for section, values in user.items():
            overrides.setdefault(section, {}).update(values or {})
    cfg = load_config(None, overrides)
    if args.distributed:
        import torch
        import torch.distributed as dist
        gpu = torch.cuda.is_available() and cfg.train.device != "cpu"
        dist.init_process_group("nccl" if gpu else "gloo")
    train(cfg, resume=args.resume)
    return 0


def cmd_eval_u1652(args) -> int:
    from skyfix.edge.embedders import load_embedder
    from skyfix.train.evaluate import evaluate_u1652
    cfg = _config(args)
    res = evaluate_u1652(args.root, load_embedder(args.model, "drone", cfg.model),
                         load_embedder(args.model, "sat", cfg.model))
    for name, m in res.items():
        print(f"{name:13s} " + ("no test folders" if m is None else
                                f"R@1 {m['r1']:.3f}  R@5 {m['r5']:.3f}  R@10 {m['r10']:.3f}  AP {m['ap']:.3f}  ({m['n_queries']} queries)"))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


# ---- bench ----------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from skyfix import bench
    return bench.main(args.what, args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skyfix", description="GPS-free drone position fixes from a "
                                "downward camera and a satellite map")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("doctor", help="versions and what each role can do here")
    d.set_defaults(func=cmd_doctor)

    tiles = sub.add_parser("tiles", help="ground station: TilePacks").add_subparsers(dest="tcmd", required=True)
    b = tiles.add_parser("build", help="orthophoto -> TilePack")
    b.add_argument("--ortho", required=True, help="GeoTIFF, XYZ folder {z}/{x}/{y}.png, or an image with --source-gsd-m")
    b.add_argument("--out", required=True, help="pack folder to write (atomically)")
    b.add_argument("--tile-size-m", type=float)
    b.add_argument("--stride-m", type=float)
    b.add_argument("--gsd-m", type=float, help="map resolution (default: the orthophoto's)")
    b.add_argument("--source-gsd-m", type=float, help="read a non-georeferenced image at this GSD")
    b.add_argument("--index", choices=["flat", "ivfpq", "hnsw"])
    b.add_argument("--model", default="imagenet", help="model dir from `export onnx`, .pt, or 'imagenet'")
    b.add_argument("--imagery-date")
    b.add_argument("--imagery-licence")
    b.add_argument("--config")
    b.add_argument("-q", "--quiet", action="store_true")
    b.set_defaults(func=cmd_tiles_build)
    i = tiles.add_parser("inspect", help="validate a pack and summarise it")
    i.add_argument("pack")
    i.set_defaults(func=cmd_tiles_inspect)

    export = sub.add_parser("export", help="model export").add_subparsers(dest="ecmd", required=True)
    o = export.add_parser("onnx", help="towers -> ONNX with parity check")
    o.add_argument("--out", required=True)
    o.add_argument("--checkpoint", help="trained .pt (default: ImageNet-initialised towers)")
    o.add_argument("--lpn-parts", type=int)
    o.add_argument("--dim", type=int)
    o.add_argument("--config")
    o.set_defaults(func=cmd_export_onnx)

    e = sub.add_parser("eval", help="drone <-> satellite retrieval on simulated views")
    e.add_argument("--pack", required=True)
    e.add_argument("--queries-from", required=True, help="map the views are rendered from")
    e.add_argument("--source-gsd-m", type=float, help="GSD of a non-georeferenced --queries-from image")
    e.add_argument("--model", help="default: the model recorded in the pack")
    e.add_argument("--views", type=int)
    e.add_argument("--heading", choices=["known", "unknown"])
    e.add_argument("--alt-min-m", type=float)
    e.add_argument("--alt-max-m", type=float)
    e.add_argument("--seed", type=int)
    e.add_argument("--east-min-m", type=float, help="held-out area: views centred east of this (local metres)")
    e.add_argument("--json")
    e.add_argument("--png", help="example queries with their top-5 tiles (default: next to --json)")
    e.add_argument("--config")
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("crossview-check", help="SUES-200 real drone views vs their satellite image")
    c.add_argument("--data", required=True)
    c.add_argument("--model", default="imagenet")
    c.add_argument("--config")
    c.set_defaults(func=cmd_crossview_check)

    si = sub.add_parser("sim", help="fly a simulated drone over a map, skyfix in the loop over MAVLink")
    si.add_argument("--pack", required=True)
    si.add_argument("--ortho", help="orthophoto to render the frames from (default: the pack's map)")
    si.add_argument("--frames-from", help="render the camera frames from this image (e.g. another date)")
    si.add_argument("--source-gsd-m", type=float, help="GSD of a non-georeferenced --frames-from image")
    si.add_argument("--model", help="default: the model recorded in the pack")
    si.add_argument("--route", choices=["straight", "lawnmower", "waypoints"])
    si.add_argument("--alt-agl-m", type=float)
    si.add_argument("--duration-s", type=float)
    si.add_argument("--length-m", type=float)
    si.add_argument("--speed-m-s", type=float)
    si.add_argument("--seed", type=int)
    si.add_argument("--protocol", choices=["ardupilot", "px4"])
    si.add_argument("--out", default="out/sim")
    si.add_argument("--json")
    si.add_argument("--config")
    si.add_argument("-q", "--quiet", action="store_true")
    si.set_defaults(func=cmd_sim)

    de = sub.add_parser("demo", help="build what is needed and fly a simulated flight over a map")
    de.add_argument("--ortho", help="your own GeoTIFF (default: the shared Colorado map, else a generated one)")
    de.add_argument("--source-gsd-m", type=float, help="GSD of a non-georeferenced --ortho image")
    de.add_argument("--out", default="out/demo")
    de.add_argument("--duration-s", type=float, default=120.0)
    de.set_defaults(func=cmd_demo)

    fl = sub.add_parser("fly", help="the onboard loop on real hardware")
    fl.add_argument("--config", required=True, help="edge.yaml: nav (pack, model, source), bridge, camera")
    fl.add_argument("--max-frames", type=int, default=0)
    fl.set_defaults(func=cmd_fly)

    qu = sub.add_parser("query", help="satellite -> drone: which frames saw this tile")
    qu.add_argument("--pack", required=True)
    qu.add_argument("--gallery", required=True, help="gallery.npz written by fly/sim")
    qu.add_argument("--tile-id", type=int)
    qu.add_argument("--lat", type=float)
    qu.add_argument("--lon", type=float)
    qu.add_argument("--k", type=int, default=5)
    qu.add_argument("--model")
    qu.set_defaults(func=cmd_query)

    eu = sub.add_parser("eval-u1652", help="University-1652 protocol (R@1, AP, both directions)")
    eu.add_argument("--root", required=True, help="folder with test/query_drone, test/gallery_satellite, ...")
    eu.add_argument("--model", default="imagenet")
    eu.add_argument("--json")
    eu.add_argument("--config")
    eu.set_defaults(func=cmd_eval_u1652)

    tr = sub.add_parser("train", help="metric learning of the towers (CPU or GPU; torchrun for several)")
    tr.add_argument("--preset", help="cpu-quick | workstation")
    tr.add_argument("--ortho", help="map the training pairs are cut from")
    tr.add_argument("--drone-from", help="second date of the same area for the drone views")
    tr.add_argument("--source-gsd-m", type=float)
    tr.add_argument("--u1652-root", help="train on a University-1652 tree instead of orthophotos")
    tr.add_argument("--loss", choices=["infonce", "soft_triplet", "mhnw"])
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--out")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--resume", help="last.pt of an interrupted run")
    tr.add_argument("--distributed", action="store_true", help="under torchrun: one process per device")
    tr.add_argument("--config")
    tr.set_defaults(func=cmd_train)

    bn = sub.add_parser("bench", help="benchmarks that print tables")
    bn.add_argument("what", choices=["embed", "faiss", "retrieval", "orientation", "all"])
    bn.add_argument("--checkpoint", help="orientation: a best.pt trained with orientation_weight > 0")
    bn.add_argument("--queries-from", help="orientation: map the views are rendered from")
    bn.add_argument("--east-min-m", type=float, help="orientation: held-out area")
    bn.add_argument("--model", default="models/imagenet", help="model dir from `skyfix export onnx`")
    bn.add_argument("--pack", help="pack to time searches on (faiss)")
    bn.add_argument("--n-synthetic", type=int, default=1_000_000)
    bn.add_argument("--views", type=int, default=200)
    bn.add_argument("--out", default="out/bench")
    bn.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except SkyfixError as exc:
        print(f"skyfix: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
