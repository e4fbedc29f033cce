"""Lower-precision towers for the Jetson: FP16 and INT8 (QDQ) ONNX, gated on accuracy parity.

    skyfix export int8 --model DIR --calib PACK_OR_ORTHO --out DIR   (QDQ: what TensorRT reads)
    skyfix export int8 --model DIR --calib ... --precision fp16 --out DIR

Views: calibration and parity views are rendered from one map exactly as the pack (satellite
tiles) and the onboard crop (rectified drone views, `train.data.OrthoPairs`) render them, on
disjoint sets of locations, so the gate never scores the crops the scales came from.

Quantisation: onnxruntime's static QDQ quantisation (per-channel symmetric INT8 weights,
symmetric INT8 activations, i.e. zero point 0 as TensorRT's explicit quantisation expects;
biases left in FP32, as TensorRT fuses them itself and takes no INT32 dequantisation);
the stem, the depthwise convolutions and the head (GeM pooling, projection, normalisation)
stay in FP32 (`kept_fp32`; TensorRT runs them in FP16 when the engine allows both).
FP16: onnxruntime's float16 converter, uint8 input and float32 output kept, the head (pooling,
projection, normalisation) kept in FP32 (`head_nodes`).

Parity gate (`parity_report`): lower precision vs the FP32 source on the held-out views:
drone -> satellite R@1 and AP, top-1 tile agreement, min / median cosine between embeddings;
both for the onboard case (lower-precision drone tower against a pack built in FP32) and with
both towers in lower precision. The export refuses when R@1 drops by more than
`MAX_R1_DROP` or top-1 agreement is below `MIN_TOP1_AGREEMENT`, unless told to accept the loss.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import yaml

from skyfix.artifacts import atomic_directory
from skyfix.edge.embedders import SHARED_ONNX, TOWERS, OnnxEmbedder, read_model_card, tower_onnx
from skyfix.errors import SkyfixError, require

PRECISIONS = ("fp16", "int8", "fp16-weights")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
MAX_R1_DROP = 0.005          # 0.5 points of R@1
MIN_TOP1_AGREEMENT = 0.98


@dataclass
class Views:
    """drone[i] (a rectified onboard crop) was taken over the place of sat[place[i]] (the pack's
    tile there). uint8 n x px x px x 3; place: int n (several views may share a place)."""

    drone: np.ndarray
    sat: np.ndarray
    place: np.ndarray

    def __len__(self) -> int:
        return len(self.drone)


def _canvas_and_tile(source, source_gsd_m: Optional[float] = None):
    """(MapCanvas, tile size m) from a pack directory, an orthophoto (source_gsd_m: metres per
    pixel of an image without georeferencing), or a MapCanvas."""
    from skyfix.config import TilesConfig
    from skyfix.pack.canvas import MapCanvas
    if isinstance(source, MapCanvas):
        return source, TilesConfig().tile_size_m
    path = Path(source)
    if (path / "manifest.yaml").is_file():
        from skyfix.pack.tilepack import TilePack
        pack = TilePack.open(path)
        return pack.canvas(), pack.tile_size_m
    from skyfix.tiles.ortho import load_canvas
    if not path.is_file():
        raise SkyfixError(f"calibration source {source} is neither a pack nor an orthophoto")
    return load_canvas(path, source_gsd_m=source_gsd_m), TilesConfig().tile_size_m


def render_views(source, input_px: int, n_calib: int, n_eval: int,
                 seed: int = 0) -> tuple[Views, Views]:
    """(calibration views, held-out parity views) from a pack, orthophoto or MapCanvas. Locations every
    half tile are split at random into two disjoint sets (held out: at most n_eval places, half
    the map); each side draws its views cycling over its places, a new render each time round,
    so a small map still gives n_eval parity queries."""
    from skyfix.train.data import OrthoPairs, location_grid
    canvas, tile_m = _canvas_and_tile(source)
    locations = location_grid(canvas, tile_m / 2, tile_m / 2)
    if len(locations) < 20:
        raise SkyfixError(f"{source} has room for only {len(locations)} views; calibration needs a "
                          "larger map")
    order = np.random.default_rng(seed).permutation(len(locations))
    n_places = min(n_eval, len(locations) // 2)
    held_out, calib = [locations[i] for i in order[:n_places]], [locations[i] for i in order[n_places:]]

    def draw(locs, n, pair_seed):
        """n views cycling over locs (a new render each time round): (drone, sat, place)."""
        if n == 0:  # FP16 needs no calibration views
            empty = np.zeros((0, input_px, input_px, 3), np.uint8)
            return Views(empty, empty, np.zeros(0, int))
        pairs = OrthoPairs(canvas, locs, tile_m, input_px, seed=pair_seed)
        drone, place = [], []
        for i in range(n):
            pairs.epoch = i // len(locs)
            drone.append(pairs[i % len(locs)][0])
            place.append(i % len(locs))
        sat = np.stack([pairs.sat_image(k) for k in range(len(locs))])
        return Views(np.stack(drone), sat, np.array(place))

    return draw(calib, n_calib, seed + 1), draw(held_out, n_eval, seed + 2)


# ---- conversion ----------------------------------------------------------------------------------
def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def kept_fp32(model) -> list[str]:
    """Names of the nodes left unquantised in INT8: the first convolution (it sees raw pixel
    values, unlike any later activation), every depthwise convolution (one filter per channel:
    on EfficientNet-Lite0 over Colorado, quantising them took the embedding cosine to FP32 from
    min 0.97 down to 0.76 and top-1 agreement from 82 % to 70 %; they are a small share of
    the compute) and every matrix product after the last convolution (the projection)."""
    nodes = list(model.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if not convs:
        return []
    depthwise = [nodes[i].name for i in convs[1:] if _group(nodes[i]) > 1]
    head = [n.name for n in nodes[convs[-1] + 1:] if n.op_type in ("MatMul", "Gemm")]
    return [nodes[convs[0]].name] + depthwise + head


class _Reader:
    """onnxruntime CalibrationDataReader over a uint8 image batch, in small batches."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 8):
        # Equal batches only: the calibrators stack every batch's activations into one array,
        # so up to batch - 1 images are left out (`count` is what was used).
        batch = min(batch, len(images))
        self.count = len(images) // batch * batch
        self.items = iter([{input_name: images[i:i + batch]} for i in range(0, self.count, batch)])

    def get_next(self):
        return next(self.items, None)


