"""Learned cross-modal hashing (seed 004: label-consistent hashing and the deep hashing it cites).

A hash head maps the towers' embedding to B relaxed bits, tanh(W x + b); onboard the bits are
sign(W x + b) (`pack/hashing.py`). One head serves both modalities: the towers already put a
drone view and its tile in one space, and a shared head keeps a Hamming distance between them
meaningful. The loss (`hash_loss`) has the seed's label-consistent term, a cross-modal pairwise
likelihood where pairs of the same place are similar (DCMH's form), and a term that keeps the
order of the float similarities, which an index re-ranked by the exact vectors needs: the
codes have to propose the float neighbours, not only the true place.

Two ways to train it:
- with the towers: `train.hash_bits > 0` adds the head and its loss to `skyfix train`;
- after them, on a deployed model (`skyfix train-hash`): the towers are frozen, so pairs are
  embedded once by the model's ONNX towers and the head alone is fitted, in seconds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from skyfix.errors import SkyfixError, require
from skyfix.pack.hashing import HashProjection

torch = require("torch")
F = torch.nn.functional

PAIR_LOGIT_SCALE = 10.0     # logit of a pair = scale * (code similarity - 1/2): similarity 1 -> +5, 0 -> -5
ORDER_SHARPNESS = 4.0       # softmax of standardised similarities: weights the nearest few per cent
PAIR_WEIGHT, ORDER_WEIGHT, QUANT_WEIGHT, BALANCE_WEIGHT = 1.0, 0.3, 0.01, 0.1


class HashHead(torch.nn.Module):
    """B relaxed bits in (-1, 1) of N x D embeddings: tanh(W x + b), N x B."""

    def __init__(self, dim: int, bits: int):
        super().__init__()
        if bits <= 0 or bits % 8:
            raise SkyfixError(f"hash bits must be a positive multiple of 8, got {bits}")
        self.linear = torch.nn.Linear(dim, bits)

    def forward(self, emb):
        return torch.tanh(self.linear(emb))

    def init_from(self, emb: np.ndarray, seed: int = 0) -> None:
        """Random orthogonal directions, thresholds at the embeddings' mean (float32 N x D): a
        balanced random-rotation code to start from."""
        rng = np.random.default_rng(seed)
        bits, dim = self.linear.weight.shape
        q, _ = np.linalg.qr(rng.standard_normal((dim, max(dim, bits))))
        w = q[:, :bits].T if bits <= dim else rng.standard_normal((bits, dim)) / np.sqrt(dim)
        w = w * 8.0  # unit-vector embeddings: scale so tanh starts away from its linear part
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            self.linear.bias.copy_(torch.from_numpy(-(w @ emb.mean(0)).astype(np.float32)))

    def projection(self, model_id: str = "") -> HashProjection:
        """The head as onboard code uses it (numpy; sign of the same linear map)."""
        return HashProjection(self.linear.weight.detach().cpu().numpy(),
                              self.linear.bias.detach().cpu().numpy(), model_id)


def _neighbour_order_loss(code_sim, float_sim, sharpness: float = ORDER_SHARPNESS):
    """KL divergence, row by row, from the float similarities' neighbour distribution to the
    codes' (N x M each): both rows standardised, then softmax(sharpness * z). The sharpness
    weights the nearest neighbours, the ones a re-ranked shortlist must hold."""
    def z(a):
        return (a - a.mean(1, keepdim=True)) / (a.std(1, keepdim=True) + 1e-6)
    target = F.softmax(sharpness * z(float_sim), dim=1)
    return F.kl_div(F.log_softmax(sharpness * z(code_sim), dim=1), target, reduction="batchmean")


def hash_loss(h_drone, h_sat, labels, emb_drone, emb_sat, pair_weight: float = PAIR_WEIGHT,
              order_weight: float = ORDER_WEIGHT):
    """Loss of relaxed codes h (N x B, in (-1, 1)) of N drone views and their N tiles, labelled by
    place (N); emb_* are the float embeddings (N x D, unit) whose order the codes keep.

    - label-consistent pairs: every drone i with every tile j, similar when labels agree, by a
      logistic likelihood of the code similarity <h_i, h_j> / B;
    - order: each row of code similarities (drone -> tiles, tile -> tiles) ranks the nearest
      neighbours as the float cosines of the same row do (`_neighbour_order_loss`);
    - quantisation (|h| near 1) and bit balance (each bit on half the batch)."""
    bits = h_drone.shape[1]
    sim = h_drone @ h_sat.T / bits
    same = (labels[:, None] == labels[None, :]).float()
    pair = F.binary_cross_entropy_with_logits(PAIR_LOGIT_SCALE * (sim - 0.5), same)
    order = _neighbour_order_loss(sim, emb_drone @ emb_sat.T) + \
        _neighbour_order_loss(h_sat @ h_sat.T / bits, emb_sat @ emb_sat.T)
    h = torch.cat([h_drone, h_sat])
    quant = ((h.abs() - 1.0) ** 2).mean()
    balance = (h.mean(0) ** 2).mean()
    return pair_weight * pair + order_weight * order + QUANT_WEIGHT * quant + BALANCE_WEIGHT * balance


def fit_hash_head(drone_emb: np.ndarray, sat_emb: np.ndarray, labels: np.ndarray, bits: int,
                  steps: int = 1500, batch: int = 512, lr: float = 3e-3, seed: int = 0, log=None,
                  **weights) -> HashHead:
    """Fit a head on frozen towers' embeddings: float32 N x D drone views, their N tiles, and
    the N place labels (pairs of the same place share a label). `weights`: hash_loss's
    pair_weight / order_weight. Returns the trained head."""
    if not (len(drone_emb) == len(sat_emb) == len(labels)) or len(labels) < 2:
        raise SkyfixError(f"hash head: {len(drone_emb)} drone, {len(sat_emb)} tile embeddings and "
                          f"{len(labels)} labels; need as many of each, at least 2")
    torch.manual_seed(seed)
    head = HashHead(drone_emb.shape[1], bits)
    head.init_from(np.concatenate([drone_emb, sat_emb]), seed)
    d, s, y = (torch.from_numpy(np.ascontiguousarray(a)) for a in (drone_emb.astype(np.float32),
                                                                   sat_emb.astype(np.float32), labels))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(len(y), size=min(batch, len(y)), replace=False))
        loss = hash_loss(head(d[idx]), head(s[idx]), y[idx], d[idx], s[idx], **weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log and (step % 500 == 0 or step == steps - 1):
            log(f"hash head {bits} bits: step {step + 1}/{steps} loss {loss.item():.4f}")
    return head.eval()


def embed_pairs(pairs, drone, sat, n: int, seed: int = 0, progress: bool = True) -> tuple:
    """Embed n training pairs (`train.data` pairs: drone view, tile, place label) with the two
    towers (embedders with .embed(uint8 N x H x W x 3) -> float32 N x D). Places are drawn
    with repeats, each draw a new drone view of the place. Returns (drone N x D, sat N x D, labels N)."""
    from tqdm import tqdm
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pairs), size=n, replace=n > len(pairs))
    d, s, y = [], [], []
    for start in tqdm(range(0, n, 32), desc="embed pairs", unit="batch", disable=not progress):
        items = []
        for k, i in enumerate(idx[start:start + 32]):
            pairs.epoch = start + k  # a new drone view of the place each draw
            items.append(pairs[int(i)])
        d.append(drone.embed(np.stack([it[0] for it in items])))
        s.append(sat.embed(np.stack([it[1] for it in items])))
        y += [int(it[2]) for it in items]
    return np.concatenate(d), np.concatenate(s), np.asarray(y, np.int64)


def code_recall_at_10(projection: HashProjection, database: np.ndarray, queries: np.ndarray,
                      shortlist: Optional[int] = None) -> float:
    """Recall@10 against exact float search of the Hamming top 10 (or of its top `shortlist`
    re-ranked by the float vectors): float32 M x D database, Q x D queries."""
    from skyfix.pack.hashing import HashIndex
    exact = np.argsort(-(queries @ database.T), axis=1)[:, :10]
    cand = HashIndex.build(projection, database).search(queries, shortlist or 10)[1]
    if shortlist:
        cand = np.stack([c[np.argsort(-(database[c] @ q))[:10]] for q, c in zip(queries, cand)])
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cand[:, :10].tolist(), exact.tolist())]))


def train_hash_heads(full_cfg, drone, sat, bits_list, pairs: int = 4000, steps: int = 1500, seed: int = 0,
                     log=print, progress: bool = True) -> tuple[list, dict]:
    """`skyfix train-hash`: heads of each size in bits_list fitted on a model's frozen towers
    (`drone`, `sat`: its embedders) with pairs of the training config's areas (`train.ortho` /
    `train.scenes`, as `skyfix train`), and checked on its validation areas. Returns
    (HashProjections, validation report: per bits, drone -> tile recall@10 against exact
    search, Hamming top 10 and top 200 re-ranked)."""
    from skyfix.train.trainer import build_datasets
    train_pairs, val_pairs, info = build_datasets(full_cfg)
    log(f"train-hash: {info['train']}; validation: {info['val']}")
    d, s, y = embed_pairs(train_pairs, drone, sat, pairs, seed, progress)
    vd, vs, _ = embed_pairs(val_pairs, drone, sat, min(pairs, max(500, len(val_pairs))), seed + 1, progress)
    heads, report = [], {}
    for bits in bits_list:
        projection = fit_hash_head(d, s, y, int(bits), steps, seed=seed, log=log).projection(drone.model_id)
        report[int(bits)] = {"recall10_hamming": code_recall_at_10(projection, vs, vd),
                             "recall10_reranked200": code_recall_at_10(projection, vs, vd, shortlist=200)}
        log(f"{bits} bits, validation ({len(vs)} tiles): recall@10 vs exact "
            f"{report[int(bits)]['recall10_hamming']:.3f} by Hamming, "
            f"{report[int(bits)]['recall10_reranked200']:.3f} with the top 200 re-ranked")
        heads.append(projection)
    return heads, report


def export_hash_head(checkpoint, model_dir) -> Optional[HashProjection]:
    """The hash head trained with the towers (`train.hash_bits`), from `checkpoint` (best.pt)
    into model_dir/hash.npz beside the exported towers; None when the run trained none."""
    import yaml
    from skyfix.pack.hashing import HASH_FILE
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = (blob.get("extra") or {}).get("hash_head") or {}
    if not state:
        return None
    head = HashHead(state["linear.weight"].shape[1], state["linear.weight"].shape[0])
    head.load_state_dict(state)
    card = yaml.safe_load((Path(model_dir) / "model.yaml").read_text())
    projection = head.projection(str(card.get("model_id", "")))
    projection.save(Path(model_dir) / HASH_FILE)
    return projection
