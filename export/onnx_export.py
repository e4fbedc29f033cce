"""Export the towers to ONNX (uint8 RGB N x H x W x 3 in, float32 N x D unit vectors out) and
check parity with onnxruntime against torch."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from skyfix.artifacts import atomic_directory
from skyfix.edge.embedders import SHARED, SHARED_ONNX
from skyfix.errors import SkyfixError, require

OPSET = 17


@dataclass
class Parity:
    tower: str
    max_abs_diff: float
    min_cosine: float

    def ok(self, atol: float, min_cos: float) -> bool:
        return self.max_abs_diff <= atol and self.min_cosine >= min_cos


def _export_tower(tower_module, path: Path, input_px: int, meta: dict) -> None:
    torch, onnx = require("torch"), require("onnx")
    dummy = torch.zeros(2, input_px, input_px, 3, dtype=torch.uint8)
    torch.onnx.export(tower_module, (dummy,), str(path), dynamo=False, opset_version=OPSET,
                      input_names=["images_rgb_u8"], output_names=["embedding"],
                      dynamic_axes={"images_rgb_u8": {0: "batch"}, "embedding": {0: "batch"}})
    model = onnx.load(str(path))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def check_parity(tower_module, onnx_path: Path, images_rgb: np.ndarray, tower: str) -> Parity:
    """Embed the same uint8 batch with torch and onnxruntime; report max |diff| and min cosine."""
    torch = require("torch")
    from skyfix.edge.embedders import OnnxEmbedder
    with torch.inference_mode():
        ref = tower_module(torch.from_numpy(images_rgb)).numpy()
    got = OnnxEmbedder(onnx_path, providers=["CPUExecutionProvider"]).embed(images_rgb)
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return Parity(tower, float(np.abs(ref - got).max()), float(cos.min()))


def parity_images(input_px: int, n: int = 4, seed: int = 0) -> np.ndarray:
    """A parity batch: smooth random images (more like photos than white noise), uint8 NHWC."""
    import cv2
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    return np.stack([cv2.resize(s, (input_px, input_px), interpolation=cv2.INTER_CUBIC)
                     for s in small])


def export_onnx(model, out_dir: str | Path, atol: float = 1e-4, min_cos: float = 0.9999,
                log=print, card_extra: Optional[dict] = None) -> Path:
    """Write `drone.onnx`, `sat.onnx` (one `towers.onnx` where the towers share their weights) and
    `model.yaml` into out_dir (atomically) and check parity.
    card_extra: more of the model card (e.g. the training run it came from).

    Raises SkyfixError when onnxruntime and torch disagree beyond (atol, min_cos).
    Returns out_dir.
    """
    from skyfix.train.towers import compute_model_id
    out_dir = Path(out_dir)
    model_id = compute_model_id(model)
    cfg = model.cfg
    with atomic_directory(out_dir) as tmp:
        parities = []
        images = parity_images(cfg.input_px)
        shared = cfg.shared_weights  # one file serves both towers
        for tower in ("drone",) if shared else ("drone", "sat"):
            t0 = time.perf_counter()
            meta = {"model_id": model_id, "tower": SHARED if shared else tower, "input_px": cfg.input_px,
                    "dim": cfg.dim}
            path = tmp / (SHARED_ONNX if shared else f"{tower}.onnx")
            _export_tower(model.tower(tower), path, cfg.input_px, meta)
            parity = check_parity(model.tower(tower), path, images, tower)
            parities.append(parity)
            log(f"export onnx {tower}: {path.stat().st_size / 1e6:.1f} MB in "
                f"{time.perf_counter() - t0:.1f} s; parity max|diff| {parity.max_abs_diff:.2e}, "
                f"min cos {parity.min_cosine:.6f}")
            if not parity.ok(atol, min_cos):
                raise SkyfixError(f"ONNX parity failed for {tower}: max|diff| "
                                  f"{parity.max_abs_diff:.2e} > {atol} or min cos "
                                  f"{parity.min_cosine:.6f} < {min_cos}")
        card = {"model_id": model_id, "input": "uint8 RGB N x H x W x 3",
                "output": "float32 N x D, L2-normalised", "input_px": cfg.input_px, "dim": cfg.dim,
                "opset": OPSET, "model": asdict(cfg), "parity": [asdict(p) for p in parities], **(card_extra or {})}
        (tmp / "model.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return out_dir
