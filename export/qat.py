"""Quantisation-aware fine-tuning for the INT8 towers (`skyfix export int8 --qat CHECKPOINT`).

Post-training quantisation of EfficientNet-Lite0 loses too much for the parity gate (README,
"Lower precision"). Here the torch towers are given fake quantisation exactly where the INT8
engine will quantise, then fine-tuned for a few hundred steps to reproduce the FP32 towers'
embeddings (distillation: 1 - cosine to the FP32 model, on the calibration views only), and
exported with the fake-quantisation ops as QuantizeLinear/DequantizeLinear pairs: the explicitly
quantised QDQ ONNX that TensorRT builds an INT8 engine from.

- Quantised: every convolution except the stem (it sees raw pixel values) and the depthwise
  ones (one filter per channel: quantising them cost the most, see `precision.kept_fp32`);
  the head (GeM pooling, projection, normalisation) stays in FP32.
- Weights: per-output-channel symmetric INT8, scale = max |w| / 127 (recomputed while training,
  frozen as constants for the export). Activations (each quantised convolution's input):
  per-tensor symmetric INT8, scale from the 99.99th percentile of |x| over calibration views,
  fixed during fine-tuning. Zero points are 0 throughout, as TensorRT expects.
- BatchNorm keeps its statistics (the model is fine-tuned in eval mode), so the fold TensorRT
  does at build time sees the trained values.
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np

from skyfix.errors import require

ACT_PERCENTILE = 0.9999

torch = require("torch")
nn, F = torch.nn, torch.nn.functional
parametrize = torch.nn.utils.parametrize


def quantisable_convs(model) -> list:
    """The convolutions the INT8 export quantises: all but the first and the depthwise ones."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return [m for m in convs[1:] if m.groups == 1]


def _tower_batches(model, views, n: int, batch: int = 16):
    """(tower module, uint8 batch) over the first n calibration views of each tower."""
    for tower, images in (("drone", views.drone), ("sat", views.sat)):
        for i in range(0, min(n, len(images)), batch):
            yield model.tower(tower), torch.from_numpy(images[i:i + batch])


ACT_RANGE_VIEWS = 128  # per tower: enough for a stable 99.99th percentile, and the quantile is slow


def calibrate_activations(model, convs: list, views, n: int = ACT_RANGE_VIEWS) -> list[float]:
    """Per convolution, the ACT_PERCENTILE quantile of |input| over n views of each tower
    (every 37th value: a quantile over whole feature maps would not fit in memory)."""
    seen = {id(m): [] for m in convs}

    def record(module, args):
        x = args[0].detach().abs().flatten()[::37].float()
        seen[id(module)].append(float(torch.quantile(x, ACT_PERCENTILE)))

    hooks = [m.register_forward_pre_hook(record) for m in convs]
    try:
        with torch.no_grad():
            for tower, images in _tower_batches(model, views, n):
                tower(images)
    finally:
        for h in hooks:
            h.remove()
    return [max(max(seen[id(m)]), 1e-6) for m in convs]


def _weight_scale(w):
    """Per-output-channel symmetric INT8 scale of a convolution weight: max |w| / 127."""
    return (w.detach().abs().amax(dim=(1, 2, 3)).clamp(min=1e-8) / 127.0).float()


class _ChannelFakeQuant(nn.Module):
    """Per-output-channel symmetric INT8 fake quantisation of a weight; `scale` fixed when given."""

    def __init__(self, scale=None):
        super().__init__()
        self.frozen = scale is not None
        if self.frozen:
            self.register_buffer("scale", scale)

    def forward(self, w):
        scale = self.scale if self.frozen else _weight_scale(w)
        return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(w.shape[0], dtype=torch.int32),
                                                      0, -128, 127)


def _quantise_input(module, args):
    return (torch.fake_quantize_per_tensor_affine(args[0], module.act_scale, 0, -128, 127), *args[1:])


def add_fake_quant(convs: list, act_amax: list[float]) -> None:
    """Fake-quantise each convolution's input (fixed scale) and weight (scale follows the weight)."""
    for m, amax in zip(convs, act_amax):
        m.register_buffer("act_scale", torch.tensor(amax / 127.0))
        m.register_forward_pre_hook(_quantise_input)
        parametrize.register_parametrization(m, "weight", _ChannelFakeQuant())


