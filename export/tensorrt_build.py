"""`skyfix export-trt`: build a TensorRT engine from a skyfix ONNX tower or local-feature
extractor, on the Jetson itself.

    skyfix export-trt --onnx models/m-int8/drone.onnx --precision int8 --out models/m-trt
    skyfix export-trt --onnx models/xfeat-fp16/xfeat.onnx --precision fp16 --out models/xfeat-trt

Steps (each logged with its time): read and check the ONNX (before tensorrt is imported) ->
plan (precision flags, optimisation profile over the batch axis of a tower, over height and
width of an extractor) -> parse with TensorRT's
OnnxParser (its errors printed) -> build with the timing cache -> write `model.engine` and
`engine.yaml` atomically (`edge/trt_embedder.py` reads them).

Precision is never silently downgraded: INT8 needs an explicitly quantised (QDQ) ONNX from
`skyfix export int8` and a GPU with fast INT8; FP16 needs fast FP16; otherwise the build is
refused with the reason. The planning is plain Python (`plan_build`, `platform_refusal`,
`engine_manifest`), tested on any machine; `build_engine` is the thin TensorRT part.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

from skyfix.artifacts import atomic_directory, file_digest
from skyfix.edge.embedders import read_model_card
from skyfix.edge.trt_embedder import ENGINE_FILE, MANIFEST_FILE
from skyfix.errors import SkyfixError, require

TRT_PRECISIONS = ("fp16", "int8")
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


FEATURE_HW_PX = (64, 640, 1024)  # min / opt / max side of the feature extractor's input (see plan_build)


@dataclass
class BuildPlan:
    """What will be built: from the ONNX and the request, before TensorRT is touched."""

    onnx_path: Path
    precision: str                 # fp16 | int8
    onnx_precision: str            # what the ONNX is: fp32 | fp16 | int8 (QDQ)
    input_name: str
    output_name: str
    input_shape: list              # [batch, H, W, 3] at the profile's opt
    profile: dict                  # {'min','opt','max'}: [batch, H, W, 3] each
    flags: list                    # TensorRT BuilderFlag names
    workspace_mb: int
    kind: str = "tower"            # tower | features (edge/trt_embedder.ENGINE_KINDS)
    metadata: dict = field(default_factory=dict)  # tower: model_id, tower, input_px, dim; features: extractor, weights

    def describe(self) -> str:
        m = self.metadata
        if self.kind == "features":
            return f"{m['extractor']} local features (weights {m['weights']})"
        return f"{m['tower']} tower of {m['model_id']}"


def _load_checked(onnx_path: Path):
    """The ONNX model, checked; SkyfixError for a missing or corrupt file."""
    onnx = require("onnx")
    if not onnx_path.is_file():
        raise SkyfixError(f"ONNX not found: {onnx_path}")
    try:
        model = onnx.load(str(onnx_path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises its own types for corrupt files
        raise SkyfixError(f"{onnx_path} is not a valid ONNX model: {exc}") from exc
    return model


def _input_dims(model, onnx_path: Path) -> list:
    """The input's N x H x W x 3 dims (None where dynamic); SkyfixError unless the batch is dynamic."""
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[0] is not None or dims[3] != 3:
        raise SkyfixError(f"{onnx_path}: input {inp.name} must be N x H x W x 3 with a dynamic batch axis, got {dims}")
    return dims


