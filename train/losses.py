"""Metric-learning losses for the drone and satellite towers (one config key chooses).

Inputs are L2-normalised embeddings, row i of `drone` and row i of `sat` showing the same
location (a batch never holds two samples of one location, see the sampler). Distances are
Euclidean between unit vectors: d = sqrt(2 - 2 cos).
"""
from __future__ import annotations

import math

from skyfix.errors import SkyfixError, require

torch = require("torch")
nn = torch.nn
F = torch.nn.functional

LOSSES = ("infonce", "soft_triplet", "mhnw")


def _distances(a, b):
    """N x M Euclidean distances between unit vectors (clamped: no NaN gradient at 0)."""
    return torch.sqrt(torch.clamp(2.0 - 2.0 * a @ b.T, min=1e-12))


class InfoNCE(nn.Module):
    """Symmetric InfoNCE with a learnable temperature (Sample4Geo/CLIP style).

    loss = (CE(s * D S^T, I) + CE(s * S D^T, I)) / 2, with s = exp(logit_scale) clamped to 100.
    """

    def __init__(self, init_temperature: float = 0.07):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(self, drone, sat):
        scale = self.logit_scale.exp().clamp(max=100.0)
        logits = scale * drone @ sat.T
        target = torch.arange(len(drone), device=drone.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class SoftTriplet(nn.Module):
    """Soft-margin triplet over all in-batch triplets (Vo's exhaustive mini-batch with the
    distance-based logistic loss): mean over (a, p, n) of log(1 + exp(alpha (d_ap - d_an))),
    in both directions (drone anchors against satellite negatives and vice versa)."""

    def __init__(self, alpha: float = 10.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, drone, sat):
        d = _distances(drone, sat)
        pos = d.diagonal()
        off = ~torch.eye(len(d), dtype=torch.bool, device=d.device)
        d2s = F.softplus(self.alpha * (pos[:, None] - d))[off]   # anchor drone i, negative sat j
        s2d = F.softplus(self.alpha * (pos[None, :] - d))[off]   # anchor sat j, negative drone i
        return 0.5 * (d2s.mean() + s2d.mean())


class MHNW(nn.Module):
    """AENet's multiple-hard-negative weighted soft-margin loss (seed 002, eqs. 3.1-3.3).

    For anchor a, the hard negatives are those with d_an < d_ap; with more than one, each
    contributes w_i ln(1 + exp(alpha (d_ap - d_an_i))), w_i = D_i / max D, D_i = d_ap - d_an_i,
    and the sum is divided by the number of hard negatives in the batch (eq. 3.3). An anchor
    with at most one hard negative uses the weighted soft-margin ranking loss of eq. 3.1:
    ln(1 + exp(alpha (d_ap - min_n d_an))), counted once. Drone anchors against satellite
    negatives; `symmetric` adds the satellite -> drone direction.
    """

    def __init__(self, alpha: float = 10.0, symmetric: bool = True):
        super().__init__()
        self.alpha, self.symmetric = alpha, symmetric

    def _one_way(self, d):
        n = len(d)
        pos = d.diagonal()
        neg = d.masked_fill(torch.eye(n, dtype=torch.bool, device=d.device), float("inf"))
        terms, count = [], 0
        for a in range(n):
            hard = neg[a] < pos[a]
            if int(hard.sum()) > 1:
                diff = pos[a] - neg[a][hard]
                w = (diff / diff.max()).detach()  # weights steer, they are not optimised
                terms.append((w * F.softplus(self.alpha * diff)).sum())
                count += int(hard.sum())
            else:
                terms.append(F.softplus(self.alpha * (pos[a] - neg[a].min())))
                count += 1
        return torch.stack(terms).sum() / count

    def forward(self, drone, sat):
        d = _distances(drone, sat)
        loss = self._one_way(d)
        return 0.5 * (loss + self._one_way(d.T)) if self.symmetric else loss


class PartClassifiers(nn.Module):
    """LPN instance loss (seed 001): one linear classifier over location ids per square-ring
    part, shared by both views; the loss is the mean cross-entropy over parts and views.

    part_features: N x (P * C) from `Tower.features` (P rings of C channels each).
    """

    def __init__(self, parts: int, channels: int, n_classes: int):
        super().__init__()
        self.parts, self.channels = parts, channels
        self.heads = nn.ModuleList(nn.Linear(channels, n_classes) for _ in range(parts))

    def forward(self, part_features, labels):
        x = part_features.view(len(part_features), self.parts, self.channels)
        return torch.stack([F.cross_entropy(h(x[:, i]), labels) for i, h in enumerate(self.heads)]).mean()


def make_loss(name: str, **kw) -> nn.Module:
    if name == "infonce":
        return InfoNCE(kw.get("init_temperature", 0.07))
    if name == "soft_triplet":
        return SoftTriplet(kw.get("alpha", 10.0))
    if name == "mhnw":
        return MHNW(kw.get("alpha", 10.0))
    raise SkyfixError(f"unknown loss '{name}'; choose one of {', '.join(LOSSES)}")
