"""Local-feature matching across dates and on real drone photos (docs/matching.md)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from skyfix.bench.common import SHARED


def match_scores(matcher, pairs, gsd_m: float, crop_gsd_m: float, radius_m: float,
                 min_inliers: int) -> dict:
    """Run matcher.match on each pair: inliers, success (centre within MATCH_SUCCESS_PX map
    pixels of the truth with >= min_inliers), ms per pair (extraction + matching + fit), and
    the inliers found at the wrong place (what chance alone reaches)."""
    from skyfix.render.views import match_error_px, match_is_right
    inliers, ok, ms, null, err_px = [], [], [], [], []
    for crop, (te, tn), prior, wrong in pairs:
        t0 = time.perf_counter()
        described = matcher.describe(crop)
        m = matcher.match(crop, crop_gsd_m, prior, radius_m, described=described)
        ms.append((time.perf_counter() - t0) * 1e3)
        inliers.append(0 if m is None else m.inliers)
        ok.append(match_is_right(m, (te, tn), gsd_m, min_inliers))
        if m is not None and m.inliers >= min_inliers:
            err_px.append(match_error_px(m, (te, tn), gsd_m))
        if wrong is not None:
            w = matcher.match(crop, crop_gsd_m, wrong, radius_m, described=described)
            null.append(0 if w is None else w.inliers)
    return {"inliers_median": float(np.median(inliers)), "success": float(np.mean(ok)),
            "accepted_err_px_median": float(np.median(err_px)) if err_px else float("nan"),
            "ms_p50": float(np.percentile(ms, 50)), "n": len(ok),
            "null_p99": float(np.percentile(null, 99)) if null else float("nan"),
            "null_max": int(max(null)) if null else 0}


def match_cases(shared: Path = SHARED):
    """(name, map image, frame image, source GSD m) for the matching benchmark."""
    lev = shared / "levircd"
    cases = [(f"LEVIR-CD {i} A->B", lev / "A" / f"test_{i}.png", lev / "B" / f"test_{i}.png", 0.5)
             for i in range(1, 6)]
    cases.append(("LEVIR-CD 1 A->A (same date)", lev / "A" / "test_1.png", lev / "A" / "test_1.png", 0.5))
    colorado = shared / "colorado_z18" / "mosaic_epsg3857.tif"
    cases.append(("Colorado (same date)", colorado, colorado, None))
    return cases


def _open_method(method: str, features_model: str, dense_model: str):
    """The extractor `method`, a learned one from its own model folder."""
    from skyfix.edge.features import open_extractor
    return open_extractor(method, {"xfeat": features_model, "dense": dense_model}.get(method))


def bench_match(methods=("sift", "orb", "xfeat"), pairs: int = 40, rotation_deg: float = 15.0,
                features_model: str = "models/xfeat", shared: Path = SHARED, dense_model: Optional[str] = None,
                cases: str = "") -> str:
    """Markdown table: per case and method, median inliers, success rate, ms per pair. cases:
    comma-separated beginnings of case names to run (all when empty)."""
    from skyfix.config import NavConfig, TilesConfig
    from skyfix.edge.refine import MapMatcher
    from skyfix.render.views import match_pairs
    from skyfix.tiles.features import features_in_memory
    from skyfix.tiles.ortho import load_canvas
    nav = NavConfig()
    rows = [f"| case (rotation +-{rotation_deg:g} deg, scale 0.8-1.25, {pairs} pairs) | method | median inliers | "
            f"success | centre error px (accepted, median) | inliers at a wrong place p99 / max | ms/pair p50 |",
            "|---|---|---|---|---|---|---|"]
    wanted = [c for c in cases.split(",") if c]
    for name, map_path, frame_path, src_gsd in match_cases(shared):
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        map_canvas = load_canvas(map_path, source_gsd_m=src_gsd)
        frame_canvas = map_canvas if frame_path == map_path else load_canvas(
            frame_path, source_gsd_m=src_gsd, frame=map_canvas.frame)
        for method in methods:
            ex = _open_method(method, features_model, dense_model)
            mf = features_in_memory(map_canvas, ex, TilesConfig().features_per_mpx)
            matcher = MapMatcher(mf, ex, map_canvas.gsd_m, nav.crop_features)
            r = match_scores(matcher, match_pairs(map_canvas, frame_canvas, pairs, rotation_deg),
                             map_canvas.gsd_m, map_canvas.gsd_m, 30.0, nav.min_inliers)
            rows.append(f"| {name} | {method} | {r['inliers_median']:.0f} | {100 * r['success']:.0f} % | "
                        f"{r['accepted_err_px_median']:.1f} | {r['null_p99']:.0f} / {r['null_max']} | {r['ms_p50']:.0f} |")
    return "\n".join(rows)


def bench_sues(methods=("sift", "orb", "xfeat"), features_model: str = "models/xfeat", dense_model: Optional[str] = None,
               shared: Path = SHARED, size_px: int = 512, rotations: int = 8) -> str:
    """Markdown table: per real drone photo of SUES-200 scene A, the inliers of a RANSAC
    homography against scene A's satellite image (best of `rotations` turns of the photo,
    since its heading is unknown), per extractor; scene B's photos (another place) against the
    same image give what chance reaches. Photos and satellite image are resized to size_px:
    the photos are oblique, with no attitude to rectify them, so this is a harder test than
    the onboard one."""
    import cv2
    from skyfix.edge.features import match_descriptors
    from skyfix.edge.refine import MATCH_RULES
    from skyfix.tiles.ortho import read_image_px
    root = shared / "sues200"
    sat = read_image_px(root / "sceneA" / "satellite" / "s0.png", size_px)
    photos = sorted((root / "sceneA" / "drone").glob("*.jpg")) + sorted((root / "sceneB" / "drone").glob("*.jpg"))
    extractors = {m: _open_method(m, features_model, dense_model) for m in methods}
    sat_f = {m: ex.extract(sat, 2000) for m, ex in extractors.items()}
    rows = ["| photo | " + " | ".join(f"{m} inliers" for m in methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for path in photos:
        img = read_image_px(path, size_px)
        cells = []
        for m, ex in extractors.items():
            best = 0
            for r in range(rotations):
                turn = cv2.getRotationMatrix2D(((size_px - 1) / 2, (size_px - 1) / 2), 360.0 * r / rotations, 1.0)
                f = ex.extract(cv2.warpAffine(img, turn, (size_px, size_px)), 2000)
                iq, it = match_descriptors(f.desc, sat_f[m].desc, ex.binary, *MATCH_RULES[m])
                if iq.size >= 8:
                    _, mask = cv2.findHomography(f.xy_px[iq], sat_f[m].xy_px[it], cv2.USAC_MAGSAC, 4.0)
                    best = max(best, 0 if mask is None else int(mask.sum()))
            cells.append(str(best))
        scene = "A" if "sceneA" in str(path) else "B (other place: chance)"
        rows.append(f"| {scene} {path.stem} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
