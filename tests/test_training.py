"""Training: one step, a planted problem, the sampler, the University-1652 reader, DDP (two gloo
processes) against one process, and resume."""
import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from skyfix.config import ModelConfig, TrainConfig  # noqa: E402
from tests.conftest import SHARED  # noqa: E402

pytestmark = pytest.mark.slow
PX = 96


def _towers(seed=0):
    from skyfix.train.towers import build_towers
    m = build_towers(ModelConfig(pretrained=True, input_px=PX, dim=32, lpn_parts=2, seed=seed))
    # No random drop-connect: runs must be comparable step for step.
    net = m.drone.backbone.net
    net._global_params = net._global_params._replace(drop_connect_rate=None)
    return m


def _batch(n=8, seed=0):
    """Planted problem: drone views are noisy copies of their satellite crops."""
    rng = np.random.default_rng(seed)
    import cv2
    sat = np.stack([cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (PX, PX),
                               interpolation=cv2.INTER_CUBIC) for _ in range(n)])
    drone = np.clip(sat.astype(int) + rng.normal(0, 20, sat.shape), 0, 255).astype(np.uint8)
    return torch.from_numpy(drone), torch.from_numpy(sat), torch.arange(n)


def _cfg(**kw):
    base = dict(loss="infonce", lr=1e-3, warmup_steps=1, batch_size=8, amp=False)
    base.update(kw)
    return TrainConfig(**base)


def test_one_step_changes_weights_with_finite_loss():
    from skyfix.train.trainer import TrainState
    model = _towers()
    before = model.drone.proj.weight.detach().clone()
    state = TrainState(model, _cfg(), n_classes=8)
    state.total_steps = 10
    loss = state.step(*_batch())
    assert np.isfinite(loss) and loss > 0
    assert not torch.equal(before, model.drone.proj.weight)


@pytest.mark.parametrize("loss", ["infonce", "soft_triplet", "mhnw"])
def test_few_steps_reduce_the_loss_on_a_planted_problem(loss):
    from skyfix.train.trainer import TrainState
    state = TrainState(_towers(), _cfg(loss=loss), n_classes=8)
    state.total_steps = 8
    batch = _batch()
    losses = [state.step(*batch) for _ in range(6)]
    assert losses[-1] < losses[0]


def test_lpn_instance_loss_and_grad_cache_run():
    from skyfix.train.trainer import TrainState
    state = TrainState(_towers(), _cfg(lpn_instance_weight=0.5), n_classes=8)
    state.total_steps = 4
    assert np.isfinite(state.step(*_batch()))
    cached = TrainState(_towers(), _cfg(grad_cache_chunk=3), n_classes=8)
    cached.total_steps = 4
    assert np.isfinite(cached.step(*_batch()))


