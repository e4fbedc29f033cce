"""Learned cross-modal hashing: the head keeps neighbours better than the same head untrained,
the loss prefers codes that agree with the labels, and a binary-index pack searches, re-ranks
with its exact vectors and refuses a damaged or missing head."""
import numpy as np
import pytest

from skyfix.errors import ModelMismatch, PackError
from tests.helpers import unit_vectors

torch = pytest.importorskip("torch")


def _spread_places(n: int, views: int, d: int = 64, seed: int = 0):
    """Embeddings with a decaying spectrum in a rotated basis (as real ones have), more dims than
    the code has bits: tiles, drone views of each (the tile plus noise), place labels."""
    rng = np.random.default_rng(seed)
    rot = np.linalg.qr(np.random.default_rng(7).standard_normal((d, d)))[0]
    centres = (rng.standard_normal((n, d)) / np.arange(1, d + 1)) @ rot
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n), views)
    drone = centres[labels] + 0.02 * rng.standard_normal((len(labels), d))
    drone /= np.linalg.norm(drone, axis=1, keepdims=True)
    return drone.astype(np.float32), centres[labels].astype(np.float32), labels


def _nuisance_places(n: int, views: int, d: int = 32, seed: int = 0):
    """Drone views that differ from their tile along six fixed nuisance directions (a modality
    gap larger than the gap between places): float search finds the place a third of the time."""
    rng = np.random.default_rng(seed)
    nuisance = np.random.default_rng(99).standard_normal((6, d)) / np.sqrt(d)
    centres = rng.standard_normal((n, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n), views)
    drone = centres[labels] + rng.standard_normal((len(labels), 6)) @ nuisance
    drone /= np.linalg.norm(drone, axis=1, keepdims=True)
    return drone.astype(np.float32), centres[labels].astype(np.float32), labels


def _untrained(d, s, bits):
    from skyfix.train.hashing import HashHead
    head = HashHead(d.shape[1], bits)
    head.init_from(np.concatenate([d, s]), seed=0)
    return head.projection()


def test_order_term_keeps_float_neighbours_better_than_untrained_codes():
    from skyfix.train.hashing import code_recall_at_10, fit_hash_head
    d, s, y = _spread_places(600, 2, seed=1)
    learned = fit_hash_head(d, s, y, bits=16, steps=400, pair_weight=0.0, order_weight=1.0).projection()
    qd, qs, _ = _spread_places(400, 1, seed=2)  # other places: held out
    got, base = (code_recall_at_10(p, qs, qd, shortlist=40) for p in (learned, _untrained(d, s, 16)))
    assert got > base + 0.03, (got, base)


def test_label_term_learns_codes_that_find_the_place_across_modalities():
    """The seed's label-consistent idea: codes of a drone view and its tile agree, whatever the
    nuisance between the modalities (Hamming top-1 among held-out places)."""
    import faiss
    from skyfix.train.hashing import fit_hash_head
    d, s, y = _nuisance_places(600, 3, seed=1)
    learned = fit_hash_head(d, s, y, bits=32, steps=400, pair_weight=1.0, order_weight=0.0).projection()
    qd, qs, _ = _nuisance_places(500, 1, seed=2)

    def r1(p):
        index = faiss.IndexBinaryFlat(p.bits)
        index.add(p.codes(qs))
        return float(np.mean(index.search(p.codes(qd), 1)[1][:, 0] == np.arange(len(qd))))
    assert r1(learned) > r1(_untrained(d, s, 32)) + 0.3


def test_hash_loss_prefers_codes_that_agree_with_places():
    from skyfix.train.hashing import hash_loss
    rng = np.random.default_rng(0)
    codes = torch.from_numpy(np.sign(rng.standard_normal((8, 16))).astype(np.float32))
    emb = torch.nn.functional.normalize(codes.clone(), dim=1)
    labels = torch.arange(8)
    same = hash_loss(codes, codes, labels, emb, emb)
    shuffled = hash_loss(codes, codes[torch.randperm(8, generator=torch.Generator().manual_seed(1))], labels, emb, emb)
    assert float(same) < float(shuffled)


def test_trainer_trains_a_hash_head_with_the_towers():
    from skyfix.config import ModelConfig, TrainConfig
    from skyfix.train.towers import build_towers
    from skyfix.train.trainer import TrainState
    model = build_towers(ModelConfig(pretrained=False, input_px=64, dim=32))
    state = TrainState(model, TrainConfig(batch_size=4, amp=False, hash_bits=16, warmup_steps=1), n_classes=4)
    state.total_steps = 2
    before = state.hash.linear.weight.detach().clone()
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8))
    assert np.isfinite(state.step(images, images, torch.arange(4)))
    assert not torch.equal(before, state.hash.linear.weight)


def _binary_pack(tmp_path, canvas, projection):
    from skyfix.tiles.build import tile_grid, write_pack
    tiles, _ = tile_grid(canvas, 100.0, 50.0)
    vectors = unit_vectors(len(tiles), d=projection.dim, seed=3)
    return write_pack(tmp_path / "pack", canvas, tiles, vectors, model_id="m", tile_px=32, stride_m=50.0,
                      index_kind="binary", projection=projection), vectors


def test_binary_pack_searches_by_hamming_and_reranks_exactly(tmp_path, textured_canvas):
    from skyfix.pack.hashing import HASH_FILE, HashIndex
    from skyfix.pack.tilepack import TilePack
    from skyfix.train.hashing import HashHead
    head = HashHead(16, 64)
    head.init_from(unit_vectors(500, d=16, seed=4))
    out, vectors = _binary_pack(tmp_path, textured_canvas, head.projection("m"))
    pack = TilePack.open(out)
    assert isinstance(pack.index, HashIndex) and pack.manifest["index"] == "binary"
    q = vectors[[3, 40, 77]] + 0.01 * unit_vectors(3, d=16, seed=5)
    scores, ids = pack.search(q, 5)
    exact = q @ vectors.T
    assert np.array_equal(ids[:, 0], [3, 40, 77])  # 121 tiles: the shortlist of 200 holds all
    for row in range(3):
        assert np.allclose(scores[row], exact[row, ids[row]], atol=1e-5)
    data = (out / HASH_FILE).read_bytes()
    (out / HASH_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(PackError, match="hash.npz"):
        TilePack.open(out)


def test_binary_index_needs_a_head_of_the_models_size(tmp_path, textured_canvas):
    from types import SimpleNamespace
    from skyfix.pack.tilepack import make_index
    from skyfix.tiles.build import hash_head
    from skyfix.train.hashing import HashHead
    with pytest.raises(PackError, match="hash head"):
        make_index("binary", unit_vectors(10, d=16))
    head = HashHead(16, 64)
    head.init_from(unit_vectors(100, d=16))
    path = head.projection("model-a").save(tmp_path / "hash.npz")
    tc = SimpleNamespace(hash_head=str(path))
    with pytest.raises(ModelMismatch, match="model-a"):
        hash_head(tc, "", SimpleNamespace(model_id="model-b", dim=16))
    with pytest.raises(ModelMismatch, match="16-d"):
        hash_head(tc, "", SimpleNamespace(model_id="model-a", dim=32))
    with pytest.raises(PackError, match="not found"):
        hash_head(SimpleNamespace(hash_head=""), str(tmp_path / "nomodel"), SimpleNamespace(model_id="x", dim=16))
    (tmp_path / "bad.npz").write_bytes(b"not a head")
    with pytest.raises(PackError, match="not a readable hash head"):
        hash_head(SimpleNamespace(hash_head=str(tmp_path / "bad.npz")), "", SimpleNamespace(model_id="x", dim=16))
