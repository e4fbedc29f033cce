"""Benchmarks that print tables (the figures of the docs/ pages). Not tests: nothing here asserts a
speed, and no test imports this package. One module per topic; `BENCHMARKS` names each command.

  skyfix bench embed  --model MODEL_DIR      onnxruntime embedding latency, batch 1 and 8
  skyfix bench precision --model MODEL_DIR [--calib PACK,...]
                                             INT8 / FP16 exports: parity with FP32 and CPU latency
  skyfix bench faiss  --pack PACK            search latency on a pack and a synthetic 1M index
  skyfix bench retrieval                     builds packs and runs every held-out eval
  skyfix bench resection --pack PACK         vehicle position: telemetry tilt vs camera resection
  skyfix bench match [--methods sift,orb,xfeat] [--pairs 40] [--rotation-deg 15]
                                             local features across dates (LEVIR-CD) and on Colorado
  skyfix bench sues [--methods ...]          SUES-200 real drone photos: inliers per extractor
  skyfix bench attack --pack PACK [--datagrams 20000] [--duration-s 55]
                                             a hostile sender on skyfix's MAVLink port during a flight
  skyfix bench integrity --pack PACK [--conditions 'calm;wind 8 m/s'] [--sitl-wind 5,8]
                                             integrity under wind, attitude errors, time offsets, lens, blur
  skyfix bench soak --pack PACK [--duration-s 3600]  a long flight: RSS, files, threads, latency per minute
  skyfix bench odometry                      frame-to-frame displacement vs GPS on odm_toledo
  skyfix bench locate [--photos 30]          `skyfix locate` on simulated survey photos
  skyfix bench telemetry                     attitude error: telemetry at capture time vs at processing
  skyfix bench altitude --pack PACK           hand-over at 120 m, then 40, 60, 80, 120 m AGL
  skyfix bench relief --pack PACK             flights over synthetic hills of 0, 50, 150 m, with and without a DEM
  skyfix bench lowstart --pack A,B           a vehicle lost at 40 and 60 m, per pack (with and without finer levels)
  skyfix bench replay --pack PACK            a recorded simulator flight replayed from its video and .tlog
  skyfix bench lost --pack PACK              time to first fix of a lost vehicle, with and without the density position first
  skyfix bench towers --model default,imagenet,DIR   held-out retrieval of towers side by side
  skyfix bench gnss --pack PACK [--autopilots ardupilot,px4] [--scenarios ...] [--json F]
                                             ArduCopter and PX4 SITL on their GNSS with skyfix watching
  skyfix bench orientation --checkpoint best.pt --model DIR --pack PACK --queries-from MAP
  skyfix bench index | build | onboard       index kinds on real embeddings, a large build, onboard memory
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from skyfix.errors import SkyfixError


def _methods(args) -> tuple:
    return tuple(args.methods.split(","))


def _precision(args) -> str:
    from skyfix.bench.precision import bench_precision
    sources = args.calib.split(",") if args.calib else [str(Path(args.out) / n) for n in ("colorado", "levir_1")]
    return bench_precision(args.model, sources, str(Path(args.out) / "precision"))


def _integrity(args) -> str:
    from skyfix.bench.integrity import bench_integrity
    return bench_integrity(args.pack, conditions=args.conditions.split(";") if args.conditions else None,
                           sitl_wind_m_s=tuple(float(w) for w in args.sitl_wind.split(",")) if args.sitl_wind else ())


def _index(args) -> str:
    from skyfix.bench.scale import bench_distractors, bench_index, bench_ivf_sweep
    if args.kinds:  # the index table alone, of these kinds
        return bench_index(args.model, args.out, n_large=args.n_synthetic, kinds=tuple(args.kinds.split(",")))
    return "\n\n".join([bench_index(args.model, args.out, n_large=args.n_synthetic),
                        bench_distractors(args.model, args.out, args.views, n_matched=args.n_synthetic),
                        bench_ivf_sweep(args.out, args.n_synthetic)])


def _fn(module: str, name: str) -> Callable:
    """skyfix.bench.<module>.<name>, imported when its benchmark runs (each pulls its own stack)."""
    import importlib
    return getattr(importlib.import_module(f"skyfix.bench.{module}"), name)


# name -> (runs it from the parsed command line and returns the table, needs --pack)
BENCHMARKS: dict[str, tuple[Callable, bool]] = {
    "embed": (lambda a: _fn("precision", "bench_embed")(a.model), False),
    "precision": (_precision, False),
    "faiss": (lambda a: _fn("scale", "bench_faiss")(a.pack, a.n_synthetic), False),
    "retrieval": (lambda a: _fn("retrieval", "bench_retrieval")(a.model, a.out, a.views), False),
    "resection": (lambda a: _fn("integrity", "bench_resection")(a.pack), True),
    "telemetry": (lambda a: _fn("integrity", "bench_telemetry")(), False),
    "integrity": (_integrity, True),
    "match": (lambda a: _fn("matching", "bench_match")(_methods(a), a.pairs, a.rotation_deg, a.features_model,
                                                       dense_model=a.dense_model, cases=a.cases), False),
    "sues": (lambda a: _fn("matching", "bench_sues")(_methods(a), a.features_model, a.dense_model), False),
    "attack": (lambda a: _fn("link", "bench_attack")(a.pack, a.datagrams, a.duration_s or 55.0), True),
    "soak": (lambda a: _fn("soak", "bench_soak")(a.pack, a.duration_s or 3600.0), True),
    "odometry": (lambda a: _fn("odometry", "bench_odometry")(tuple(m for m in _methods(a) if m != "orb"),
                                                             a.features_model), False),
    "locate": (lambda a: _fn("locate", "bench_locate")(a.out, a.photos, a.cases), False),
    "index": (_index, False),
    "build": (lambda a: _fn("scale", "bench_build")(a.out, a.size_km, a.model, features_model=a.features_model,
                                                    index=a.index, cluster=a.cluster), False),
    "onboard": (lambda a: _fn("scale", "bench_onboard")(a.pack.split(","), a.model, a.features_model, a.frames), True),
    "altitude": (lambda a: _fn("altitude", "bench_altitude")(a.pack), True),
    "relief": (lambda a: _fn("altitude", "bench_relief")(a.pack), True),
    "lowstart": (lambda a: _fn("altitude", "bench_low_start")(a.pack.split(",")), True),
    "replay": (lambda a: _fn("replay", "bench_replay")(a.pack), True),
    "lost": (lambda a: _fn("retrieval", "bench_lost")(a.pack), True),
    "towers": (lambda a: _fn("retrieval", "bench_towers")(a.model.split(","), a.out), False),
    "gnss": (lambda a: _fn("gnss", "bench_gnss")(a.pack, tuple(a.scenarios.split(",")), a.json, a.gnss_after_s,
                                                 a.spoof_rate_m_s, a.spoof_bearing_deg, a.step_m,
                                                 out_dir=str(Path(a.out) / "gnss"), clean_length_m=a.clean_length_m,
                                                 autopilots=tuple(a.autopilots.split(","))), True),
    "orientation": (lambda a: _fn("retrieval", "bench_orientation")(a.checkpoint, a.model, a.pack, a.queries_from,
                                                                    a.views, a.east_min_m), False),
}
ALL = ("embed", "faiss", "retrieval", "telemetry")  # `skyfix bench all`: the quick, self-contained ones
# The benchmarks that open --model as a folder: a name ('default', 'imagenet') is resolved first,
# so a name means the same towers here as in every other command.
MODEL_FOLDER = ("embed", "precision", "retrieval", "index", "build", "onboard", "orientation")


def _model_folder(spec: str) -> str:
    """The folder a model name means (the shipped towers; the ImageNet ones, exported once), else spec."""
    from skyfix.edge.models import DEFAULT, IMAGENET, towers_path
    if spec == IMAGENET:
        from skyfix.export.models import imagenet_onnx
        return str(imagenet_onnx())
    return str(towers_path(DEFAULT)) if spec == DEFAULT else spec


def main(what: str, args) -> int:
    """Run benchmark `what` (a BENCHMARKS name, or 'all') and print its table."""
    for name in ALL if what == "all" else (what,):
        run, needs_pack = BENCHMARKS[name]
        if needs_pack and not args.pack:
            raise SkyfixError(f"skyfix bench {name} needs --pack PACK (e.g. out/bench/colorado, built by "
                              "`skyfix bench retrieval`)")
        if name in MODEL_FOLDER:
            args.model = _model_folder(args.model)
        print(run(args))
    return 0
