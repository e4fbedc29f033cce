"""A coarse position from retrieval alone: the peak of a weighted Gaussian kernel density over the
top-k retrieved tiles (seed 003, "k-NN density estimation": f(x) = sum_i w_i N(x; x_i, sigma^2 I),
w_i = s_i^m, the point of highest density is the output).

Where several of the best tiles lie together, the peak sits among them even when the single best
tile is elsewhere. It is a guess, never a fix: onboard it orders where a lost vehicle is looked for
first, and it is reported with its spread; only a verified map match gives a fix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MEAN_SHIFT_STEPS = 30


@dataclass(frozen=True)
class CoarsePosition:
    east_m: float
    north_m: float
    spread_m: float   # how far the retrieved places scatter around the peak (1 sigma, m)
    k: int            # tiles the density was made of


def density_position(east_m: np.ndarray, north_m: np.ndarray, scores: np.ndarray, sigma_m: float,
                     power: float = 10.0) -> CoarsePosition:
    """The density peak of k retrieved places (east_m, north_m: k positions m; scores: their
    similarities, higher is better) with Gaussian kernels of sigma_m and weights
    max(score, 0)^power (seed 003: m = 10). The peak is found by mean shift from every place,
    keeping the densest end point; spread_m is the weighted RMS distance of the places from it,
    combined with sigma_m. Shapes: 1-D arrays of the same length k >= 1."""
    xy = np.column_stack([np.asarray(east_m, float), np.asarray(north_m, float)])
    s = np.clip(np.asarray(scores, float), 0.0, None)
    w = s ** power if s.max() > 0 else np.ones(len(s))
    w = w / w.sum()

    def density(p: np.ndarray) -> np.ndarray:  # p: n x 2
        d2 = ((p[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
        return (np.exp(-0.5 * d2 / sigma_m ** 2) * w).sum(axis=1)

    points = xy.copy()
    for _ in range(MEAN_SHIFT_STEPS):  # each point climbs the density (Gaussian mean shift)
        d2 = ((points[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
        k = np.exp(-0.5 * d2 / sigma_m ** 2) * w
        moved = (k @ xy) / np.maximum(k.sum(axis=1, keepdims=True), 1e-300)
        if np.allclose(moved, points, atol=1e-3):
            points = moved
            break
        points = moved
    peak = points[int(np.argmax(density(points)))]
    spread = float(np.sqrt(sigma_m ** 2 + (w * ((xy - peak) ** 2).sum(axis=1)).sum()))
    return CoarsePosition(float(peak[0]), float(peak[1]), spread, len(xy))
