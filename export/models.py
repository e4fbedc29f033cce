"""The one place a model given by the user becomes an Embedder, for every command.

    a model directory from `skyfix export onnx`  -> onnxruntime (edge.embedders)
    a `.onnx` file                                -> onnxruntime
    a `.pt` checkpoint from `skyfix train`        -> torch (train.torch_embedder)
    'imagenet'                                    -> torch, ImageNet-initialised towers
    nothing, with a pack                          -> the model the pack records it was built by

TensorRT `.engine` files are added here when the Jetson runtime lands.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from skyfix.edge.embedders import TOWERS, open_embedder
from skyfix.errors import SkyfixError

IMAGENET = "imagenet"


def load_embedder(spec: str | Path, tower: str, model_cfg=None):
    """An Embedder for `tower` ('drone' or 'sat') from any of the forms above."""
    if tower not in TOWERS:
        raise SkyfixError(f"tower must be one of {TOWERS}, got '{tower}'")
    path = Path(str(spec))
    if path.is_dir() or path.suffix == ".onnx":
        return open_embedder(path, tower)
    if path.suffix == ".pt":
        from skyfix.train.torch_embedder import TorchEmbedder
        from skyfix.train.towers import load_checkpoint
        return TorchEmbedder(load_checkpoint(path), tower)
    if str(spec) == IMAGENET:
        from skyfix.config import ModelConfig
        from skyfix.train.torch_embedder import TorchEmbedder
        from skyfix.train.towers import build_towers
        return TorchEmbedder(build_towers(model_cfg or ModelConfig()), tower)
    raise SkyfixError(f"model '{spec}' is not a model directory, .onnx, .pt or '{IMAGENET}'")


def model_for_pack(pack, spec: Optional[str] = None) -> str:
    """The model to use with a pack: the one given, else the one the pack was built by."""
    return spec or pack.manifest.get("model_source") or IMAGENET
