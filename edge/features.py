"""Local features behind one interface: keypoints with descriptors, and matching them.

An Extractor turns a uint8 RGB image into `Features` (keypoint pixels, descriptors, scores).
Implementations: OpenCV's SIFT and ORB, XFeat (learned, Apache-2.0) through onnxruntime from the
ONNX written by `skyfix export features`, and skyfix's own dense features (`dense`, trained on
cross-date aerial pairs by `skyfix train-features`); no torch at run time. The map's features are
computed once on the ground (`tiles/features.py`) with the same extractor; onboard only the
crop is described, then `match_descriptors` pairs them and `edge/refine.py` fits the geometry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import yaml

from skyfix.artifacts import file_digest
from skyfix.config import EXTRACTORS
from skyfix.contracts import Extractor, Features  # noqa: F401  (the types this module implements)
from skyfix.errors import SkyfixError

LEARNED = {"xfeat": "skyfix export features", "dense": "skyfix train-features"}  # name -> what writes it
DEFAULT_FEATURES_MODEL = "models/xfeat"  # where `skyfix export features` writes XFeat by default


# skyfix's own dense features as shipped: trained by train/recipes/dense_features_no2.yaml
# (LEVIR-CD scenes 1, 3, 4, 5 and Colorado; 3.1 MB), so `--matcher dense` works out of the box.
SHIPPED_DENSE = Path(__file__).resolve().parent / "weights" / "dense"


def default_model_dir(name: str) -> Path:
    """Where the learned extractor `name` is found by default: the shipped dense model, else
    models/<name> (XFeat: written by `skyfix export features`)."""
    return SHIPPED_DENSE if name == "dense" else Path("models") / name


def _onnx_of(name: str, model_dir) -> Path:
    """The ONNX file of learned extractor `name` in model_dir (a folder holding <name>.onnx, or the
    file itself); a clear error with the command that writes it when absent."""
    model_dir = Path(model_dir)
    path = model_dir / f"{name}.onnx" if model_dir.is_dir() else model_dir
    if not path.is_file():
        raise SkyfixError(f"{name} model not found at {model_dir}: write it with `{LEARNED[name]} --out {model_dir}`")
    return path


XFEAT_UPSCALE = 2.0


def weights_identity(onnx_path: Path) -> tuple[str, str]:
    """(first 16 hex of the sha256 of the FP32 weights these features come from, precision).

    A lower-precision copy (`skyfix export fp16 --model FEATURES_DIR`) describes the same features
    as its FP32 source, within the matching parity gate it passed, so it keeps the source's
    identity: map features computed by either are accepted by both. Its features.yaml must
    describe this very file, or the copy is refused (a swapped or re-written ONNX)."""
    digest = file_digest(onnx_path)["sha256"]
    card_path = onnx_path.parent / "features.yaml"
    card = yaml.safe_load(card_path.read_text()) if card_path.is_file() else None
    precision = card.get("precision", "fp32") if isinstance(card, dict) else "fp32"
    if precision == "fp32":
        return digest[:16], "fp32"
    source = card.get("source_sha256")
    if (card.get("file") or {}).get("sha256") != digest or not isinstance(source, str) or len(source) < 16:
        raise SkyfixError(f"{card_path} describes a {precision} copy, but not {onnx_path.name} as it is now "
                          f"(sha256 {digest[:16]}...): export it again with `skyfix export {precision} --model "
                          f"FP32_FEATURES_DIR --out {onnx_path.parent}`")
    return source[:16], precision


def _open_model(name: str, model_dir, providers: Optional[list]) -> tuple:
    """(session, backend, weights identity, precision, source folder) of learned extractor
    `name`: its ONNX under onnxruntime, or a TensorRT engine folder from `skyfix export-trt`
    (Jetson), which carries the identity of the FP32 weights it was built from. Both sessions
    answer onnxruntime's `run(None, feeds)` with the outputs in the ONNX's order. The source folder is
    recorded in packs and found again by sim/fly."""
    from skyfix.edge.trt_embedder import TensorRTSession, is_engine
    if is_engine(model_dir):
        session = TensorRTSession(model_dir, extractor=name)
        folder = Path(model_dir).parent if Path(model_dir).suffix == ".engine" else Path(model_dir)
        return (session, session.backend, session.manifest["weights"],
                session.manifest["precision"], str(folder.resolve()))
    from skyfix.edge.embedders import onnx_session
    onnx_path = _onnx_of(name, model_dir)
    session, backend = onnx_session(onnx_path, providers)
    weights, precision = weights_identity(onnx_path)
    return session, backend, weights, precision, str(onnx_path.resolve().parent)


def _empty(dim: int, dtype) -> Features:
    return Features(np.zeros((0, 2), np.float32), np.zeros((0, dim), dtype), np.zeros(0, np.float32))


def _check_image(image_rgb: np.ndarray) -> None:
    if not (isinstance(image_rgb, np.ndarray) and image_rgb.dtype == np.uint8 and image_rgb.ndim == 3
            and image_rgb.shape[2] == 3):
        raise SkyfixError(f"feature extraction expects uint8 H x W x 3, got "
                          f"{getattr(image_rgb, 'dtype', type(image_rgb))} {getattr(image_rgb, 'shape', '')}")


def _gray(image_rgb: np.ndarray) -> np.ndarray:
    # CLAHE evens out illumination differences between the map date and the flight.
    gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)


class OpenCvExtractor:
    """SIFT (float, 128-D) or ORB (binary, 32 bytes) from OpenCV, on a CLAHE-equalised grey image."""

    def __init__(self, name: str):
        if name not in ("sift", "orb"):
            raise SkyfixError(f"OpenCV extractor must be sift or orb, got '{name}'")
        self.name, self.binary, self.rotation_invariant = name, name == "orb", True
        self.source = ""
        self.dim = 32 if self.binary else 128
        self.identity = f"opencv-{name}-{cv2.__version__}"

    def extract(self, image_rgb: np.ndarray, max_features: int,
                mask: Optional[np.ndarray] = None) -> Features:
        _check_image(image_rgb)
        create = cv2.ORB_create if self.binary else cv2.SIFT_create
        m = None if mask is None else mask.astype(np.uint8) * 255
        kps, desc = create(nfeatures=int(max_features)).detectAndCompute(_gray(image_rgb), m)
        if desc is None or not kps:
            return _empty(self.dim, np.uint8 if self.binary else np.float32)
        xy = np.array([k.pt for k in kps], np.float32)
        return Features(xy, desc if self.binary else desc.astype(np.float32),
                        np.array([k.response for k in kps], np.float32))


class XFeatExtractor:
    """XFeat keypoints and 64-D descriptors from `xfeat.onnx` (written by `skyfix export features`).

    The image is resized by `upscale` to multiples of 32 and keypoints are scaled back: XFeat
    describes at 1/8 resolution, and at map GSDs of ~0.5 m that grid is coarse; doubling it
    lifted cross-date success in `skyfix bench match` (LEVIR-CD 1: 5 -> 35 %, 3: 65 -> 80 %)
    at twice the time. Map and crop must use the same factor (it is part of the identity); a keypoint's score is its keypoint probability times the reliability map, as in XFeat."""

    name, binary, dim, rotation_invariant = "xfeat", False, 64, False

    def __init__(self, model_dir: str | Path = DEFAULT_FEATURES_MODEL, threshold: float = 0.05,
                 providers: Optional[list] = None, upscale: float = XFEAT_UPSCALE):
        self.session, self.backend, weights, self.precision, self.source = _open_model("xfeat", model_dir, providers)
        self.identity = f"xfeat-onnx-{weights}-x{upscale:g}"
        self.threshold, self.upscale = threshold, upscale

    def extract(self, image_rgb: np.ndarray, max_features: int,
                mask: Optional[np.ndarray] = None) -> Features:
        _check_image(image_rgb)
        h, w = image_rgb.shape[:2]
        h32, w32 = max(32, int(h * self.upscale) // 32 * 32), max(32, int(w * self.upscale) // 32 * 32)
        img = image_rgb if (h32, w32) == (h, w) else cv2.resize(
            image_rgb, (w32, h32), interpolation=cv2.INTER_AREA if w32 < w else cv2.INTER_LINEAR)
        prob, rel, desc = self.session.run(None, {"images_rgb_u8": img[None]})
        prob, rel, desc = prob[0, 0], rel[0, 0], desc[0]
        rows, cols = np.nonzero(prob > self.threshold)
        if rows.size == 0:
            return _empty(self.dim, np.float32)
        # Sample the 1/8-resolution maps where grid_sample(align_corners=False) would.
        fu = cols * (desc.shape[2] / max(w32 - 1, 1)) - 0.5
        fv = rows * (desc.shape[1] / max(h32 - 1, 1)) - 0.5
        scores = prob[rows, cols] * _bilinear(rel[None], fu, fv)[:, 0]
        xy = np.column_stack([cols * (w / w32), rows * (h / h32)]).astype(np.float32)
        order = _strongest(xy, scores, mask, max_features)
        d = _bilinear(desc, fu[order], fv[order])
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        return Features(xy[order], d.astype(np.float32), scores[order].astype(np.float32))


class DenseExtractor:
    """skyfix's own dense features from `dense.onnx` (`skyfix train-features`,
    `train/dense_features.py`): a plain CNN giving a 64-D unit descriptor and a match reliability
    for every 4 x 4 pixel cell of the image at its own resolution (no upscaling). Keypoints are
    the cells of highest reliability; a keypoint is its cell's centre. The graph takes any H, W;
    its first layers normalise grey levels per image, so brightness and contrast do not matter."""

    name, binary, dim, rotation_invariant = "dense", False, 64, False
    stride_px = 4

    def __init__(self, model_dir: str | Path = SHIPPED_DENSE, providers: Optional[list] = None):
        self.session, self.backend, weights, self.precision, self.source = _open_model("dense", model_dir, providers)
        self.identity = f"dense-onnx-{weights}"

    def extract(self, image_rgb: np.ndarray, max_features: int,
                mask: Optional[np.ndarray] = None) -> Features:
        _check_image(image_rgb)
        desc, reliability = self.session.run(None, {"images_rgb_u8": image_rgb[None]})
        desc, reliability = desc[0], reliability[0, 0]
        gh, gw = reliability.shape
        rows, cols = np.mgrid[0:gh, 0:gw].reshape(2, -1)
        xy = np.column_stack([(cols + 0.5) * self.stride_px - 0.5,
                              (rows + 0.5) * self.stride_px - 0.5]).astype(np.float32)
        order = _strongest(xy, reliability.reshape(-1).astype(np.float32), mask, max_features)
        d = desc.reshape(desc.shape[0], -1).T[order]
        return Features(xy[order], np.ascontiguousarray(d, np.float32), reliability.reshape(-1)[order])


def _strongest(xy_px: np.ndarray, scores: np.ndarray, mask: Optional[np.ndarray], max_features: int) -> np.ndarray:
    """Indices of at most max_features keypoints by descending score, those outside the mask
    (H x W bool, None: all inside) and those scoring 0 left out."""
    if mask is not None:
        h, w = mask.shape
        inside = mask[np.clip(xy_px[:, 1].round().astype(int), 0, h - 1),
                      np.clip(xy_px[:, 0].round().astype(int), 0, w - 1)]
        scores = np.where(inside, scores, -1.0)
    order = np.argsort(-scores, kind="stable")[:int(max_features)]
    return order[scores[order] > 0]


def _bilinear(maps_chw: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample C x H x W maps at fractional (u = col, v = row), edges clamped: N x C."""
    _, hh, ww = maps_chw.shape
    u, v = np.clip(u, 0, ww - 1), np.clip(v, 0, hh - 1)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    u1, v1 = np.minimum(u0 + 1, ww - 1), np.minimum(v0 + 1, hh - 1)
    a, b = (u - u0)[:, None], (v - v0)[:, None]
    m = maps_chw.transpose(1, 2, 0)
    return ((1 - a) * (1 - b) * m[v0, u0] + a * (1 - b) * m[v0, u1]
            + (1 - a) * b * m[v1, u0] + a * b * m[v1, u1])


def extract_any_rotation(extractor: Extractor, image_rgb: np.ndarray, max_features: int,
                         mask: Optional[np.ndarray] = None, turns: int = 8) -> Features:
    """Features of an image whose orientation is unknown, for an extractor that is not rotation
    invariant (XFeat: `skyfix bench match` at +-180 deg finds 23-30 % of same-date pairs): the
    image is described at `turns` rotations and every keypoint is mapped back into the
    unrotated image, so matching and the geometric fit see one image. Costs `turns` extractions."""
    if extractor.rotation_invariant:
        return extractor.extract(image_rgb, max_features, mask)
    h, w = image_rgb.shape[:2]
    centre = ((w - 1) / 2, (h - 1) / 2)
    mask_u8 = np.ones((h, w), np.uint8) if mask is None else mask.astype(np.uint8)
    parts = []
    for k in range(turns):
        turn = cv2.getRotationMatrix2D(centre, 360.0 * k / turns, 1.0)
        img = cv2.warpAffine(image_rgb, turn, (w, h))
        valid = cv2.warpAffine(mask_u8, turn, (w, h), flags=cv2.INTER_NEAREST) > 0
        f = extractor.extract(img, max(1, max_features // turns), valid)
        back = cv2.invertAffineTransform(turn)
        parts.append(Features((f.xy_px @ back[:, :2].T + back[:, 2]).astype(np.float32), f.desc, f.scores))
    return Features(np.concatenate([p.xy_px for p in parts]), np.concatenate([p.desc for p in parts]),
                    np.concatenate([p.scores for p in parts]))


def open_extractor(name: str, model_dir: Optional[str | Path] = None) -> Extractor:
    """The extractor called `name` (sift, orb, xfeat, dense); model_dir is the learned
    extractor's ONNX folder (default models/<name>)."""
    if name in ("sift", "orb"):
        return OpenCvExtractor(name)
    if name == "xfeat":
        return XFeatExtractor(model_dir or default_model_dir(name))
    if name == "dense":
        return DenseExtractor(model_dir or default_model_dir(name))
    raise SkyfixError(f"unknown feature extractor '{name}'; choose one of {', '.join(EXTRACTORS)}")


def match_descriptors(query: np.ndarray, train: np.ndarray, binary: bool, ratio: float,
                      mutual: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i_query, i_train) of accepted matches, int arrays of equal length.

    Nearest neighbour with Lowe's ratio test on distances (`ratio` < 1; 1 disables it);
    `mutual` also requires the train point's nearest query to be the same point (XFeat's own
    matching). Float descriptors are compared as unit vectors (L2-normalised SIFT, XFeat) through
    one matrix product; binary ones through OpenCV's Hamming matcher."""
    if len(query) < 2 or len(train) < 2:
        return np.zeros(0, int), np.zeros(0, int)
    if binary:
        bf = cv2.BFMatcher(cv2.NORM_HAMMING)
        pairs = [p for p in bf.knnMatch(query, train, k=2) if len(p) == 2]
        dist = np.array([[p[0].distance, p[1].distance] for p in pairs], np.float32).reshape(-1, 2)
        idx = np.array([[p[0].queryIdx, p[0].trainIdx] for p in pairs], int).reshape(-1, 2)
        rows, first = idx[:, 0], idx[:, 1]
        back = (lambda: np.array([m.trainIdx for m in bf.match(train, query)], int)[first] == rows)
    else:
        # Unit vectors: distance^2 = 2 - 2 cos, so one BLAS product and arg-max passes give the
        # two nearest neighbours (argpartition or a k-NN library were 3-5x slower here).
        # Mutual check through column maxima: numpy's arg-max down the columns of a row-major
        # matrix was 5-40 ms here, the plain maximum well under 1 ms.
        q, t = _unit(query), _unit(train)
        sim = q @ t.T
        rows = np.arange(len(q))
        best_of_train = sim.max(axis=0) if mutual else None
        first = np.argmax(sim, axis=1)
        s1 = sim[rows, first].copy()
        sim[rows, first] = -np.inf
        s2 = sim.max(axis=1)
        dist = np.sqrt(np.maximum(2.0 - 2.0 * np.column_stack([s1, s2]), 0.0))
        back = (lambda: s1 >= best_of_train[first])
    keep = dist[:, 0] < ratio * dist[:, 1] if ratio < 1 else np.ones(len(rows), bool)
    if mutual:
        keep &= back()
    return rows[keep], first[keep]


def _unit(desc: np.ndarray) -> np.ndarray:
    d = np.asarray(desc, np.float32)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
