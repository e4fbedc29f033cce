"""Embedder backends behind one protocol (skyfix.contracts.Embedder).

uint8 RGB N x H x W x 3 in (resized to the model's `input_px` if needed), float32 N x D unit
vectors out. Onboard backend: onnxruntime (TensorRT, CUDA or CPU execution provider, whichever is
present; the one picked is named in `backend` and logged). The torch backend of the towers lives
with training (`skyfix.train.torch_embedder`). A model directory, written by `skyfix export onnx`, holds `drone.onnx`
and `sat.onnx` (or one `towers.onnx` where the towers share their weights) and `model.yaml`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import yaml

from skyfix.errors import SkyfixError, require

log = logging.getLogger("skyfix.embed")

TOWERS = ("drone", "sat")


def fit_to_input(images_rgb: np.ndarray, input_px: int) -> np.ndarray:
    """Validate a uint8 N x H x W x 3 batch and resize it to N x input_px x input_px x 3."""
    images_rgb = np.asarray(images_rgb)
    if images_rgb.ndim == 3:
        images_rgb = images_rgb[None]
    if images_rgb.ndim != 4 or images_rgb.shape[-1] != 3 or images_rgb.dtype != np.uint8:
        raise SkyfixError(f"embedder expects uint8 N x H x W x 3, got {images_rgb.dtype} "
                          f"{images_rgb.shape}")
    if images_rgb.shape[1:3] == (input_px, input_px):
        return np.ascontiguousarray(images_rgb)
    interp = cv2.INTER_AREA if images_rgb.shape[1] > input_px else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, (input_px, input_px), interpolation=interp)
                     for im in images_rgb])


def onnx_session(onnx_path: str | Path, providers: Optional[list] = None, threads: int = 0,
                 emulate_qdq: bool = False):
    """(onnxruntime InferenceSession, backend name). Providers: TensorRT > CUDA > CPU, whichever
    this install has, unless `providers` names them. Raises SkyfixError for a missing or corrupt
    file. The provider picked is logged: a Jetson silently falling back to the CPU is a slow
    surprise.

    emulate_qdq: run a quantised (QDQ) graph unfused, each DequantizeLinear then the float op,
    which is the arithmetic TensorRT's int32 accumulation reproduces. onnxruntime's fused int8
    CPU kernels saturate on CPUs without VNNI (AVX2 only): the tiny test towers' INT8 copy had a
    cosine of 0.61 to FP32 fused on such a CPU and 0.98 unfused."""
    ort = require("onnxruntime")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise SkyfixError(f"ONNX model not found: {onnx_path}")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    # No busy-waiting between runs: onboard, two sessions (tower, local features) and numpy
    # share the cores, and spinning pool threads starve whichever runs next.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if emulate_qdq:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    available = ort.get_available_providers()
    wanted = providers or [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                       "CPUExecutionProvider") if p in available]
    try:
        session = ort.InferenceSession(str(onnx_path), opts, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own types for corrupt graphs
        raise SkyfixError(f"cannot load ONNX model {onnx_path}: {exc}") from exc
    backend = f"onnxruntime:{session.get_providers()[0]}"
    log.info("%s on %s (available: %s)", onnx_path.name, backend, ", ".join(available))
    return session, backend


# The one file of towers that share their weights (metadata tower: "shared"), serving both.
SHARED_ONNX = "towers.onnx"
SHARED = "shared"


def tower_onnx(model_dir: str | Path, tower: str) -> Path:
    """The ONNX file of `tower` in a model folder: `<tower>.onnx`, else the shared towers'
    `towers.onnx` (one set of weights, stored once); the former's path when neither exists."""
    own = Path(model_dir) / f"{tower}.onnx"
    shared = Path(model_dir) / SHARED_ONNX
    return shared if not own.is_file() and shared.is_file() else own


class OnnxEmbedder:
    """onnxruntime backend of a tower exported by `skyfix export onnx`. tower: which one a shared
    file (`towers.onnx`) serves as (default drone); a tower's own file says it itself."""

    def __init__(self, onnx_path: str | Path, providers: Optional[list] = None, threads: int = 0,
                 emulate_qdq: bool = False, tower: str = "drone"):
        self.session, self.backend = onnx_session(onnx_path, providers, threads, emulate_qdq)
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = {"model_id", "tower", "input_px", "dim"} - set(meta)
        if missing:
            raise SkyfixError(f"{onnx_path} lacks skyfix metadata {sorted(missing)}: "
                              "export it with `skyfix export onnx`")
        self.model_id, self.tower = meta["model_id"], tower if meta["tower"] == SHARED else meta["tower"]
        self.input_px, self.dim = int(meta["input_px"]), int(meta["dim"])
        self.input_name = self.session.get_inputs()[0].name

    def embed(self, images_rgb: np.ndarray) -> np.ndarray:
        x = fit_to_input(images_rgb, self.input_px)
        return self.session.run(None, {self.input_name: x})[0].astype(np.float32)


def open_embedder(spec: str | Path, tower: str):
    """The deployable drone or satellite tower (`tower`: 'drone' or 'sat') from a model
    directory written by `skyfix export onnx` / `export int8`, an `.onnx` file (onnxruntime), or
    a TensorRT engine folder / `.engine` file from `skyfix export-trt` (Jetson). No torch needed.

    Names ('default', 'imagenet') are resolved by `edge.models.open_towers`; checkpoints are a
    training format (`export.models.load_embedder` on a workstation).
    """
    if tower not in TOWERS:
        raise SkyfixError(f"tower must be one of {TOWERS}, got '{tower}'")
    path = Path(str(spec))
    from skyfix.edge.trt_embedder import TensorRTEmbedder, is_engine
    if is_engine(path):
        return TensorRTEmbedder(path, tower)
    if path.is_dir():
        return OnnxEmbedder(tower_onnx(path, tower), tower=tower)
    if path.suffix == ".onnx":
        return OnnxEmbedder(path)
    raise SkyfixError(f"model '{spec}' is not a model directory, .onnx or .engine file; onboard skyfix runs "
                      "exported models: `skyfix export onnx --checkpoint CKPT --out DIR`")


def read_model_card(model_dir: str | Path) -> dict:
    """The model.yaml that `skyfix export onnx` writes next to the ONNX files."""
    path = Path(model_dir) / "model.yaml"
    if not path.is_file():
        raise SkyfixError(f"{path} not found: is {model_dir} a `skyfix export onnx` output?")
    return yaml.safe_load(path.read_text())
