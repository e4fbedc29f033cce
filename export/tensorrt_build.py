"""`skyfix export-trt`: build a TensorRT engine from a skyfix ONNX tower, on the Jetson itself.

    skyfix export-trt --onnx models/m-int8/drone.onnx --precision int8 --out models/m-trt

Steps (each logged with its time): read and check the ONNX (before tensorrt is imported) ->
plan (precision flags, optimisation profile over the batch axis) -> parse with TensorRT's
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


@dataclass
class BuildPlan:
    """What will be built: from the ONNX and the request, before TensorRT is touched."""

    onnx_path: Path
    precision: str                 # fp16 | int8
    onnx_precision: str            # what the ONNX is: fp32 | fp16 | int8 (QDQ)
    input_name: str
    output_name: str
    input_shape: list              # [batch, H, W, 3] with batch as opt
    profile: dict                  # {'min','opt','max'}: [batch, H, W, 3] each
    flags: list                    # TensorRT BuilderFlag names
    workspace_mb: int
    metadata: dict = field(default_factory=dict)  # model_id, tower, input_px, dim from the ONNX


def plan_build(onnx_path: str | Path, precision: str, max_batch: int = 8, workspace_mb: int = 1024) -> BuildPlan:
    """Read and check the ONNX and the request; raise SkyfixError with the fix when they do not
    fit (unknown precision, INT8 without QDQ, not a skyfix tower, a fixed batch axis)."""
    onnx = require("onnx")
    onnx_path = Path(onnx_path)
    if precision not in TRT_PRECISIONS:
        raise SkyfixError(f"--precision must be one of {', '.join(TRT_PRECISIONS)}, got '{precision}'")
    if not 1 <= max_batch <= 256:
        raise SkyfixError(f"--max-batch must be 1..256, got {max_batch}")
    if not onnx_path.is_file():
        raise SkyfixError(f"ONNX not found: {onnx_path}")
    try:
        model = onnx.load(str(onnx_path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises its own types for corrupt files
        raise SkyfixError(f"{onnx_path} is not a valid ONNX model: {exc}") from exc
    meta = {p.key: p.value for p in model.metadata_props}
    missing = {"model_id", "tower", "input_px", "dim"} - set(meta)
    if missing:
        raise SkyfixError(f"{onnx_path} lacks skyfix metadata {sorted(missing)}: export it with "
                          "`skyfix export onnx` (then `skyfix export int8` for INT8)")
    ops = {n.op_type for n in model.graph.node}
    onnx_precision = "int8" if ops & QDQ_OPS else meta.get("precision", "fp32")
    if precision == "int8" and onnx_precision != "int8":
        raise SkyfixError(f"INT8 needs an explicitly quantised ONNX (Q/DQ nodes); {onnx_path} has none. "
                          f"Make one with `skyfix export int8 --model {onnx_path.parent} --calib PACK --out DIR` "
                          "(it measures the accuracy loss first)")
    if precision == "fp16" and onnx_precision == "int8":
        raise SkyfixError(f"{onnx_path} is quantised (Q/DQ): build it with --precision int8, or give the FP32 ONNX for fp16")
    inp, out = model.graph.input[0], model.graph.output[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    px = int(meta["input_px"])
    if len(dims) != 4 or dims[0] is not None:
        raise SkyfixError(f"{onnx_path}: input {inp.name} must be N x H x W x 3 with a dynamic batch axis, got {dims}")
    shape = lambda b: [b, px, px, 3]  # noqa: E731
    opt = 1  # onboard embeds one frame at a time: TensorRT tunes its kernels for batch 1
    flags = ["FP16"] if precision == "fp16" else ["INT8", "FP16"]  # INT8: unquantised layers in FP16
    return BuildPlan(onnx_path, precision, onnx_precision, inp.name, out.name, shape(opt),
                     {"min": shape(1), "opt": shape(opt), "max": shape(max_batch)}, flags, int(workspace_mb),
                     {k: meta[k] for k in ("model_id", "tower", "input_px", "dim")})


def platform_refusal(precision: str, fast_fp16: bool, fast_int8: bool) -> Optional[str]:
    """The reason to refuse building `precision` on this GPU, or None. Never a silent downgrade."""
    if precision == "int8" and not fast_int8:
        return "this GPU has no fast INT8 (TensorRT reports platform_has_fast_int8 = False); build fp16 instead"
    if not fast_fp16:
        return f"this GPU has no fast FP16 (platform_has_fast_fp16 = False); {precision} would run no faster than FP32"
    return None


def engine_manifest(plan: BuildPlan, identity: dict, engine_sha256: str, build_s: float,
                    parity: Optional[dict]) -> dict:
    """The manifest written beside model.engine and checked when it is loaded."""
    return {"model_id": plan.metadata["model_id"], "tower": plan.metadata["tower"], "dim": int(plan.metadata["dim"]),
            "precision": plan.precision, "onnx": str(plan.onnx_path.resolve()),
            "onnx_sha256": file_digest(plan.onnx_path)["sha256"], "onnx_precision": plan.onnx_precision,
            **identity, "input_name": plan.input_name, "output_name": plan.output_name,
            "input_shape": plan.input_shape, "profile": plan.profile, "flags": plan.flags,
            "workspace_mb": plan.workspace_mb, "build_s": round(build_s, 1), "engine_sha256": engine_sha256,
            "parity": parity}


def source_parity(onnx_path: Path) -> Optional[dict]:
    """The parity figures of the ONNX's model card (model.yaml beside it), if any."""
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
               workspace_mb: int = 1024, timing_cache: Optional[str | Path] = None, log: Callable = print) -> Path:
    """Plan, build and write an engine folder (atomically). Returns out_dir."""
    from skyfix.edge.trt_embedder import gpu_identity
    t0 = time.perf_counter()
    plan = plan_build(onnx_path, precision, max_batch, workspace_mb)
    log(f"[{time.perf_counter() - t0:5.1f} s] {plan.onnx_path}: {plan.metadata['tower']} tower of "
        f"{plan.metadata['model_id']}, ONNX {plan.onnx_precision}; building {precision} ({', '.join(plan.flags)}), "
        f"batch {plan.profile['min'][0]}..{plan.profile['max'][0]}")
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
    log(f"next: skyfix doctor   (then set nav.model: {out_dir} in the edge config and `skyfix fly --config ...`)")
    return out_dir