def quantize_int8(onnx_in: Path, onnx_out: Path, calib_images: np.ndarray, method: str = "percentile",
                  keep_fp32: bool = True) -> dict:
    """Write an explicitly quantised (QDQ) INT8 copy of onnx_in calibrated on calib_images
    (uint8 N x H x W x 3). Returns what was done (for the model card)."""
    onnx = require("onnx")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if method not in CALIBRATION_METHODS:
        raise SkyfixError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got '{method}'")
    prepared = onnx_out.with_suffix(".prep.onnx")
    # Constant folding and shape inference first: the lukemelas padding is computed at run
    # time, and the quantiser needs static shapes to place Q/DQ pairs.
    quant_pre_process(str(onnx_in), str(prepared), skip_symbolic_shape=True)
    model = onnx.load(str(prepared))
    excluded = kept_fp32(model) if keep_fp32 else []
    input_name = model.graph.input[0].name
    calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}[method]
    reader = _Reader(input_name, calib_images)
    quantize_static(str(prepared), str(onnx_out), reader,
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=calib, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                    nodes_to_exclude=excluded,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                   "CalibPercentile": 99.99, "CalibTensorRangeSymmetric": True})
    prepared.unlink(missing_ok=True)
    return {"method": method, "calibration_views": reader.count, "kept_fp32": excluded,
            "format": "QDQ, per-channel symmetric int8 weights, symmetric int8 activations",
            "tool": "onnxruntime.quantization.quantize_static"}


QUANTISERS = ("onnxruntime", "modelopt")
MODELOPT_METHODS = {"minmax": "max", "entropy": "entropy"}  # skyfix's names -> ModelOpt's


