"""`skyfix train-features`: skyfix's own dense local features for the refinement matcher.

A plain CNN (3x3 convolutions, batch norm, ReLU, bilinear upsampling: nothing TensorRT or
onnxruntime needs surgery for) maps a uint8 RGB image to a 64-D unit descriptor and a match
reliability per 4 x 4 pixel cell. It is trained on pairs of views of the same ground whose
geometry is known:
- pixel-aligned images of one place on two dates (LEVIR-CD A/B): the appearance change across
  years and seasons is real;
- one image against itself (the Colorado orthophoto): the change is only the synthetic one.
Either side is warped by a random similarity + slight perspective (rotation within
+-rotation_deg, scale 0.8-1.25, as the onboard crop's heading and height errors do) and given
photometric change (`render.views.photometric`, plus a gamma). Loss: for sampled cells of view A,
a softmax over every cell of view B whose target is the cell the warp puts it in (dense InfoNCE),
plus a binary cross-entropy teaching the reliability head which cells found their match.

Which scenes train is in the recipe (train/recipes/dense_features*.yaml); a model is scored only
on scenes it never saw. The run is seeded; `model.yaml` records the recipe, the steps and the
final loss. The ONNX is checked against torch before it is written.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from skyfix.errors import SkyfixError, require

STRIDE_PX = 4       # one descriptor per 4 x 4 pixels (DenseExtractor.stride_px)
DESCRIPTOR_DIM = 64


@dataclass
class DenseRecipe:
    """What `skyfix train-features` trains on and how long. pairs: list of {map: image path,
    frames: image path of the same ground on another date, pixel-aligned with map (omit: the
    map against itself)}."""

    pairs: list = field(default_factory=list)
    steps: int = 1400
    batch: int = 6
    crop_px: int = 192
    rotation_deg: float = 20.0
    cells_per_view: int = 400
    temperature: float = 0.05
    lr: float = 2e-3
    seed: int = 0


def read_recipe(path: str | Path, **overrides) -> DenseRecipe:
    """A DenseRecipe from YAML (keys as the dataclass); overrides that are not None win."""
    path = Path(path)
    if not path.is_file():
        raise SkyfixError(f"recipe not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise SkyfixError(f"{path}: a recipe is a mapping")
    known = set(DenseRecipe.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise SkyfixError(f"{path}: unknown recipe keys {sorted(unknown)}; known: {sorted(known)}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    recipe = DenseRecipe(**raw)
    if not recipe.pairs:
        raise SkyfixError(f"{path}: no training pairs")
    for p in recipe.pairs:
        if not isinstance(p, dict) or "map" not in p:
            raise SkyfixError(f"{path}: each pair needs a 'map' image (and optionally 'frames'), got {p!r}")
    return recipe


def _read_rgb(path: str | Path) -> np.ndarray:
    """H x W x 3 uint8 RGB of a PNG/JPEG, or the first three bands of a GeoTIFF."""
    path = Path(path)
    if not path.is_file():
        raise SkyfixError(f"training image not found: {path}")
    if path.suffix.lower() in (".tif", ".tiff"):
        rasterio = require("rasterio")
        with rasterio.open(path) as src:
            return np.ascontiguousarray(src.read([1, 2, 3]).transpose(1, 2, 0))
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SkyfixError(f"cannot decode training image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_pairs(recipe: DenseRecipe) -> list[tuple[np.ndarray, np.ndarray]]:
    """(map RGB, frames RGB) per recipe pair; the same array twice for a same-image pair."""
    out = []
    for p in recipe.pairs:
        a = _read_rgb(p["map"])
        b = _read_rgb(p["frames"]) if p.get("frames") else a
        if a.shape != b.shape:
            raise SkyfixError(f"{p['map']} and {p['frames']} differ in size ({a.shape} vs {b.shape}): "
                              "the pair must be pixel-aligned")
        out.append((a, b))
    return out


def sample_view_pair(pairs: list, rng: np.random.Generator, crop_px: int, rotation_deg: float):
    """One training pair: (view_a H x W x 3 uint8, view_b, H_a2b 3 x 3 mapping view_a pixels to
    view_b pixels). view_a is an axis-aligned crop of one date; view_b the other date warped by a
    random rotation, scale 0.8-1.25, shift and slight perspective around the same ground."""
    from skyfix.render.views import photometric
    a_img, b_img = pairs[rng.integers(len(pairs))]
    if rng.random() < 0.5:
        a_img, b_img = b_img, a_img
    h, w = a_img.shape[:2]
    x0, y0 = int(rng.integers(crop_px, w - 2 * crop_px)), int(rng.integers(crop_px, h - 2 * crop_px))
    view_a = np.ascontiguousarray(a_img[y0:y0 + crop_px, x0:x0 + crop_px])
    rot, scale = math.radians(rng.uniform(-rotation_deg, rotation_deg)), rng.uniform(0.8, 1.25)
    c, s = math.cos(rot) * scale, math.sin(rot) * scale
    shift = rng.uniform(-crop_px / 8, crop_px / 8, 2)
    to_centre = np.array([[1, 0, -(x0 + crop_px / 2)], [0, 1, -(y0 + crop_px / 2)], [0, 0, 1]])
    similarity = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    perspective = np.eye(3)
    perspective[2, :2] = rng.uniform(-3e-4, 3e-4, 2)
    to_view = np.array([[1, 0, crop_px / 2 + shift[0]], [0, 1, crop_px / 2 + shift[1]], [0, 0, 1]])
    src_to_b = to_view @ perspective @ similarity @ to_centre
    view_b = cv2.warpPerspective(b_img, src_to_b, (crop_px, crop_px), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT)
    a_to_b = src_to_b @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], np.float64)
    return _photometric(view_a, rng, photometric), _photometric(view_b, rng, photometric), a_to_b


def _photometric(img: np.ndarray, rng: np.random.Generator, photometric) -> np.ndarray:
    img = photometric(img, rng, strength=1.0)
    if rng.random() < 0.5:  # a gamma: shadows and highlights change unlike the mean
        img = (255.0 * (img / 255.0) ** rng.uniform(0.6, 1.6)).astype(np.uint8)
    return img


def cell_centres_px(grid_h: int, grid_w: int) -> np.ndarray:
    """(grid_h * grid_w) x 2 pixel centres (col, row) of the descriptor cells, row-major."""
    rows, cols = np.mgrid[0:grid_h, 0:grid_w].reshape(2, -1)
    return np.column_stack([(cols + 0.5) * STRIDE_PX - 0.5, (rows + 0.5) * STRIDE_PX - 0.5])


def build_net():
    """The dense feature CNN (torch Module): uint8 N x H x W x 3 -> (descriptors N x 64 x H/4 x W/4
    unit vectors, reliability N x 1 x H/4 x W/4 in 0..1). H and W need not be multiples of anything."""
    torch = require("torch")
    nn, F = torch.nn, torch.nn.functional

    def block(c_in, c_out, stride):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                             nn.ReLU(inplace=True),
                             nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
                             nn.ReLU(inplace=True))

    class DenseFeatureNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.s2, self.s4 = block(1, 32, 2), block(32, 64, 2)
            # Coarser levels give each cell 30-60 m of context at 0.5 m/px: a cell in a field
            # or forest is told apart by what surrounds it.
            self.s8, self.s16 = block(64, 128, 2), block(128, 128, 2)
            self.fuse = nn.Sequential(nn.Conv2d(64 + 128 + 128, 128, 1, bias=False), nn.BatchNorm2d(128),
                                      nn.ReLU(inplace=True), nn.Conv2d(128, 128, 3, 1, 1), nn.ReLU(inplace=True))
            self.desc = nn.Conv2d(128, DESCRIPTOR_DIM, 1)
            self.reliability = nn.Conv2d(128, 1, 1)

        def forward(self, images_rgb_u8):
            x = images_rgb_u8.permute(0, 3, 1, 2).float()
            grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
            # Per-image grey-level normalisation: brightness and contrast of a date do not matter.
            grey = (grey - grey.mean(dim=(2, 3), keepdim=True)) / (grey.std(dim=(2, 3), keepdim=True) + 1.0)
            f4 = self.s4(self.s2(grey))
            f8 = self.s8(f4)
            f16 = self.s16(f8)
            size = (f4.shape[-2], f4.shape[-1])
            fused = self.fuse(torch.cat([f4, F.interpolate(f8, size, mode="bilinear", align_corners=False),
                                         F.interpolate(f16, size, mode="bilinear", align_corners=False)], 1))
            return F.normalize(self.desc(fused), dim=1), torch.sigmoid(self.reliability(fused))

    return DenseFeatureNet()


def pair_loss(desc_a, rel_a, desc_b, a_to_b: list, rng: np.random.Generator, cells: int, temperature: float):
    """(loss tensor or None, share of sampled cells whose nearest view-B cell is the right one).
    desc_*: N x D x h x w, rel_a: N x 1 x h x w; a_to_b: N homographies view_a px -> view_b px."""
    torch = require("torch")
    F = torch.nn.functional
    n, d, gh, gw = desc_a.shape
    centres = cell_centres_px(gh, gw)
    losses, hits = [], []
    for k in range(n):
        in_b = cv2.perspectiveTransform(centres[None].astype(np.float64), a_to_b[k])[0]
        cell_b = np.round((in_b + 0.5) / STRIDE_PX - 0.5).astype(int)
        seen = (cell_b[:, 0] >= 0) & (cell_b[:, 0] < gw) & (cell_b[:, 1] >= 0) & (cell_b[:, 1] < gh)
        idx = np.nonzero(seen)[0]
        if len(idx) < 20:
            continue
        idx = rng.choice(idx, min(cells, len(idx)), replace=False)
        target = torch.from_numpy(cell_b[idx, 1] * gw + cell_b[idx, 0])
        logits = desc_a[k].reshape(d, -1)[:, idx].T @ desc_b[k].reshape(d, -1) / temperature
        hit = (logits.argmax(1) == target).float()
        reliability = rel_a[k].reshape(-1)[idx]
        losses.append(F.cross_entropy(logits, target) + 0.5 * F.binary_cross_entropy(reliability, hit))
        hits.append(float(hit.mean()))
    if not losses:
        return None, 0.0
    return torch.stack(losses).mean(), float(np.mean(hits))


def train_dense(recipe: DenseRecipe, log_every: int = 50):
    """Train the dense feature CNN on the recipe; returns (net in eval mode, history list of
    {step, loss, hit_rate}). Seeded: the same recipe gives the same run on the same machine."""
    torch = require("torch")
    rng = np.random.default_rng(recipe.seed)
    torch.manual_seed(recipe.seed)
    pairs = load_pairs(recipe)
    net = build_net()
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.steps, pct_start=0.1)
    history, window, t0 = [], [], time.time()
    step = 0
    while step < recipe.steps:
        batch = [sample_view_pair(pairs, rng, recipe.crop_px, recipe.rotation_deg) for _ in range(recipe.batch)]
        view_a = torch.from_numpy(np.stack([b[0] for b in batch]))
        view_b = torch.from_numpy(np.stack([b[1] for b in batch]))
        desc_a, rel_a = net(view_a)
        desc_b, _ = net(view_b)
        loss, hit = pair_loss(desc_a, rel_a, desc_b, [b[2] for b in batch], rng, recipe.cells_per_view,
                              recipe.temperature)
        if loss is None:
            continue
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        step += 1
        window.append((float(loss.detach()), hit))
        if step % log_every == 0 or step == recipe.steps:
            mean_loss, mean_hit = np.mean(window, axis=0)
            history.append({"step": step, "loss": round(float(mean_loss), 4), "hit_rate": round(float(mean_hit), 4)})
            print(f"step {step}/{recipe.steps}  loss {mean_loss:.3f}  cells matched {mean_hit:.1%}  "
                  f"{time.time() - t0:.0f} s", flush=True)
            window = []
    return net.eval(), history