def test_grad_cache_gives_the_same_gradients_as_one_pass():
    from skyfix.train.trainer import TrainState
    batch = _batch()
    grads = []
    for chunk in (0, 3):
        model = _towers()
        state = TrainState(model, _cfg(grad_cache_chunk=chunk), n_classes=8)
        state.compute_gradients(*batch)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    # Same up to float32 summation order (chunked forward passes).
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_sampler_never_repeats_a_location_and_mixes_neighbours():
    from skyfix.train.data import Location, LocationBatchSampler, neighbours_by_distance
    locs = [Location(i, float(i % 10) * 25, float(i // 10) * 25) for i in range(100)]
    location_of = [i for i in range(100) for _ in range(3)]  # 3 samples per location
    nb = neighbours_by_distance(locs, 30.0)
    sampler = LocationBatchSampler(location_of, 16, nb, hard_fraction=1.0, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6
    with_neighbours = 0
    for b in batches:
        ids = [location_of[i] for i in b]
        assert len(ids) == len(set(ids)) == 16
        with_neighbours += any(j in nb[i] for i in ids for j in ids)
    assert with_neighbours == len(batches)


def test_u1652_reader_on_a_tiny_tree(tmp_path):
    import shutil

    from skyfix.train.data import U1652Pairs, u1652_test_sets
    sues = SHARED / "sues200"
    if not sues.exists():
        pytest.skip(f"shared data not found: {sues}")
    for split in ("train", "test"):
        d, s = ("drone", "satellite") if split == "train" else ("query_drone", "gallery_satellite")
        (tmp_path / split / d / "0001").mkdir(parents=True)
        (tmp_path / split / s / "0001").mkdir(parents=True)
        for p in sorted((sues / "sceneA" / "drone").glob("150m-*.jpg")):
            shutil.copy(p, tmp_path / split / d / "0001" / p.name)
        shutil.copy(sues / "sceneA" / "satellite" / "s0.png", tmp_path / split / s / "0001" / "0001.png")
    (tmp_path / "train" / "drone" / "0002").mkdir()  # a location without a satellite image
    shutil.copy(sues / "sceneB" / "drone" / "0.jpg", tmp_path / "train" / "drone" / "0002" / "0.jpg")
    for name in ("query_satellite", "gallery_drone"):
        (tmp_path / "test" / name).mkdir(parents=True)
    pairs = U1652Pairs(tmp_path, PX)
    assert pairs.ids == ["0001"] and len(pairs) == 3
    drone, sat, k, rot = pairs[1]
    assert drone.shape == sat.shape == (PX, PX, 3) and k == 0 and np.isnan(rot)
    sets = u1652_test_sets(tmp_path)
    assert len(sets["query_drone"]["0001"]) == 3 and sets["query_satellite"] == {}
    # The protocol runs on the tree: one location, so every drone query finds it first.
    from skyfix.export.models import load_embedder
    from skyfix.train.evaluate import evaluate_u1652
    emb = load_embedder("imagenet", "drone", ModelConfig(input_px=PX, dim=32))
    res = evaluate_u1652(tmp_path, emb, emb)
    assert res["drone_to_sat"]["r1"] == 1.0 and res["drone_to_sat"]["n_queries"] == 3
    assert res["sat_to_drone"] is None
    # Training reads the same tree.
    from skyfix.config import load_config
    from skyfix.train.trainer import build_datasets
    train, val, _ = build_datasets(load_config(overrides={"train": {"u1652_root": str(tmp_path)},
                                                          "model": {"input_px": PX}}))
    assert len(train) == 3 and len(val) == 1 and train.location_of == [0, 0, 0]


def test_checkpoint_resume_continues_identically(tmp_path):
    from skyfix.train.trainer import TrainState
    batches = [_batch(seed=s) for s in range(4)]

    def run(state, bs):
        for b in bs:
            state.step(*b)

    a = TrainState(_towers(), _cfg(), n_classes=8)
    a.total_steps = 4
    run(a, batches)
    b = TrainState(_towers(), _cfg(), n_classes=8)
    b.total_steps = 4
    run(b, batches[:2])
    b.save(tmp_path / "ck.pt")
    c = TrainState(_towers(seed=5), _cfg(), n_classes=8)  # different init: must be overwritten
    c.load(tmp_path / "ck.pt")
    run(c, batches[2:])
    for (n, p), q in zip(a.model.state_dict().items(), c.model.state_dict().values()):
        torch.testing.assert_close(p, q, msg=n)
    assert c.step_count == 4


def _ddp_worker(rank, world, port, batch, out):
    import torch.distributed as dist

    from skyfix.train.trainer import TrainState
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = _towers()
    state = TrainState(model, _cfg(), n_classes=8)
    half = len(batch[0]) // world
    sl = slice(rank * half, (rank + 1) * half)
    state.compute_gradients(batch[0][sl], batch[1][sl], batch[2][sl])
    if rank == 0:
        grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                 for n, p in model.named_parameters()}
        grads["loss.logit_scale"] = state.loss.logit_scale.grad.clone()  # outside DDP
        torch.save(grads, out)
    dist.destroy_process_group()


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    from skyfix.train.trainer import TrainState
    batch = _batch()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, port, batch, str(out)), nprocs=2, join=True)
    model = _towers()
    one = TrainState(model, _cfg(), n_classes=8)
    one.compute_gradients(*batch)
    ddp = torch.load(out, weights_only=True)
    torch.testing.assert_close(ddp.pop("loss.logit_scale"), one.loss.logit_scale.grad, rtol=1e-4, atol=1e-7)
    n_checked = 0
    for name, p in model.named_parameters():
        single = p.grad if p.grad is not None else torch.zeros_like(p)  # unused: no gradient
        torch.testing.assert_close(ddp[name], single, rtol=1e-3, atol=1e-6, msg=name)
        n_checked += p.grad is not None
    assert n_checked > 100


def test_datasets_hold_out_areas_and_scenes(tmp_path):
    from skyfix.config import load_config
    from skyfix.tiles.synthetic import write_synthetic_map
    from skyfix.train.trainer import build_datasets
    a = write_synthetic_map(tmp_path / "a.png", 1000, seed=1)   # 500 m at 0.5 m/px
    b = write_synthetic_map(tmp_path / "b.png", 1000, seed=2)
    cfg = load_config(overrides={"train": {"ortho": str(a), "source_gsd_m": 0.5, "location_spacing_m": 25.0,
                                           "val_views": 1000}, "model": {"input_px": PX}})
    train, val, info = build_datasets(cfg)
    e_train = [l.east_m for p in train.parts for l in p.locations]
    e_val = [l.east_m for p in val.parts for l in p.locations]
    assert max(e_train) < min(e_val) - 100.0 + 1e-6  # a tile-wide gap: no shared imagery
    drone, sat, k, rot = train[3]
    assert drone.shape == sat.shape == (PX, PX, 3) and k == 3 and abs(rot) < 0.5  # heading known: small error
    cfg.train.scenes = [{"ortho": str(a), "source_gsd_m": 0.5, "split": "train"},
                        {"ortho": str(b), "source_gsd_m": 0.5, "split": "val"}]
    train, val, info = build_datasets(cfg)
    assert len(train.parts) == len(val.parts) == 1 and len(train) == len(val) > 10
    assert len(train.neighbours(30.0)) == len(train)


def test_orientation_head_trains_on_rotations():
    from skyfix.train.trainer import TrainState
    state = TrainState(_towers(), _cfg(orientation_weight=1.0), n_classes=8)
    state.total_steps = 4
    drone, sat, labels = _batch()
    rot = torch.linspace(-3.0, 3.0, 8)
    assert np.isfinite(state.step(drone, sat, labels, rot))
    assert state.orient is not None and state.orient.mlp[0].weight.grad is not None