def quantize_int8_modelopt(onnx_in: Path, onnx_out: Path, calib_images: np.ndarray, method: str = "entropy") -> dict:
    """The same INT8 QDQ export as `quantize_int8` (the same layers kept unquantised, Conv /
    MatMul / Gemm quantised, the rest left FP32, symmetric INT8) by NVIDIA ModelOpt's ONNX
    post-training quantisation, which targets TensorRT. ModelOpt comes with a CUDA torch, so it is
    installed in its own environment (docs/precision.md); calibration runs on the GPU
    where onnxruntime has one, else on the CPU."""
    import re
    onnx = require("onnx")
    quantize = require("modelopt.onnx.quantization").quantize
    if method not in MODELOPT_METHODS:
        raise SkyfixError(f"ModelOpt calibrates by {', '.join(MODELOPT_METHODS)}, not '{method}'")
    model = onnx.load(str(onnx_in))
    excluded = kept_fp32(model)
    import onnxruntime as ort
    eps = (["cuda:0"] if "CUDAExecutionProvider" in ort.get_available_providers() else []) + ["cpu"]
    # ModelOpt writes its intermediate files beside its input: give it a copy in the output folder.
    staged = onnx_out.with_suffix(".fp32.onnx")
    shutil.copyfile(onnx_in, staged)
    try:
        quantize(onnx_path=str(staged), quantize_mode="int8", calibration_data={model.graph.input[0].name: calib_images},
                 calibration_method=MODELOPT_METHODS[method], calibration_eps=eps, output_path=str(onnx_out),
                 high_precision_dtype="fp32", op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                 nodes_to_exclude=["^" + re.escape(n) + "$" for n in excluded])
    finally:
        staged.unlink(missing_ok=True)
    from skyfix.export.qat import fold_weight_quantisation
    folded = fold_weight_quantisation(onnx_out)  # ModelOpt leaves FP32 weights behind Q/DQ pairs
    import modelopt
    return {"method": method, "calibration_views": int(len(calib_images)), "kept_fp32": excluded,
            "format": "QDQ, symmetric int8 (ModelOpt's defaults for TensorRT)",
            "tool": f"modelopt.onnx.quantization {modelopt.__version__}", "calibration_eps": eps,
            "int8_weights": folded}


def head_nodes(model) -> list[str]:
    """Names of the nodes after the last convolution: GeM pooling (powers and sums over a whole
    feature map, where FP16's 11-bit mantissa and 65504 range are the risk), projection and
    normalisation. The FP16 conversion keeps them in FP32; they cost next to nothing."""
    nodes = list(model.graph.node)
    last_conv = max((i for i, n in enumerate(nodes) if n.op_type == "Conv"), default=len(nodes) - 1)
    return [n.name for n in nodes[last_conv + 1:]]


def convert_fp16(onnx_in: Path, onnx_out: Path) -> dict:
    """Write an FP16 copy of onnx_in (uint8 input and float32 output unchanged)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    model = onnx.load(str(onnx_in))
    kept = head_nodes(model)
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=kept)
    _sort_topologically(converted.graph)  # the converter appends its Cast nodes at the end
    onnx.save(converted, str(onnx_out))
    return {"kept_fp32": kept, "tool": "onnxruntime.transformers.float16"}


def store_fp16_weights(onnx_in: Path, onnx_out: Path, min_elements: int = 256) -> dict:
    """Write a copy of onnx_in whose large float32 weights are stored in float16 and cast back to
    float32 when the session loads (a Cast per weight, folded by onnxruntime and TensorRT): half
    the size on disk, FP32 arithmetic. This is how the default towers ship in the wheel."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    model = onnx.load(str(onnx_in))
    graph = model.graph
    inputs = {i.name for i in graph.input}
    casts, stored = [], 0
    for init in graph.initializer:
        weights = numpy_helper.to_array(init)
        if (init.data_type != TensorProto.FLOAT or weights.size < min_elements or init.name in inputs
                or np.abs(weights).max() > np.finfo(np.float16).max):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(weights.astype(np.float16), f"{name}__fp16"))
        casts.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT, name=f"{name}__to_fp32"))
        stored += weights.size
    nodes = casts + list(graph.node)  # the casts read initializers only: first is a topological order
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_out))
    return {"weights_fp16": stored, "tool": "skyfix store_fp16_weights (float32 arithmetic)"}


