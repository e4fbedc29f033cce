"""A generated aerial-looking map (fields, roads, buildings, trees), for running the demo on a
fresh clone with no imagery at hand. Seeded, so every run flies over the same place."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def synthetic_map(size_px: int = 2000, seed: int = 0) -> np.ndarray:
    """uint8 RGB size_px x size_px x 3 (meant as 0.5 m/px: 1 km square)."""
    rng = np.random.default_rng(seed)
    h = w = size_px
    # Fields: a Voronoi partition, each cell its own crop colour and furrow direction.
    n_fields = 60
    seeds = rng.uniform(0, size_px, (n_fields, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    best = np.full((h, w), np.inf, np.float32)
    label = np.zeros((h, w), np.int64)
    for i, (sx, sy) in enumerate(seeds):  # running minimum: one distance map in memory at a time
        d = (xx - sx) ** 2 + (yy - sy) ** 2
        closer = d < best
        best[closer], label[closer] = d[closer], i
    palette = rng.uniform([60, 70, 30], [170, 160, 90], (n_fields, 3))
    img = palette[label].astype(np.float32)
    angle = rng.uniform(0, np.pi, n_fields)[label]
    period = rng.uniform(4, 14, n_fields)[label]
    img += (12 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period))[..., None]
    # Texture at several scales so every patch has its own keypoints.
    for scale, amp in ((3, 18), (12, 14), (48, 10)):
        noise = rng.normal(0, 1, (h // scale + 1, w // scale + 1, 1)).astype(np.float32)
        img += amp * cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    # Field edges (hedges).
    edges = cv2.morphologyEx((label % 251).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    img[edges] = (45, 60, 35)
    # Roads: random polylines, light grey.
    for _ in range(9):
        pts = np.cumsum(rng.normal(0, 120, (8, 2)), axis=0) + rng.uniform(0, size_px, 2)
        cv2.polylines(img, [pts.astype(np.int32)], False, (185, 180, 170), int(rng.integers(6, 14)), cv2.LINE_AA)
    # Buildings with shadows, in clusters.
    for cx, cy in rng.uniform(100, size_px - 100, (14, 2)):
        for _ in range(int(rng.integers(4, 14))):
            x, y = int(cx + rng.normal(0, 60)), int(cy + rng.normal(0, 60))
            bw, bh = int(rng.integers(12, 40)), int(rng.integers(12, 40))
            cv2.rectangle(img, (x + 5, y + 5), (x + bw + 5, y + bh + 5), (40, 40, 45), -1)
            roof = rng.uniform(90, 220, 3)
            cv2.rectangle(img, (x, y), (x + bw, y + bh), roof.tolist(), -1)
    # Trees: dark blobs, some in lines along the roads' neighbourhood.
    for x, y in rng.uniform(0, size_px, (1500, 2)):
        r = int(rng.integers(3, 9))
        cv2.circle(img, (int(x), int(y)), r, (30 + rng.uniform(0, 25), 60 + rng.uniform(0, 30), 30), -1, cv2.LINE_AA)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_synthetic_map(path: str | Path, size_px: int = 2000, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(synthetic_map(size_px, seed), cv2.COLOR_RGB2BGR))
    return path
