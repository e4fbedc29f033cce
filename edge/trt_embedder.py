"""TensorRT backends (onboard, on the Jetson): a tower behind the Embedder protocol, and the
local-feature extractor's session (`edge/features.py`).

An engine folder is written by `skyfix export-trt`: `model.engine` (serialised TensorRT engine)
and `engine.yaml` (its manifest: what it is, ONNX sha256, precision, TensorRT version, GPU and
compute capability, input shape and profile, parity figures). Two kinds: a tower (`kind: tower`,
its `model_id` and `tower`) and local features (`kind: features`, its `extractor` and the
`weights` identity of the FP32 ONNX it comes from, which the pack's map features must share).
An engine is only valid for the TensorRT version and GPU it was built with, so both are checked
before it is deserialised.

The manifest checks are plain Python (`engine_problems`, tested everywhere); `TensorRTSession`
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
ENGINE_KINDS = {"tower": {"model_id", "tower", "dim", "output_name"}, "features": {"extractor", "weights"}}


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
    """The engine's manifest, checked for the fields its kind needs (a manifest without `kind`
    is a tower's: engines built before feature engines existed)."""
    engine, manifest = engine_paths(spec)
    if not manifest.is_file():
        raise SkyfixError(f"{manifest} not found: {engine} must come with the manifest `skyfix export-trt` "
                          "writes beside it")
    data = yaml.safe_load(manifest.read_text())
    kind = data.get("kind", "tower") if isinstance(data, dict) else None
    needed = {"precision", "tensorrt_version", "gpu_name", "compute_capability",
              "input_name", "input_shape", "profile", "engine_sha256"} | ENGINE_KINDS.get(kind, set())
    if not isinstance(data, dict) or kind not in ENGINE_KINDS or needed - set(data):
        raise SkyfixError(f"{manifest} is not an engine manifest (missing "
                          f"{sorted(needed - set(data or {}))}, kind {kind!r})")
    return {**data, "kind": kind}


def gpu_identity() -> dict:
    """{'tensorrt_version', 'gpu_name', 'compute_capability'} of this machine (needs tensorrt,
    pycuda and a CUDA GPU)."""
    trt = require("tensorrt")
    cuda = require("pycuda.driver")
    cuda.init()
    dev = cuda.Device(0)
    major, minor = dev.compute_capability()
    return {"tensorrt_version": trt.__version__, "gpu_name": dev.name(), "compute_capability": f"{major}.{minor}"}


def engine_problems(manifest: dict, here: dict, tower: Optional[str] = None, model_id: Optional[str] = None,
                    extractor: Optional[str] = None) -> list[str]:
    """Why an engine must not be loaded here: each entry says what was expected, what was found
    and how to fix it. here: `gpu_identity()`; tower / model_id (a tower) or extractor (local
    features): what the caller needs."""
    rebuild = "rebuild it on this machine: skyfix export-trt --onnx <its ONNX> --precision " + str(manifest.get("precision"))
    kind = manifest.get("kind", "tower")
    out = []
    if manifest["tensorrt_version"] != here["tensorrt_version"]:
        out.append(f"engine built by TensorRT {manifest['tensorrt_version']}, this is TensorRT "
                   f"{here['tensorrt_version']} (engines do not move between versions); {rebuild}")
    if (manifest["gpu_name"], str(manifest["compute_capability"])) != (here["gpu_name"], str(here["compute_capability"])):
        out.append(f"engine built for {manifest['gpu_name']} (compute {manifest['compute_capability']}), this "
                   f"GPU is {here['gpu_name']} (compute {here['compute_capability']}); {rebuild}")
    wanted_kind = "features" if extractor else "tower" if tower or model_id else kind
    if kind != wanted_kind:
        what = f"{manifest.get('extractor')} local features" if kind == "features" else f"the {manifest.get('tower')} tower"
        out.append(f"engine is {what}, a {wanted_kind} engine is needed here")
        return out
    if extractor and manifest["extractor"] != extractor:
        out.append(f"engine is the {manifest['extractor']} extractor, {extractor} is configured; build the "
                   f"engine from {extractor}.onnx")
    if tower and manifest["tower"] not in (tower, "shared"):  # a shared towers' engine serves both
        out.append(f"engine is the {manifest['tower']} tower, the {tower} tower is needed; build the engine "
                   f"from {tower}.onnx")
    if model_id and manifest["model_id"] != model_id:
        out.append(f"engine is model {manifest['model_id']}, the pack was built by {model_id}; build the engine "
                   "from the model that built the pack, or rebuild the pack")
    return out


