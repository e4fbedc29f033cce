"""FP16 copies of the learned local-feature extractors (XFeat, skyfix's dense features), gated on
matching parity with their FP32 source, as the towers are (`export/precision.py`).

    skyfix export fp16 --model models/xfeat --calib MAP [--frames-from OTHER_DATE] --out models/xfeat-fp16

The conversion is the towers' (`convert_fp16`: onnxruntime's float16 converter, uint8 input and
float32 outputs kept, the nodes after the last convolution kept in FP32: softmax, the 5 x 5
local-maximum selection and the descriptor normalisation). What a local-feature extractor must
keep is not an embedding but the fixes it gives, so the gate scores matching on crops with a
known answer (`render.views.match_pairs`: rotation, scale, offset and photometric change; from
another date when `--frames-from` is given):

- onboard: FP16 crop features against map features computed in FP32 (a pack built before);
- both: FP16 crop features against FP16 map features;

per case the success rate (crop centre within 3 map px with at least `nav.min_inliers`), its
drop from FP32, and the agreement of verdicts with FP32 pair by pair; also the share of FP32
keypoints the FP16 copy finds again, and the cosine between their descriptors.

Across dates most verdicts sit near the inlier threshold, where any change flips some of them,
both ways: on LEVIR-CD 1 A->B, +-1 grey level of noise on the crop (below any camera's own noise)
changed 19 of 100 FP32 verdicts. So the towers' thresholds are applied as far as such pairs can
carry them:
- keypoints found again at least `MIN_TOP1_AGREEMENT` (no threshold blurs this one);
- verdict agreement at least `MIN_TOP1_AGREEMENT`, or at least what the FP32 extractor keeps
  under that +-1 grey level on the same pairs (the noise floor), whichever is lower;
- a success drop above `MAX_R1_DROP` only when it is not chance: the changed verdicts go
  against FP16 more often than a fair coin would (one-sided sign test, p < `SIGN_TEST_P`).
A broken conversion moves keypoints and descriptors and fails; an FP16 copy that disturbs
matching less than one grey level does passes.

The copy keeps the FP32 weights' identity (`edge.features.weights_identity`): packs built with
either are accepted by both, which is what the gate is there to make safe.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import yaml

from skyfix.artifacts import atomic_directory, file_digest
from skyfix.errors import SkyfixError
from skyfix.export.precision import MAX_R1_DROP, MIN_TOP1_AGREEMENT, _canvas_and_tile, convert_fp16

CARD = "features.yaml"
KEYPOINT_SAME_PX = 0.5  # an FP16 keypoint this close to an FP32 one is the same keypoint
SIGN_TEST_P = 0.05


def losses_p_value(losses: int, gains: int) -> float:
    """P(at least `losses` of the losses + gains changed verdicts go against the copy) if each went
    either way with probability 1/2: the one-sided sign (McNemar exact) test."""
    n = losses + gains
    return 1.0 if n == 0 else sum(math.comb(n, k) for k in range(losses, n + 1)) / 2 ** n


def read_features_card(model_dir: Path) -> dict:
    """features.yaml of a learned extractor's folder (`skyfix export features`, `train-features`)."""
    path = Path(model_dir) / CARD
    card = yaml.safe_load(path.read_text()) if path.is_file() else None
    if not isinstance(card, dict) or card.get("extractor") not in ("xfeat", "dense"):
        raise SkyfixError(f"{path} is not a local-feature card (written by `skyfix export features` or "
                          "`skyfix train-features`)")
    return card


def load_canvases(calib, frames_from=None, source_gsd_m: Optional[float] = None):
    """(map canvas, frame canvas) for the parity pairs: the map from a pack or orthophoto; the
    frames from the same map, or from an image of another date covering the same ground."""
    from skyfix.tiles.ortho import load_canvas
    map_canvas = _canvas_and_tile(calib, source_gsd_m)[0]
    if frames_from is None:
        return map_canvas, map_canvas
    return map_canvas, load_canvas(frames_from, source_gsd_m=source_gsd_m, frame=map_canvas.frame)


def _keypoint_agreement(ref, got) -> tuple[float, np.ndarray]:
    """(share of ref keypoints that got has within KEYPOINT_SAME_PX, cosines of those pairs)."""
    if len(ref) == 0 or len(got) == 0:
        return (1.0 if len(ref) == len(got) else 0.0), np.ones(0)
    d2 = ((ref.xy_px[:, None, :] - got.xy_px[None, :, :]) ** 2).sum(-1)
    nearest = d2.argmin(axis=1)
    same = d2[np.arange(len(ref)), nearest] <= KEYPOINT_SAME_PX ** 2
    cos = np.sum(ref.desc[same] * got.desc[nearest[same]], axis=1)
    return float(same.mean()), cos