def freeze_weight_scales(convs: list) -> None:
    """Replace the moving weight scales by constants (the export needs constant QDQ scales)."""
    for m in convs:
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        parametrize.register_parametrization(m, "weight", _ChannelFakeQuant(_weight_scale(m.weight)))


def finetune(model, reference, views, steps: int, lr: float = 2e-5, batch: int = 12, seed: int = 0,
             log: Callable = print) -> list[float]:
    """Distil the FP32 reference into the fake-quantised model on the calibration views (drone
    views through the drone tower, tiles through the satellite tower). Returns the loss per step."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        loss = 0.0
        for tower, images in (("drone", views.drone), ("sat", views.sat)):
            x = torch.from_numpy(images[rng.choice(len(images), min(batch, len(images)), replace=False)])
            with torch.no_grad():
                target = reference.tower(tower)(x)
            loss = loss + (1 - F.cosine_similarity(model.tower(tower)(x), target)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == steps - 1:
            log(f"qat step {step + 1}/{steps}: 1 - cos {losses[-1] / 2:.5f} ({time.perf_counter() - t0:.0f} s)")
    return losses


def quantise_aware(model, views, steps: int, lr: float = 2e-5, log: Callable = print) -> dict:
    """Fake-quantise `model` (TwoTowers, changed in place, eval mode) calibrated on `views`
    (precision.Views), fine-tune it `steps` steps against a frozen FP32 copy, and freeze its
    weight scales for export. Returns what was done (for the model card)."""
    model.eval()
    reference = copy.deepcopy(model).eval()
    convs = quantisable_convs(model)
    amax = calibrate_activations(model, convs, views)
    add_fake_quant(convs, amax)
    losses = finetune(model, reference, views, steps, lr, log=log) if steps else []
    freeze_weight_scales(convs)
    return {"method": "qat", "steps": steps, "lr": lr, "calibration_views": len(views),
            "activation_range_views": min(ACT_RANGE_VIEWS, len(views)),
            "quantised_convolutions": len(convs), "activation_percentile": ACT_PERCENTILE * 100,
            "final_loss": losses[-1] / 2 if losses else None,
            "format": "QDQ from torch fake quantisation: per-channel symmetric int8 weights, symmetric int8 "
                      "activations; stem, depthwise convolutions and head in FP32",
            "tool": "torch fake_quantize_* + torch.onnx.export"}


def fold_weight_quantisation(onnx_path) -> int:
    """Store each fake-quantised weight as INT8 (in place): every QuantizeLinear whose input is a
    constant FP32 weight is computed once, its INT8 result becomes the initializer its
    DequantizeLinear reads, and the FP32 weight goes. The graph computes the same values (the
    rounding is QuantizeLinear's, half to even, clipped to -128..127) in a file about a quarter
    the size; it is the form onnxruntime's quantiser writes and TensorRT reads. Returns the
    number of weights folded."""
    onnx = require("onnx")
    numpy_helper = onnx.numpy_helper
    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {o: n for n in graph.node if n.op_type == "Constant" for o in n.output}
    consumers: dict = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    folded = []
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]:
        dqs = consumers.get(q.output[0], [])
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear" or q.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[q.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[q.input[1]]).astype(np.float32)
        # The zero point: a Constant node (torch's export), an initializer (ModelOpt's), or none.
        zp = q.input[2] if len(q.input) > 2 else ""
        zero = (numpy_helper.to_array(consts[zp].attribute[0].t) if zp in consts
                else numpy_helper.to_array(inits[zp]) if zp in inits else 0)
        axis = next((a.i for a in q.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        shape[axis] = -1
        if scale.ndim == 1:
            scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
        wq = np.clip(np.rint(w / scale) + zero, -128, 127).astype(np.int8)
        name = q.input[0] + "_int8"
        graph.initializer.append(numpy_helper.from_array(wq, name))
        dqs[0].input[0] = name
        folded.append(q)
    for q in folded:
        graph.node.remove(q)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))
    return len(folded)
