"""Torch towers rebuilt from an exported ONNX folder, for quantisation-aware INT8 from towers that
come without a training checkpoint (the shipped `default` towers: `skyfix export int8 --model
default --qat`).

The export folds each BatchNorm into the convolution before it, so the rebuilt towers carry the
folded weights and biases, with each BatchNorm set to the identity plus that bias (its statistics
are then what TensorRT folds back at build time). Nothing is guessed: the convolutions are taken
in graph order against the torch modules in forward order, every shape must match, and the rebuilt
towers must reproduce the ONNX embeddings (cosine >= MIN_COSINE on test images) or are refused.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from skyfix.errors import SkyfixError, require

MIN_COSINE = 0.9999

torch = require("torch")
nn = torch.nn


def _constants(graph) -> dict:
    """{tensor name: float32 array} of the initializers, and of the Cast/Identity outputs of
    initializers (FP16-stored weights are cast to FP32 in the graph)."""
    from onnx import numpy_helper
    values = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in graph.initializer}
    for node in graph.node:
        if node.op_type in ("Cast", "Identity") and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _conv_bn_pairs(tower) -> list:
    """[(Conv2d, the BatchNorm2d after it or None)] in forward (registration) order."""
    modules = [m for m in tower.backbone.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    pairs = []
    for i, m in enumerate(modules):
        if isinstance(m, nn.Conv2d):
            nxt = modules[i + 1] if i + 1 < len(modules) else None
            pairs.append((m, nxt if isinstance(nxt, nn.BatchNorm2d) else None))
    return pairs


def _load_tower(tower, onnx_path: Path) -> None:
    """Set `tower`'s weights (in place) from its ONNX export."""
    import onnx
    graph = onnx.load(str(onnx_path)).graph
    values = _constants(graph)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    pairs = _conv_bn_pairs(tower)
    if len(convs) != len(pairs):
        raise SkyfixError(f"{onnx_path} has {len(convs)} convolutions, the towers of its model card {len(pairs)}")
    with torch.no_grad():
        for node, (conv, bn) in zip(convs, pairs):
            w = values[node.input[1]]
            b = values[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
            if tuple(w.shape) != tuple(conv.weight.shape):
                raise SkyfixError(f"{onnx_path}: convolution {node.name} is {w.shape}, the towers expect "
                                  f"{tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(w))
            if bn is None:
                conv.bias.copy_(torch.from_numpy(b))
                continue
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(b))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(var + eps) = x
        proj = [values[n.input[1]] for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in values]
        if len(proj) != 1 or sorted(proj[0].shape) != sorted(tower.proj.weight.shape):
            raise SkyfixError(f"{onnx_path}: no single projection of shape {tuple(tower.proj.weight.shape)}")
        w = proj[0] if proj[0].shape == tuple(tower.proj.weight.shape) else proj[0].T  # MatMul: C x dim
        tower.proj.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        tower.pool.p.fill_(float(values["pool.p"]))


def _check_parity(model, model_dir: Path, towers: tuple) -> float:
    """The lowest cosine between the rebuilt towers' and the ONNX files' embeddings of the export's
    parity images; SkyfixError below MIN_COSINE."""
    from skyfix.edge.embedders import tower_onnx
    from skyfix.export.onnx_export import check_parity, parity_images
    images = parity_images(model.cfg.input_px, n=8)
    worst = min(check_parity(model.tower(t), tower_onnx(model_dir, t), images, t).min_cosine for t in towers)
    if worst < MIN_COSINE:
        raise SkyfixError(f"the towers rebuilt from {model_dir} do not reproduce its ONNX (cosine {worst:.5f} < "
                          f"{MIN_COSINE}): give the training checkpoint instead (--qat CHECKPOINT.pt)")
    return worst


def towers_from_onnx(model_dir: str | Path, card: dict):
    """TwoTowers (eval mode) with the weights of the ONNX towers in `model_dir` (model card
    `card`), checked against them. Returns (model, lowest cosine to the ONNX embeddings)."""
    from skyfix.config import ModelConfig
    from skyfix.edge.embedders import tower_onnx
    from skyfix.train.towers import build_towers
    model_dir = Path(model_dir)
    cfg = ModelConfig(**{**card["model"], "pretrained": False})
    model = build_towers(cfg)
    towers = ("drone",) if cfg.shared_weights else ("drone", "sat")
    for name in towers:
        _load_tower(model.tower(name), tower_onnx(model_dir, name))
    return model.eval(), _check_parity(model, model_dir, towers)
