"""One contract test, run on every Embedder backend present; ONNX parity of a tower."""
import numpy as np
import pytest

from skyfix.contracts import Embedder
from skyfix.edge.embedders import tower_onnx

pytestmark = pytest.mark.slow


def _images(n, px, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


@pytest.fixture(params=["torch", "onnxruntime"])
def embedder(request, tiny_towers, tiny_onnx_dir):
    from skyfix.edge.embedders import OnnxEmbedder
    if request.param == "torch":
        from skyfix.train.torch_embedder import TorchEmbedder
        return TorchEmbedder(tiny_towers, "drone")
    return OnnxEmbedder(tower_onnx(tiny_onnx_dir, "drone"))


def test_embedder_contract(embedder):
    assert isinstance(embedder, Embedder)
    x = _images(3, embedder.input_px)
    v = embedder.embed(x)
    assert v.dtype == np.float32 and v.shape == (3, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # Batch-independent, deterministic, and different images give different vectors.
    np.testing.assert_allclose(embedder.embed(x[1:2])[0], v[1], atol=1e-5)
    assert np.abs(v[0] - v[1]).max() > 1e-3
    # Other sizes are resized; wrong dtypes and shapes are refused clearly.
    assert embedder.embed(_images(2, embedder.input_px + 13)).shape == (2, embedder.dim)
    with pytest.raises(Exception, match="uint8 N x H x W x 3"):
        embedder.embed(x.astype(np.float32))


def test_backends_share_model_id(tiny_towers, tiny_onnx_dir):
    from skyfix.edge.embedders import OnnxEmbedder
    from skyfix.train.torch_embedder import TorchEmbedder
    from skyfix.edge.embedders import read_model_card
    ids = {TorchEmbedder(tiny_towers, "sat").model_id, OnnxEmbedder(tower_onnx(tiny_onnx_dir, "sat")).model_id,
           read_model_card(tiny_onnx_dir)["model_id"]}
    assert len(ids) == 1


def test_onnx_parity_of_tower(tiny_towers, tiny_onnx_dir):
    from skyfix.export.onnx_export import check_parity
    p = check_parity(tiny_towers.drone, tower_onnx(tiny_onnx_dir, "drone"), _images(4, 96, seed=3), "drone")
    assert p.max_abs_diff < 1e-4 and p.min_cosine > 0.9999


def test_model_id_changes_with_weights(tiny_towers):
    import copy
    import torch
    from skyfix.train.towers import compute_model_id
    other = copy.deepcopy(tiny_towers)
    with torch.no_grad():
        other.drone.proj.weight[0, 0] += 1e-3
    assert compute_model_id(other) != compute_model_id(tiny_towers)


def test_checkpoint_round_trip(tiny_towers, tmp_path):
    from skyfix.train.towers import compute_model_id, load_checkpoint, save_checkpoint
    save_checkpoint(tiny_towers, tmp_path / "m.pt")
    assert compute_model_id(load_checkpoint(tmp_path / "m.pt")) == compute_model_id(tiny_towers)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="cannot load checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def test_square_ring_masks_partition():
    pytest.importorskip("torch")
    from skyfix.train.towers import square_ring_masks
    m = square_ring_masks(7, 4)
    assert m.shape == (4, 7, 7) and np.all(m.sum(axis=0) == 1)
    assert m[0, 3, 3] == 1 and m[3, 0, 0] == 1 and m[3, 6, 3] == 1  # centre first, border last


def test_too_many_rings_refused():
    pytest.importorskip("torch")
    from skyfix.errors import SkyfixError
    from skyfix.train.towers import square_ring_masks
    with pytest.raises(SkyfixError, match="do not fit"):
        square_ring_masks(2, 2)