def plan_build(onnx_path: str | Path, precision: str, max_batch: int = 8, workspace_mb: int = 1024,
               hw_px: tuple = FEATURE_HW_PX) -> BuildPlan:
    """Read and check the ONNX and the request; raise SkyfixError with the fix when they do not
    fit (unknown precision, INT8 without QDQ, neither a skyfix tower nor skyfix local features, a
    fixed batch axis). A features ONNX (features.yaml beside it: `skyfix export features`, or its
    FP16 copy from `skyfix export fp16`) gets a profile over the image size, hw_px = (min, opt,
    max) pixels a side: onboard it describes one refinement crop at a time, whose footprint's
    bounding box changes per frame (opt: a 150 m crop at 0.47 m/px, doubled by XFeat's upscale)."""
    onnx_path = Path(onnx_path)
    if precision not in TRT_PRECISIONS:
        raise SkyfixError(f"--precision must be one of {', '.join(TRT_PRECISIONS)}, got '{precision}'")
    if not 1 <= max_batch <= 256:
        raise SkyfixError(f"--max-batch must be 1..256, got {max_batch}")
    model = _load_checked(onnx_path)
    dims = _input_dims(model, onnx_path)
    ops = {n.op_type for n in model.graph.node}
    meta = {p.key: p.value for p in model.metadata_props}
    card_path = onnx_path.parent / "features.yaml"
    card = yaml.safe_load(card_path.read_text()) if card_path.is_file() else None
    if isinstance(card, dict) and "extractor" in card:
        return _plan_features(model, onnx_path, card, precision, workspace_mb, hw_px, dims)
    missing = {"model_id", "tower", "input_px", "dim"} - set(meta)
    if missing:
        raise SkyfixError(f"{onnx_path} lacks skyfix metadata {sorted(missing)}: export it with "
                          "`skyfix export onnx` (then `skyfix export int8` for INT8), or `skyfix export features`")
    onnx_precision = "int8" if ops & QDQ_OPS else meta.get("precision", "fp32")
    if precision == "int8" and onnx_precision != "int8":
        raise SkyfixError(f"INT8 needs an explicitly quantised ONNX (Q/DQ nodes); {onnx_path} has none. "
                          f"Make one with `skyfix export int8 --model {onnx_path.parent} --calib PACK --out DIR` "
                          "(it measures the accuracy loss first)")
    if precision == "fp16" and onnx_precision == "int8":
        raise SkyfixError(f"{onnx_path} is quantised (Q/DQ): build it with --precision int8, or give the FP32 ONNX for fp16")
    px = int(meta["input_px"])
    shape = lambda b: [b, px, px, 3]  # noqa: E731
    opt = 1  # onboard embeds one frame at a time: TensorRT tunes its kernels for batch 1
    flags = ["FP16"] if precision == "fp16" else ["INT8", "FP16"]  # INT8: unquantised layers in FP16
    return BuildPlan(onnx_path, precision, onnx_precision, model.graph.input[0].name, model.graph.output[0].name,
                     shape(opt), {"min": shape(1), "opt": shape(opt), "max": shape(max_batch)}, flags,
                     int(workspace_mb), "tower", {k: meta[k] for k in ("model_id", "tower", "input_px", "dim")})


def _plan_features(model, onnx_path: Path, card: dict, precision: str, workspace_mb: int, hw_px: tuple,
                   dims: list) -> BuildPlan:
    """The plan for a local-feature extractor: FP16 only, batch 1, a profile over H and W. The
    engine keeps the FP32 weights' identity (`weights_identity`, which also refuses an FP16 copy
    its card does not describe), so the pack's map features stay valid."""
    from skyfix.edge.features import weights_identity
    if precision != "fp16":
        raise SkyfixError(f"{onnx_path} holds {card['extractor']} local features: only --precision fp16 is "
                          "made and measured for them (`skyfix export fp16` gates its matching)")
    lo, opt, hi = (int(v) for v in hw_px)
    if not 32 <= lo <= opt <= hi or any(v % 32 for v in (lo, opt, hi)):
        raise SkyfixError(f"--hw-px must be three multiples of 32 with 32 <= min <= opt <= max, got {hw_px}")
    if dims[1] is not None or dims[2] is not None:
        raise SkyfixError(f"{onnx_path}: height and width must be dynamic for local features, got {dims}")
    weights, onnx_precision = weights_identity(onnx_path)
    shape = lambda side: [1, side, side, 3]  # noqa: E731
    return BuildPlan(onnx_path, precision, onnx_precision, model.graph.input[0].name,
                     ",".join(o.name for o in model.graph.output), shape(opt),
                     {"min": shape(lo), "opt": shape(opt), "max": shape(hi)}, ["FP16"], int(workspace_mb),
                     "features", {"extractor": card["extractor"], "weights": weights})


def platform_refusal(precision: str, fast_fp16: bool, fast_int8: bool) -> Optional[str]:
    """The reason to refuse building `precision` on this GPU, or None. Never a silent downgrade."""
    if precision == "int8" and not fast_int8:
        return "this GPU has no fast INT8 (TensorRT reports platform_has_fast_int8 = False); build fp16 instead"
    if not fast_fp16:
        return f"this GPU has no fast FP16 (platform_has_fast_fp16 = False); {precision} would run no faster than FP32"
    return None


