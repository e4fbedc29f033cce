"""Model resolution: a name or a path given by the user -> the deployable model files, for onboard
code and every command. Nothing here trains or exports (that is `train/` and `export/`, which the
CLI calls through `export.models` when a workstation form is asked for).

    a model folder from `skyfix export onnx`  -> that folder (drone.onnx and sat.onnx, or towers.onnx; model.yaml)
    a `.onnx` file                            -> that file
    an engine folder / `.engine` (export-trt) -> TensorRT (edge.trt_embedder, Jetson)
    'default'                                 -> the towers shipped in the package (edge/weights/towers,
                                                 trained by train/recipes/default_towers.yaml)
    'imagenet'                                -> the ImageNet-initialised towers once exported to the
                                                 cache (`export.models.imagenet_onnx` makes them)
    nothing, with a pack                      -> the model the pack records it was built by
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from skyfix.edge.embedders import open_embedder
from skyfix.edge.features import default_model_dir
from skyfix.errors import SkyfixError

DEFAULT = "default"
IMAGENET = "imagenet"
SHIPPED_TOWERS = Path(__file__).resolve().parent / "weights" / "towers"


def cache_dir() -> Path:
    """Where derived models are kept: $SKYFIX_CACHE, else ~/.cache/skyfix."""
    return Path(os.environ.get("SKYFIX_CACHE") or Path.home() / ".cache" / "skyfix")


def imagenet_dir(model_cfg=None) -> Path:
    """The cache folder of the ImageNet-initialised towers of `model_cfg` (keyed by the config)."""
    from skyfix.config import ModelConfig
    cfg = model_cfg or ModelConfig()
    key = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"imagenet-{key}"


def towers_path(spec: str | Path, model_cfg=None) -> Path:
    """The deployable towers `spec` names (a folder, .onnx or engine), or SkyfixError saying how
    to get them. Checkpoints (.pt) are a training format: `export.models.load_embedder` runs them."""
    if str(spec) == DEFAULT:
        if not (SHIPPED_TOWERS / "model.yaml").is_file():
            raise SkyfixError(f"the default towers are not in this install ({SHIPPED_TOWERS}); reinstall "
                              "skyfix, or give --model DIR from `skyfix export onnx`")
        return SHIPPED_TOWERS
    if str(spec) == IMAGENET:
        path = imagenet_dir(model_cfg)
        if not (path / "model.yaml").is_file():
            raise SkyfixError(f"the ImageNet towers are not exported on this machine ({path}); a workstation "
                              "command (`skyfix tiles build --model imagenet`) exports them once")
        return path
    path = Path(str(spec))
    if path.suffix == ".pt":
        raise SkyfixError(f"{path} is a training checkpoint; onboard skyfix runs exported models: "
                          f"`skyfix export onnx --checkpoint {path} --out DIR`")
    if not path.exists():
        raise SkyfixError(f"model '{spec}' not found: give a model folder, .onnx or .engine, "
                          f"'{DEFAULT}' or '{IMAGENET}'")
    return path


def open_towers(spec: str | Path, tower: str, model_cfg=None):
    """The Embedder of `tower` ('drone' or 'sat') of the model `spec` (see the module's table)."""
    return open_embedder(towers_path(spec, model_cfg), tower)


def features_dir(name: str, configured: Optional[str] = None) -> Optional[str]:
    """The folder of learned extractor `name` when nothing names one: models/<name> when there
    (`skyfix export features`), else the cached export; None for the extractors that need no folder
    (sift, orb, the shipped dense), when one is configured, or when neither exists yet."""
    if configured or name != "xfeat":
        return configured or None
    for folder in (default_model_dir(name), cache_dir() / name):
        if (folder / f"{name}.onnx").is_file():
            return str(folder)
    return None


def model_for_pack(pack, spec: Optional[str] = None) -> str:
    """The model to use with a pack: the one given, else the one the pack was built by."""
    return spec or pack.manifest.get("model_source") or IMAGENET