class TensorRTSession:
    """One engine, run like an onnxruntime session: `run(None, feeds)` -> the outputs as numpy
    arrays, in the engine's order. A pycuda context current only around each call (thread-safe), one CUDA
    stream, page-locked host buffers and device buffers that grow to the largest shapes seen (the
    feature extractor's input size changes per frame), the TensorRT 10 tensor API."""

    def __init__(self, spec: str | Path, **expected):
        from skyfix.artifacts import file_digest
        engine_path, _ = engine_paths(spec)
        manifest = read_engine_manifest(spec)
        problems = engine_problems(manifest, gpu_identity(), **expected)
        if problems:
            raise SkyfixError(f"cannot load {engine_path}: " + "; ".join(problems))
        if file_digest(engine_path)["sha256"] != manifest["engine_sha256"]:
            raise SkyfixError(f"{engine_path} does not match its manifest (changed or truncated): rebuild it")
        trt, cuda = require("tensorrt"), require("pycuda.driver")
        self._cuda, self.manifest = cuda, manifest
        self.ctx = cuda.Device(0).make_context()
        try:
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
            if self.engine is None:
                raise SkyfixError(f"TensorRT could not deserialise {engine_path}: rebuild it")
            self.context = self.engine.create_execution_context()
            self.stream = cuda.Stream()
        finally:
            self.ctx.pop()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtype = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._host, self._device = {}, {}
        self.backend = f"tensorrt:{manifest['precision']}"
        log.info("%s: TensorRT %s engine (%s)", engine_path, manifest["precision"], manifest["kind"])

    def _buffers(self, name: str, shape: tuple) -> tuple:
        """(host array of `shape` in page-locked memory, device allocation) for tensor `name`,
        reallocated only when a larger shape arrives."""
        nbytes = int(np.prod(shape)) * self._dtype[name].itemsize
        if name not in self._host or self._host[name].nbytes < nbytes:
            self._host[name] = self._cuda.pagelocked_empty(nbytes, np.uint8)
            self._device[name] = self._cuda.mem_alloc(nbytes)
        return self._host[name][:nbytes].view(self._dtype[name]).reshape(shape), self._device[name]

    def run(self, output_names: Optional[list], feeds: dict) -> list:
        """feeds: {input name: array} (shapes within the engine's profile) -> the arrays of
        output_names (None: all outputs)."""
        cuda = self._cuda
        self.ctx.push()
        try:
            for name in self.inputs:
                x = np.ascontiguousarray(feeds[name], self._dtype[name])
                self.context.set_input_shape(name, x.shape)
                host, dev = self._buffers(name, x.shape)
                np.copyto(host, x)
                self.context.set_tensor_address(name, int(dev))
                cuda.memcpy_htod_async(dev, host, self.stream)
            outs = []
            for name in self.outputs:
                host, dev = self._buffers(name, tuple(self.context.get_tensor_shape(name)))
                self.context.set_tensor_address(name, int(dev))
                outs.append(host)
            if not self.context.execute_async_v3(stream_handle=self.stream.handle):
                raise SkyfixError("TensorRT execution failed")
            for name, host in zip(self.outputs, outs):
                cuda.memcpy_dtoh_async(host, self._device[name], self.stream)
            self.stream.synchronize()
            by_name = {name: host.copy() for name, host in zip(self.outputs, outs)}
            return [by_name[n] for n in (output_names or self.outputs)]
        finally:
            self.ctx.pop()


class TensorRTEmbedder:
    """A tower as a TensorRT engine (`TensorRTSession`): uint8 N x H x W x 3 in (N within the
    engine's profile; larger batches are run in chunks), float32 N x D unit vectors out."""

    def __init__(self, spec: str | Path, tower: str):
        self.session = TensorRTSession(spec, tower=tower)
        manifest = self.session.manifest
        self.model_id, self.tower, self.manifest = manifest["model_id"], tower, manifest
        self.input_name, self.output_name = manifest["input_name"], manifest["output_name"]
        self.input_px, self.dim = int(manifest["input_shape"][1]), int(manifest["dim"])
        self.max_batch = int(manifest["profile"]["max"][0])
        self.backend = self.session.backend

    def embed(self, images_rgb: np.ndarray) -> np.ndarray:
        from skyfix.edge.embedders import fit_to_input
        x = fit_to_input(images_rgb, self.input_px)
        return np.concatenate([self.session.run([self.output_name], {self.input_name: x[i:i + self.max_batch]})[0]
                               for i in range(0, len(x), self.max_batch)])
