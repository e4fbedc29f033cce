"""The torch backend of the Embedder protocol: a tower of a `TwoTowers` model (training,
evaluation of checkpoints). Onboard code runs the exported ONNX instead (edge/embedders.py)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from skyfix.edge.embedders import fit_to_input
from skyfix.errors import require
from skyfix.train.towers import compute_model_id


class TorchEmbedder:
    """torch backend: a tower of a `TwoTowers` model (CPU or the first CUDA device)."""

    def __init__(self, model, tower: str, model_id: Optional[str] = None, device: str = "cpu"):
        self.torch = require("torch")
        self.net = model.tower(tower).to(device).eval()
        self.device, self.tower = device, tower
        self.model_id = model_id or compute_model_id(model)
        self.input_px, self.dim = model.cfg.input_px, model.cfg.dim
        self.backend = f"torch:{device}"

    def embed(self, images_rgb: np.ndarray) -> np.ndarray:
        x = fit_to_input(images_rgb, self.input_px)
        with self.torch.inference_mode():
            out = self.net(self.torch.from_numpy(x).to(self.device))
        return out.float().cpu().numpy()
