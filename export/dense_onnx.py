"""skyfix's own dense local features to ONNX (`skyfix train-features` trains them with
train/dense_features.py and writes them here): uint8 RGB in, descriptors and reliability out,
parity checked against torch with onnxruntime."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from skyfix.artifacts import atomic_directory, file_digest
from skyfix.errors import SkyfixError, require
from skyfix.export.onnx_export import OPSET, parity_images
from skyfix.train.dense_features import DESCRIPTOR_DIM, STRIDE_PX, read_recipe, train_dense


def export_dense(net, out_dir: str | Path, card: dict, parity_px: int = 160, atol: float = 1e-4) -> Path:
    """Write out_dir/dense.onnx (uint8 N x H x W x 3 in, dynamic N, H, W) + features.yaml (card,
    digest, parity); refuses when onnxruntime differs from torch by more than atol."""
    torch, onnx, ort = require("torch"), require("onnx"), require("onnxruntime")
    images = parity_images(parity_px, n=2)
    with atomic_directory(out_dir) as tmp:
        path = tmp / "dense.onnx"
        torch.onnx.export(net.eval(), (torch.from_numpy(images),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["images_rgb_u8"], output_names=["descriptors", "reliability"],
                          dynamic_axes={"images_rgb_u8": {0: "batch", 1: "height", 2: "width"}})
        onnx.checker.check_model(onnx.load(str(path)))
        odd = images[:, : parity_px - 6, : parity_px - 2]  # a size that is no multiple of 16
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        diff = 0.0
        with torch.inference_mode():
            for imgs in (images, np.ascontiguousarray(odd)):
                ref = [t.numpy() for t in net(torch.from_numpy(imgs))]
                got = sess.run(None, {"images_rgb_u8": imgs})
                diff = max(diff, *(float(np.abs(g - r).max()) for g, r in zip(got, ref)))
        if diff > atol:
            raise SkyfixError(f"dense features ONNX differs from torch by {diff:.2e} > {atol}")
        full = {"extractor": "dense", "descriptor_dim": DESCRIPTOR_DIM, "stride_px": STRIDE_PX,
                "input": "uint8 RGB N x H x W x 3, any H and W", "opset": OPSET,
                "parity": {"max_abs_diff": diff, "images": 2 * len(images)}, **card, "file": file_digest(path)}
        (tmp / "features.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    return Path(out_dir)


def train_and_export(recipe_path: str | Path, out_dir: str | Path, steps: Optional[int] = None,
                     seed: Optional[int] = None) -> Path:
    """`skyfix train-features`: train on the recipe, export, record the recipe and the run."""
    recipe = read_recipe(recipe_path, steps=steps, seed=seed)
    t0 = time.time()
    net, history = train_dense(recipe)
    card = {"recipe": str(recipe_path), "training": asdict(recipe), "train_s": round(time.time() - t0, 1),
            "history": history[-5:]}
    return export_dense(net, out_dir, card)
