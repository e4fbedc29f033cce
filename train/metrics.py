"""Retrieval metrics with several positives per query (numpy only).

S: similarity Q x G (higher is better); P: boolean Q x G, True where gallery item g is a correct
answer for query q. Queries with no positive are left out (and counted).
"""
from __future__ import annotations

import numpy as np


def positive_ranks(S: np.ndarray, P: np.ndarray) -> list[np.ndarray]:
    """Per query, the 0-based ranks of its positives in the gallery sorted by score (ties: id order)."""
    order = np.argsort(-S, axis=1, kind="stable")
    rel = np.take_along_axis(P, order, axis=1)
    return [np.flatnonzero(r) for r in rel]


def average_precision(ranks: np.ndarray) -> float:
    """AP of one query from the sorted 0-based ranks of its positives."""
    if ranks.size == 0:
        return float("nan")
    return float(np.mean(np.arange(1, ranks.size + 1) / (ranks + 1)))


def anmrr(ranks: list[np.ndarray]) -> float:
    """Average Normalized Modified Retrieval Rank (MPEG-7; the measure of seed 000, DeepCVIR),
    0 = every ground-truth item ranked first, 1 = none found. ranks: per query the sorted
    0-based ranks of its NG(q) ground-truth items (here: every tile overlapping the view).

    K(q) = min(4 NG(q), 2 GTM), GTM the largest NG; a rank beyond K(q) counts as 1.25 K(q);
    AVR = mean rank (1-based); MRR = AVR - 0.5 - NG/2; NMRR = MRR / (1.25 K - 0.5 - NG/2)."""
    if not ranks:
        return float("nan")
    gtm = max(len(r) for r in ranks)
    nmrr = []
    for r in ranks:
        ng = len(r)
        k = min(4 * ng, 2 * gtm)
        rank1 = r.astype(float) + 1
        avr = float(np.mean(np.where(rank1 <= k, rank1, 1.25 * k)))
        nmrr.append((avr - 0.5 - ng / 2) / (1.25 * k - 0.5 - ng / 2))
    return float(np.mean(nmrr))


def precision_at(ranks: list[np.ndarray], k: int) -> float:
    """P@K: the mean share of the top K that are ground-truth items. (Seed 000 calls "P@K" the
    share of queries with a ground-truth item in the top K: that is R@K here.)"""
    return float(np.mean([np.sum(r < k) / k for r in ranks])) if ranks else float("nan")


def retrieval_metrics(S: np.ndarray, P: np.ndarray, ks=(1, 5, 10)) -> dict:
    """{'r1','r5','r10','r1pct','ap','p1','p5','p10','anmrr','n_queries','n_without_positive'};
    fractions in 0..1.

    R@K: share of queries with a positive in the top K; R@1% uses K = max(1, round(1 % of G)).
    P@K and ANMRR: `precision_at`, `anmrr`.
    """
    S, P = np.asarray(S, float), np.asarray(P, bool)
    keep = P.any(axis=1)
    ranks = positive_ranks(S[keep], P[keep])
    first = np.array([r[0] for r in ranks]) if ranks else np.zeros(0)
    out = {f"r{k}": float(np.mean(first < k)) if ranks else float("nan") for k in ks}
    k1pct = max(1, int(round(0.01 * S.shape[1])))
    out["r1pct"] = float(np.mean(first < k1pct)) if ranks else float("nan")
    out["ap"] = float(np.mean([average_precision(r) for r in ranks])) if ranks else float("nan")
    out.update({f"p{k}": precision_at(ranks, k) for k in ks})
    out["anmrr"] = anmrr(ranks)
    out["n_queries"] = int(keep.sum())
    out["n_without_positive"] = int((~keep).sum())
    return out