def engine_manifest(plan: BuildPlan, identity: dict, engine_sha256: str, build_s: float,
                    parity: Optional[dict]) -> dict:
    """The manifest written beside model.engine and checked when it is loaded (its fields per
    kind: `edge/trt_embedder.ENGINE_KINDS`)."""
    if plan.kind == "features":
        what = {"kind": "features", "extractor": plan.metadata["extractor"], "weights": plan.metadata["weights"]}
    else:
        what = {"kind": "tower", "model_id": plan.metadata["model_id"], "tower": plan.metadata["tower"],
                "dim": int(plan.metadata["dim"])}
    return {**what, "precision": plan.precision, "onnx": str(plan.onnx_path.resolve()),
            "onnx_sha256": file_digest(plan.onnx_path)["sha256"], "onnx_precision": plan.onnx_precision,
            **identity, "input_name": plan.input_name, "output_name": plan.output_name,
            "input_shape": plan.input_shape, "profile": plan.profile, "flags": plan.flags,
            "workspace_mb": plan.workspace_mb, "build_s": round(build_s, 1), "engine_sha256": engine_sha256,
            "parity": parity}


def source_parity(onnx_path: Path) -> Optional[dict]:
    """The parity figures of the ONNX's card (a tower's model.yaml, local features'
    features.yaml, beside it), if any."""
    if (onnx_path.parent / "features.yaml").is_file():
        card = yaml.safe_load((onnx_path.parent / "features.yaml").read_text()) or {}
        return card.get("parity_gate") or {"fp32_parity_vs_torch": card.get("parity")}
    if not (onnx_path.parent / "model.yaml").is_file():
        return None
    card = read_model_card(onnx_path.parent)
    return card.get("parity_gate") or {"fp32_parity_vs_torch": card.get("parity")}


def build_engine(plan: BuildPlan, timing_cache: Optional[Path], log: Callable) -> bytes:
    """The TensorRT part: parse, configure, build. Returns the serialised engine."""
    trt = require("tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    refusal = platform_refusal(plan.precision, builder.platform_has_fast_fp16, builder.platform_has_fast_int8)
    if refusal:
        raise SkyfixError(refusal)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    t0 = time.perf_counter()
    if not parser.parse(plan.onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SkyfixError(f"TensorRT's ONNX parser rejected {plan.onnx_path}:\n  " + "\n  ".join(errors))
    log(f"parsed {plan.onnx_path.name}: {network.num_layers} layers ({time.perf_counter() - t0:.1f} s)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb << 20)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    profile.set_shape(plan.input_name, plan.profile["min"], plan.profile["opt"], plan.profile["max"])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise SkyfixError("TensorRT could not build the engine (see its messages above)")
    log(f"built {plan.precision} engine ({time.perf_counter() - t0:.0f} s)")
    if timing_cache:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(engine)


def export_trt(onnx_path: str | Path, precision: str, out_dir: str | Path, max_batch: int = 8,
               workspace_mb: int = 1024, timing_cache: Optional[str | Path] = None, log: Callable = print,
               hw_px: tuple = FEATURE_HW_PX) -> Path:
    """Plan, build and write an engine folder (atomically). Returns out_dir."""
    from skyfix.edge.trt_embedder import gpu_identity
    t0 = time.perf_counter()
    plan = plan_build(onnx_path, precision, max_batch, workspace_mb, hw_px)
    log(f"[{time.perf_counter() - t0:5.1f} s] {plan.onnx_path}: {plan.describe()}, ONNX {plan.onnx_precision}; "
        f"building {precision} ({', '.join(plan.flags)}), input {plan.profile['min']} .. {plan.profile['max']}")
    identity = gpu_identity()
    log(f"[{time.perf_counter() - t0:5.1f} s] TensorRT {identity['tensorrt_version']} on {identity['gpu_name']} "
        f"(compute {identity['compute_capability']})")
    t_build = time.perf_counter()
    engine = build_engine(plan, Path(timing_cache) if timing_cache else None,
                          lambda m: log(f"[{time.perf_counter() - t0:5.1f} s] {m}"))
    build_s = time.perf_counter() - t_build
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        (tmp / ENGINE_FILE).write_bytes(engine)
        manifest = engine_manifest(plan, identity, file_digest(tmp / ENGINE_FILE)["sha256"], build_s,
                                   source_parity(plan.onnx_path))
        (tmp / MANIFEST_FILE).write_text(yaml.safe_dump(manifest, sort_keys=False))
    log(f"[{time.perf_counter() - t0:5.1f} s] wrote {out_dir / ENGINE_FILE} ({len(engine) / 1e6:.1f} MB) and {MANIFEST_FILE}")
    setting = "nav.features_model" if plan.kind == "features" else "nav.model"
    log(f"next: skyfix doctor   (then set {setting}: {out_dir} in the edge config and `skyfix fly --config ...`)")
    return out_dir