def grey_noise(crop_rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """crop_rgb (uint8 H x W x 3) with -1, 0 or +1 grey level added at random, the black
    outside of the footprint kept black."""
    noisy = np.clip(crop_rgb.astype(np.int16) + rng.integers(-1, 2, crop_rgb.shape), 0, 255).astype(np.uint8)
    noisy[crop_rgb.sum(axis=2) == 0] = 0
    return noisy


def features_parity(ref_ex, low_ex, map_canvas, frame_canvas, pairs: int, seed: int = 0) -> dict:
    """Matching with low_ex (the lower-precision copy) vs ref_ex (FP32) on `pairs` crops with a
    known answer. Returns FP32 success and median inliers; per case ('onboard': low crop vs
    FP32 map features, 'both': low crop and map, 'noise': FP32 on the crop +-1 grey level, the
    noise floor) success, its drop, verdict agreement, median inliers; keypoints found again and
    descriptor cosine min / median."""
    from skyfix.config import NavConfig, TilesConfig
    from skyfix.edge.refine import MapMatcher
    from skyfix.render.views import match_is_right, match_pairs
    from skyfix.tiles.features import features_in_memory
    nav, per_mpx, gsd = NavConfig(), TilesConfig().features_per_mpx, map_canvas.gsd_m
    map32 = features_in_memory(map_canvas, ref_ex, per_mpx)
    fp32 = MapMatcher(map32, ref_ex, gsd, nav.crop_features)
    matchers = {"fp32": fp32, "noise": fp32,  # the noise floor: the same FP32 matcher on a noisier crop
                "onboard": MapMatcher(map32, low_ex, gsd, nav.crop_features),
                "both": MapMatcher(features_in_memory(map_canvas, low_ex, per_mpx), low_ex, gsd, nav.crop_features)}
    ok = {k: [] for k in matchers}
    inliers = {k: [] for k in matchers}
    repeated, noise_repeated, cosines, rng = [], [], [], np.random.default_rng(seed)
    for crop, truth, prior, _ in match_pairs(map_canvas, frame_canvas, pairs, rotation_deg=15.0, seed=seed):
        described = {"fp32": matchers["fp32"].describe(crop), "onboard": matchers["onboard"].describe(crop),
                     "noise": matchers["noise"].describe(grey_noise(crop, rng))}
        described["both"] = described["onboard"]
        share, cos = _keypoint_agreement(described["fp32"], described["onboard"])
        repeated.append(share)
        noise_repeated.append(_keypoint_agreement(described["fp32"], described["noise"])[0])
        cosines.append(cos)
        for case, matcher in matchers.items():
            m = matcher.match(crop, gsd, prior, 30.0, described=described[case])
            inliers[case].append(0 if m is None else m.inliers)
            ok[case].append(match_is_right(m, truth, gsd, nav.min_inliers))
    cos = np.concatenate(cosines) if cosines else np.ones(1)
    base = np.array(ok["fp32"])
    report = {"pairs": int(pairs), "fp32": {"success": float(base.mean()), "inliers_median": float(np.median(inliers["fp32"]))},
              "keypoints": {"found_again": float(np.mean(repeated)), "found_again_noise": float(np.mean(noise_repeated)),
                            "cosine_min": float(cos.min()) if cos.size else 1.0,
                            "cosine_median": float(np.median(cos)) if cos.size else 1.0}}
    for case in ("onboard", "both", "noise"):
        got = np.array(ok[case])
        losses, gains = int(np.sum(base & ~got)), int(np.sum(got & ~base))
        report[case] = {"success": float(got.mean()), "success_drop": float(base.mean() - got.mean()),
                        "agreement": float(np.mean(got == base)), "inliers_median": float(np.median(inliers[case])),
                        "lost": losses, "gained": gains, "losses_p": losses_p_value(losses, gains)}
    return report


def features_gate_failures(report: dict) -> list[str]:
    """Why a lower-precision extractor fails the matching parity gate ([] when it passes)."""
    min_agreement = min(MIN_TOP1_AGREEMENT, report["noise"]["agreement"])
    out = []
    if report["keypoints"]["found_again"] < MIN_TOP1_AGREEMENT:
        out.append(f"keypoints found again {report['keypoints']['found_again']:.1%} < {MIN_TOP1_AGREEMENT:.0%}")
    for case in ("onboard", "both"):
        r = report[case]
        # The same float margin as the towers' gate.
        if r["success_drop"] > MAX_R1_DROP + 1e-9 and r["losses_p"] < SIGN_TEST_P:
            out.append(f"{case}: match success {r['success']:.1%} vs FP32 {report['fp32']['success']:.1%} "
                       f"(drop {100 * r['success_drop']:.1f} points > {100 * MAX_R1_DROP:.1f}; lost {r['lost']}, "
                       f"gained {r['gained']}: p = {r['losses_p']:.3f} < {SIGN_TEST_P})")
        if r["agreement"] < min_agreement - 1e-9:
            out.append(f"{case}: verdicts agree with FP32 on {r['agreement']:.1%} of pairs < {min_agreement:.0%}")
    return out


def format_features_report(report: dict) -> str:
    k = report["keypoints"]
    rows = [f"matching parity on {report['pairs']} crops with a known answer: FP32 success {report['fp32']['success']:.1%} "
            f"(median inliers {report['fp32']['inliers_median']:.0f}); keypoints found again {k['found_again']:.1%} "
            f"(under +-1 grey level {k['found_again_noise']:.1%}), "
            f"descriptor cosine min {k['cosine_min']:.4f} median {k['cosine_median']:.4f}"]
    for case in ("onboard", "both", "noise"):
        r = report[case]
        rows.append(f"  {case:8s} success {r['success']:.1%} ({-100 * r['success_drop']:+.1f} pt; lost {r['lost']}, "
                    f"gained {r['gained']}, p {r['losses_p']:.2f})  agreement {r['agreement']:.1%}  "
                    f"median inliers {r['inliers_median']:.0f}")
    return "\n".join(rows)


def export_features_fp16(model_dir, out_dir, calib, frames_from=None, source_gsd_m: Optional[float] = None,
                         pairs: int = 100, accept_loss: bool = False, seed: int = 0, log: Callable = print) -> dict:
    """Write out_dir (<name>.onnx in FP16, features.yaml) from an FP32 local-feature folder,
    score matching parity on crops of `calib` (frames from `frames_from` when given) and refuse
    (SkyfixError, nothing written) when it fails the gate unless accept_loss. Returns the card."""
    from skyfix.edge.features import open_extractor
    model_dir = Path(model_dir)
    card = read_features_card(model_dir)
    name = card["extractor"]
    if card.get("precision", "fp32") != "fp32":
        raise SkyfixError(f"{model_dir} is already {card['precision']}: convert from the FP32 export")
    src = model_dir / f"{name}.onnx"
    source = file_digest(src)
    ref_ex = open_extractor(name, model_dir)
    map_canvas, frame_canvas = load_canvases(calib, frames_from, source_gsd_m)
    with atomic_directory(out_dir) as tmp:
        t0 = time.perf_counter()
        dst = tmp / f"{name}.onnx"
        conversion = convert_fp16(src, dst)
        log(f"fp16 {name}: {dst.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.0f} s")
        card = {**card, "precision": "fp16", "source": str(model_dir.resolve()), "source_sha256": source["sha256"],
                "file": file_digest(dst), "conversion": conversion}
        (tmp / CARD).write_text(yaml.safe_dump(card, sort_keys=False))
        low_ex = open_extractor(name, tmp)
        if low_ex.identity != ref_ex.identity:
            raise SkyfixError(f"the FP16 copy's identity {low_ex.identity} is not its source's {ref_ex.identity}")
        report = features_parity(ref_ex, low_ex, map_canvas, frame_canvas, pairs, seed)
        log(format_features_report(report))
        failures = features_gate_failures(report)
        card["parity_gate"] = {"max_success_drop": MAX_R1_DROP, "sign_test_p": SIGN_TEST_P,
                               "min_agreement": min(MIN_TOP1_AGREEMENT, report["noise"]["agreement"]),
                               "passed": not failures, "accepted_loss": bool(failures and accept_loss),
                               "views_from": str(calib), "frames_from": None if frames_from is None else str(frames_from),
                               **report}
        (tmp / CARD).write_text(yaml.safe_dump(card, sort_keys=False))
        if failures and not accept_loss:
            raise SkyfixError(f"fp16 {name} fails the matching parity gate ({'; '.join(failures)}); nothing "
                              "written. Use --accept-loss to keep it")
    return card
