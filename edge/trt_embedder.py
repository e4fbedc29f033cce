"""TensorRT backend of a tower (onboard, on the Jetson), behind the Embedder protocol.

An engine folder is written by `skyfix export-trt`: `model.engine` (serialised TensorRT engine)
and `engine.yaml` (its manifest: model_id, tower, ONNX sha256, precision, TensorRT version, GPU
and compute capability, input shape and profile, parity figures). An engine is only valid for
the TensorRT version and GPU it was built with, so both are checked before it is deserialised.

The manifest checks are plain Python (`engine_problems`, tested everywhere); `TensorRTEmbedder`
is the thin part that needs tensorrt and pycuda (tests marked `gpu`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from skyfix.errors import SkyfixError, require

log = logging.getLogger("skyfix.trt")

ENGINE_FILE, MANIFEST_FILE = "model.engine", "engine.yaml"


def engine_paths(spec: str | Path) -> tuple[Path, Path]:
    """(engine file, manifest file) for an engine folder or a `.engine` file inside one."""
    path = Path(spec)
    folder = path.parent if path.suffix == ".engine" else path
    engine = path if path.suffix == ".engine" else folder / ENGINE_FILE
    return engine, folder / MANIFEST_FILE


def is_engine(spec: str | Path) -> bool:
    """True for a `.engine` file or a folder written by `skyfix export-trt`."""
    path = Path(str(spec))
    return path.suffix == ".engine" or (path.is_dir() and (path / MANIFEST_FILE).is_file())


def read_engine_manifest(spec: str | Path) -> dict:
    engine, manifest = engine_paths(spec)
    if not manifest.is_file():
        raise SkyfixError(f"{manifest} not found: {engine} must come with the manifest `skyfix export-trt` "
                          "writes beside it")
    data = yaml.safe_load(manifest.read_text())
    needed = {"model_id", "tower", "precision", "tensorrt_version", "gpu_name", "compute_capability",
              "input_name", "input_shape", "profile", "engine_sha256"}
    if not isinstance(data, dict) or needed - set(data):
        raise SkyfixError(f"{manifest} is not an engine manifest (missing "
                          f"{sorted(needed - set(data or {}))})")
    return data


def gpu_identity() -> dict:
    """{'tensorrt_version', 'gpu_name', 'compute_capability'} of this machine (needs tensorrt,
    pycuda and a CUDA GPU)."""
    trt = require("tensorrt")
    cuda = require("pycuda.driver")
    cuda.init()
    dev = cuda.Device(0)
    major, minor = dev.compute_capability()
    return {"tensorrt_version": trt.__version__, "gpu_name": dev.name(), "compute_capability": f"{major}.{minor}"}


def engine_problems(manifest: dict, here: dict, tower: Optional[str] = None,
                    model_id: Optional[str] = None) -> list[str]:
    """Why an engine must not be loaded here: each entry says what was expected, what was found
    and how to fix it. here: `gpu_identity()`; tower / model_id: what the caller needs."""
    rebuild = "rebuild it on this machine: skyfix export-trt --onnx <its ONNX> --precision " + str(manifest.get("precision"))
    out = []
    if manifest["tensorrt_version"] != here["tensorrt_version"]:
        out.append(f"engine built by TensorRT {manifest['tensorrt_version']}, this is TensorRT "
                   f"{here['tensorrt_version']} (engines do not move between versions); {rebuild}")
    if (manifest["gpu_name"], str(manifest["compute_capability"])) != (here["gpu_name"], str(here["compute_capability"])):
        out.append(f"engine built for {manifest['gpu_name']} (compute {manifest['compute_capability']}), this "
                   f"GPU is {here['gpu_name']} (compute {here['compute_capability']}); {rebuild}")
    if tower and manifest["tower"] != tower:
        out.append(f"engine is the {manifest['tower']} tower, the {tower} tower is needed; build the engine "
                   f"from {tower}.onnx")
    if model_id and manifest["model_id"] != model_id:
        out.append(f"engine is model {manifest['model_id']}, the pack was built by {model_id}; build the engine "
                   "from the model that built the pack, or rebuild the pack")
    return out


class TensorRTEmbedder:
    """A tower as a TensorRT engine: pycuda context, page-locked host buffers, one CUDA stream,
    the TensorRT 10 tensor API. uint8 N x H x W x 3 in (N within the engine's profile; larger
    batches are run in chunks), float32 N x D unit vectors out."""

    def __init__(self, spec: str | Path, tower: str):
        from skyfix.artifacts import file_digest
        engine_path, _ = engine_paths(spec)
        manifest = read_engine_manifest(spec)
        problems = engine_problems(manifest, gpu_identity(), tower=tower)
        if problems:
            raise SkyfixError(f"cannot load {engine_path}: " + "; ".join(problems))
        if file_digest(engine_path)["sha256"] != manifest["engine_sha256"]:
            raise SkyfixError(f"{engine_path} does not match its manifest (changed or truncated): rebuild it")
        trt, cuda = require("tensorrt"), require("pycuda.driver")
        self._cuda = cuda
        self.ctx = cuda.Device(0).make_context()  # current only around each call (thread-safe)
        try:
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
            if self.engine is None:
                raise SkyfixError(f"TensorRT could not deserialise {engine_path}: rebuild it")
            self.context = self.engine.create_execution_context()
            self.stream = cuda.Stream()
        finally:
            self.ctx.pop()
        self.model_id, self.tower, self.manifest = manifest["model_id"], manifest["tower"], manifest
        self.input_name, self.output_name = manifest["input_name"], manifest["output_name"]
        self.input_px, self.dim = int(manifest["input_shape"][1]), int(manifest["dim"])
        self.max_batch = int(manifest["profile"]["max"][0])
        self.backend = f"tensorrt:{manifest['precision']}"
        self._buffers = {}
        log.info("%s: TensorRT %s engine, batch <= %d", engine_path, manifest["precision"], self.max_batch)

    def _buffers_for(self, batch: int):
        """Page-locked host and device buffers for a batch size, allocated once and kept."""
        if batch not in self._buffers:
            cuda = self._cuda
            h_in = cuda.pagelocked_empty((batch, self.input_px, self.input_px, 3), np.uint8)
            h_out = cuda.pagelocked_empty((batch, self.dim), np.float32)
            self._buffers[batch] = (h_in, h_out, cuda.mem_alloc(h_in.nbytes), cuda.mem_alloc(h_out.nbytes))
        return self._buffers[batch]

    def _run(self, x: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        h_in, h_out, d_in, d_out = self._buffers_for(len(x))
        np.copyto(h_in, x)
        self.context.set_input_shape(self.input_name, h_in.shape)
        self.context.set_tensor_address(self.input_name, int(d_in))
        self.context.set_tensor_address(self.output_name, int(d_out))
        cuda.memcpy_htod_async(d_in, h_in, self.stream)
        if not self.context.execute_async_v3(stream_handle=self.stream.handle):
            raise SkyfixError("TensorRT execution failed")
        cuda.memcpy_dtoh_async(h_out, d_out, self.stream)
        self.stream.synchronize()
        return h_out.copy()

    def embed(self, images_rgb: np.ndarray) -> np.ndarray:
        from skyfix.edge.embedders import fit_to_input
        x = fit_to_input(images_rgb, self.input_px)
        self.ctx.push()
        try:
            return np.concatenate([self._run(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)])
        finally:
            self.ctx.pop()