def _sort_topologically(graph) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs (stable)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise SkyfixError(f"FP16 conversion left a cycle or a dangling input at {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _copy_metadata(src: Path, dst: Path, precision: str) -> None:
    import onnx
    meta = {p.key: p.value for p in onnx.load(str(src)).metadata_props}
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    for key, value in {**meta, "precision": precision}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


# ---- parity --------------------------------------------------------------------------------------
def _embed(path: Path, images: np.ndarray, batch: int = 16) -> np.ndarray:
    # Unfused (edge.embedders.onnx_session): the gate measures the quantisation, as TensorRT
    # will compute it, not the saturation of onnxruntime's int8 kernels on a CPU without VNNI.
    emb = OnnxEmbedder(path, providers=["CPUExecutionProvider"], emulate_qdq=True)
    return np.concatenate([emb.embed(images[i:i + batch]) for i in range(0, len(images), batch)])


def _retrieval(drone: np.ndarray, sat: np.ndarray, place: np.ndarray) -> tuple[dict, np.ndarray]:
    from skyfix.train.metrics import retrieval_metrics
    s = drone @ sat.T
    return retrieval_metrics(s, place[:, None] == np.arange(len(sat))[None]), np.argmax(s, axis=1)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def parity_report(fp32: dict, low: dict, views: Views) -> dict:
    """Lower precision vs FP32 on held-out views. fp32 / low: {'drone': path, 'sat': path}.
    Returns FP32 R@1/AP, and per case ('onboard': low drone vs FP32 pack; 'both': low towers)
    R@1, AP, their drops, top-1 agreement with FP32, and min/median embedding cosines."""
    ref = {t: _embed(fp32[t], getattr(views, t)) for t in TOWERS}
    got = {t: _embed(low[t], getattr(views, t)) for t in TOWERS}
    base, base_top = _retrieval(ref["drone"], ref["sat"], views.place)
    cos = np.concatenate([_cosine(ref[t], got[t]) for t in TOWERS])
    report = {"views": len(views), "places": len(views.sat), "fp32": {"r1": base["r1"], "ap": base["ap"]},
              "cosine": {"min": float(cos.min()), "median": float(np.median(cos))}}
    for case, sat in (("onboard", ref["sat"]), ("both", got["sat"])):
        m, top = _retrieval(got["drone"], sat, views.place)
        report[case] = {"r1": m["r1"], "ap": m["ap"], "r1_drop": base["r1"] - m["r1"],
                        "ap_drop": base["ap"] - m["ap"], "top1_agreement": float(np.mean(top == base_top))}
    return report


def gate_failures(report: dict) -> list[str]:
    """Why a lower-precision export fails the parity gate ([] when it passes)."""
    out = []
    for case in ("onboard", "both"):
        r = report[case]
        # "More than 0.5 points": one view of 200 is exactly 0.5 points, which float subtraction
        # (0.925 - 0.920 = 0.0050000000000000044) must not turn into a failure.
        if r["r1_drop"] > MAX_R1_DROP + 1e-9:
            out.append(f"{case}: R@1 {r['r1']:.3f} vs FP32 {report['fp32']['r1']:.3f} "
                       f"(drop {100 * r['r1_drop']:.1f} points > {100 * MAX_R1_DROP:.1f})")
        if r["top1_agreement"] < MIN_TOP1_AGREEMENT:
            out.append(f"{case}: top-1 tile agreement {r['top1_agreement']:.1%} < {MIN_TOP1_AGREEMENT:.0%}")
    return out


def format_report(report: dict) -> str:
    rows = [f"parity on {report['views']} held-out views of {report['places']} places: FP32 R@1 {report['fp32']['r1']:.3f} AP {report['fp32']['ap']:.3f}; "
            f"cosine to FP32 min {report['cosine']['min']:.4f} median {report['cosine']['median']:.4f}"]
    for case in ("onboard", "both"):
        r = report[case]
        rows.append(f"  {case:8s} R@1 {r['r1']:.3f} ({-100 * r['r1_drop']:+.1f} pt)  AP {r['ap']:.3f}  "
                    f"top-1 agreement {r['top1_agreement']:.1%}")
    return "\n".join(rows)


# ---- the command ---------------------------------------------------------------------------------
def _qat_towers(checkpoint, model_dir: Path, card: dict, calib: Views, steps: int, log: Callable):
    """The towers fine-tuned with fake quantisation (export/qat.py): those of `checkpoint`, after
    checking that they are the model the FP32 folder was exported from; with no checkpoint ("")
    those rebuilt from the folder's own ONNX (export/onnx_import.py: the shipped towers)."""
    from skyfix.export.qat import quantise_aware
    from skyfix.train.towers import compute_model_id, load_checkpoint
    if checkpoint:
        model = load_checkpoint(checkpoint)
        if compute_model_id(model) != card["model_id"]:
            raise SkyfixError(f"--qat {checkpoint} holds model {compute_model_id(model)}, the FP32 folder is "
                              f"{card['model_id']}: give the checkpoint that folder was exported from")
        source = {"from": str(checkpoint)}
    else:
        from skyfix.export.onnx_import import towers_from_onnx
        model, cosine = towers_from_onnx(model_dir, card)
        log(f"towers rebuilt from {model_dir}'s ONNX (cosine to it {cosine:.6f})")
        source = {"from": f"{model_dir} ONNX", "rebuilt_cosine": cosine}
    done = quantise_aware(model, calib, steps, log=log)
    return model, {**done, **source}


def _arithmetic(precision: str) -> str:
    """The precision a model computes in: FP16-stored weights are cast back to FP32."""
    return "fp32" if precision == "fp16-weights" else precision


def _checked_request(model_dir: Path, precision: str, qat_checkpoint, quantiser: str) -> dict:
    """The FP32 folder's model card, or SkyfixError for a request that cannot be met."""
    if precision not in PRECISIONS:
        raise SkyfixError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    card = read_model_card(model_dir)
    if card.get("precision", "fp32") != "fp32":
        raise SkyfixError(f"{model_dir} is already {card['precision']}: convert from the FP32 export")
    if qat_checkpoint is not None and precision != "int8":
        raise SkyfixError("--qat is for int8 exports")
    if quantiser not in QUANTISERS or (quantiser != "onnxruntime" and (precision != "int8" or qat_checkpoint)):
        raise SkyfixError(f"--quantiser is one of {', '.join(QUANTISERS)}, and modelopt is for post-training int8")
    return card


def export_precision(model_dir: str | Path, out_dir: str | Path, precision: str, calib_source,
                     calib_n: int = 512, eval_n: int = 200, method: str = "percentile",
                     accept_loss: bool = False, seed: int = 0, log: Callable = print,
                     qat_checkpoint: Optional[str | Path] = None, qat_steps: int = 300,
                     quantiser: str = "onnxruntime") -> dict:
    """Write out_dir (drone.onnx and sat.onnx, or the shared towers.onnx, and model.yaml) at `precision` from an FP32 model
    folder, evaluate parity on held-out views and refuse (SkyfixError, nothing written) when it
    fails the gate unless accept_loss. INT8 with qat_checkpoint (the .pt the folder was exported
    from, or "" for the folder's own ONNX towers): quantisation-aware fine-tuning (export/qat.py)
    instead of post-training quantisation.
    Returns the model card."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    card = _checked_request(model_dir, precision, qat_checkpoint, quantiser)
    t0 = time.perf_counter()
    calib, held_out = render_views(calib_source, int(card["input_px"]), calib_n if precision == "int8" else 0,
                                   eval_n, seed)
    log(f"views: {len(calib)} calibration, {len(held_out)} held out ({len(held_out.sat)} places), from {calib_source} "
        f"({time.perf_counter() - t0:.0f} s)")
    qat = _qat_towers(qat_checkpoint, model_dir, card, calib, qat_steps, log) if qat_checkpoint is not None else None
    with atomic_directory(out_dir) as tmp:
        done = {}
        shared = tower_onnx(model_dir, "drone").name == SHARED_ONNX  # one file serves both towers
        for tower in ("drone",) if shared else TOWERS:
            t1 = time.perf_counter()
            src = tower_onnx(model_dir, tower)
            dst = tmp / src.name
            if qat is not None:
                from skyfix.export.onnx_export import _export_tower
                from skyfix.export.qat import fold_weight_quantisation
                _export_tower(qat[0].tower(tower), dst, int(card["input_px"]), {})
                done[tower] = {**qat[1], "int8_weights": fold_weight_quantisation(dst)}
            elif precision == "int8":
                images = (np.concatenate([calib.drone, calib.sat]) if shared
                          else calib.drone if tower == "drone" else calib.sat)
                quantize = quantize_int8 if quantiser == "onnxruntime" else quantize_int8_modelopt
                done[tower] = quantize(src, dst, images, method)
            elif precision == "fp16-weights":
                done[tower] = store_fp16_weights(src, dst)
            else:
                done[tower] = convert_fp16(src, dst)
            _copy_metadata(src, dst, _arithmetic(precision))
            log(f"{precision} {tower}: {dst.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t1:.0f} s")
        report = parity_report({t: tower_onnx(model_dir, t) for t in TOWERS},
                               {t: tower_onnx(tmp, t) for t in TOWERS}, held_out)
        log(format_report(report))
        failures = gate_failures(report)
        card = {**card, "precision": _arithmetic(precision), "stored": precision, "source": str(model_dir.resolve()),
                "conversion": done, "parity_gate": {"max_r1_drop": MAX_R1_DROP, "min_top1_agreement": MIN_TOP1_AGREEMENT,
                                                    "passed": not failures, "accepted_loss": bool(failures and accept_loss),
                                                    "views_from": str(calib_source) if isinstance(calib_source, (str, Path)) else "a map canvas",
                                                    **report}}
        (tmp / "model.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
        if failures and not accept_loss:
            raise SkyfixError(f"{precision} export fails the parity gate ({'; '.join(failures)}); nothing "
                              f"written. Try another --calib-method, more --calib-n, or --accept-loss to keep it")
    return card
