"""`skyfix train`: metric learning of the drone and satellite towers.

One process, or several with `torchrun` and DistributedDataParallel (gloo or NCCL): embeddings
are gathered from every rank so the contrastive loss sees the global batch. Each rank's graph
reaches only its own embeddings, so the loss is scaled by the world size before DDP averages
the towers' gradients (the average of world x local parts is their sum: the global gradient);
the loss's own temperature, outside DDP, sees the global loss on every rank and is divided back. `grad_cache_chunk` enables the
two-pass big-batch method (Vo's thesis, ch. 5, Alg. 1; "gradient cache"): embed the whole batch
without a graph, take the loss and its gradient w.r.t. the embeddings, then re-run the towers
chunk by chunk and back-propagate those gradients. Plain gradient accumulation would be wrong
for a loss over the whole batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from skyfix.errors import SkyfixError, require

torch = require("torch")
dist = torch.distributed
F = torch.nn.functional


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x):
    """All-gather rows from every rank; the local slice keeps its autograd graph."""
    rank, world = _rank_world()
    if world == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach())
    parts[rank] = x
    return torch.cat(parts)


class _Towers(torch.nn.Module):
    """What DDP wraps: both towers and the heads trained with them, one forward per batch."""

    def __init__(self, model, parts=None, orient=None):
        super().__init__()
        self.model, self.parts, self.orient = model, parts, orient

    def forward(self, drone_u8, sat_u8, with_features: bool):
        out = []
        for tower, images in (("drone", drone_u8), ("sat", sat_u8)):
            net = self.model.tower(tower)
            if not with_features:
                out += [net(images), None]
            else:
                feats = net.features(images)
                out += [F.normalize(net.proj(feats), dim=1), feats]
        return out


class TrainState:
    """Model, loss modules, optimiser and schedule; `step` runs one optimisation step."""

    def __init__(self, model, cfg, n_classes: int = 0, device: str = "cpu"):
        from skyfix.train.losses import PartClassifiers, make_loss
        self.model, self.cfg, self.device = model.to(device), cfg, device
        self.loss = make_loss(cfg.loss).to(device)
        self.parts = None
        if cfg.lpn_instance_weight > 0:
            mc = model.cfg
            if mc.lpn_parts < 1:
                raise SkyfixError("train.lpn_instance_weight needs model.lpn_parts >= 1")
            self.parts = PartClassifiers(mc.lpn_parts, model.drone.backbone.channels, n_classes).to(device)
        self.orient = None
        if cfg.orientation_weight > 0:
            from skyfix.train.towers import OrientationHead
            pooled = model.drone.proj.in_features
            self.orient = OrientationHead(pooled).to(device)
        self.hash = None
        if cfg.hash_bits > 0:
            from skyfix.train.hashing import HashHead
            self.hash = HashHead(model.cfg.dim, cfg.hash_bits).to(device)
        self.towers = _Towers(model, self.parts, self.orient)
        self.world = _rank_world()[1]
        if self.world > 1:
            # find_unused_parameters: the backbone's ImageNet classifier takes no part.
            self.towers = torch.nn.parallel.DistributedDataParallel(self.towers, find_unused_parameters=True)
        params = list(model.parameters()) + list(self.loss.parameters())
        for extra in (self.parts, self.orient, self.hash):
            if extra is not None:
                params += list(extra.parameters())
        self.params = params
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.total_steps = 1
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.step_count = 0
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.startswith("cuda"))

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay to zero at total_steps."""
        if step < self.cfg.warmup_steps:
            return (step + 1) / self.cfg.warmup_steps
        progress = (step - self.cfg.warmup_steps) / max(1, self.total_steps - self.cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def _forward(self, drone_u8, sat_u8):
        """(drone emb, sat emb, drone features or None, sat features or None)."""
        return self.towers(drone_u8, sat_u8, self.parts is not None or self.orient is not None)

    def _objective(self, drone_emb, sat_emb, drone_feats=None, sat_feats=None, labels=None, rotations=None):
        """What each rank back-propagates: world x the global contrastive loss (its graph reaches
        only the local embeddings; DDP's average then gives the global gradient) plus the local
        head losses (DDP's average of local means is the global mean)."""
        all_drone, all_sat = gather_with_grad(drone_emb), gather_with_grad(sat_emb)
        loss = self.world * self.loss(all_drone, all_sat)
        if self.hash is not None and labels is not None:
            from skyfix.train.hashing import hash_loss
            all_labels = gather_with_grad(labels)
            loss = loss + self.world * self.cfg.hash_weight * hash_loss(
                self.hash(all_drone), self.hash(all_sat), all_labels, all_drone, all_sat)
        if self.parts is not None:
            loss = loss + self.cfg.lpn_instance_weight * 0.5 * (
                self.parts(drone_feats, labels) + self.parts(sat_feats, labels))
        if self.orient is not None and rotations is not None:
            from skyfix.train.towers import orientation_loss
            loss = loss + self.cfg.orientation_weight * orientation_loss(self.orient(drone_feats), rotations)
        return loss

    def _fix_loss_gradients(self) -> None:
        """The temperature and the hash head are outside DDP and saw world x the global loss
        (the same on every rank): divide it back."""
        if self.world > 1:
            outside = list(self.loss.parameters()) + (list(self.hash.parameters()) if self.hash else [])
            for p in outside:
                if p.grad is not None:
                    p.grad /= self.world

    def step(self, drone_u8, sat_u8, labels, rotations=None) -> float:
        """One optimisation step on uint8 NHWC batches; returns the (global) loss."""
        loss = self.compute_gradients(drone_u8, sat_u8, labels, rotations)
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.step_count += 1
        return loss

    def compute_gradients(self, drone_u8, sat_u8, labels, rotations=None) -> float:
        """Forward and backward (no optimiser step): fills .grad; returns the global loss."""
        self.model.train()
        if self.cfg.freeze_bn:
            # Small per-device batches give noisy BatchNorm statistics: keep ImageNet's.
            for m in self.model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
        drone_u8, sat_u8 = drone_u8.to(self.device), sat_u8.to(self.device)
        labels = labels.to(self.device)
        self.opt.zero_grad(set_to_none=True)
        autocast = torch.autocast("cuda", enabled=self.scaler.is_enabled())
        rotations = rotations.to(self.device) if rotations is not None else None
        if self.cfg.grad_cache_chunk > 0 and self.parts is None and self.orient is None:
            loss = self._grad_cache_step(drone_u8, sat_u8, autocast, labels)
        else:
            with autocast:
                d, dfeat, s, sfeat = self._forward(drone_u8, sat_u8)
                loss = self._objective(d.float(), s.float(), dfeat, sfeat, labels, rotations)
            self.scaler.scale(loss).backward()
        self._fix_loss_gradients()
        return float(loss.detach()) / self.world

    def _grad_cache_step(self, drone_u8, sat_u8, autocast, labels=None):
        chunk = self.cfg.grad_cache_chunk
        starts = list(range(0, len(drone_u8), chunk))
        outs_d, outs_s, states = [], [], []
        for i in starts:
            # Remember the RNG so the second pass draws the same drop-connect masks.
            states.append(torch.get_rng_state())
            with torch.no_grad(), autocast:
                d, _, s, _ = self._forward(drone_u8[i:i + chunk], sat_u8[i:i + chunk])
            outs_d.append(d.float())
            outs_s.append(s.float())
        emb_d = torch.cat(outs_d).requires_grad_(True)
        emb_s = torch.cat(outs_s).requires_grad_(True)
        loss = self._objective(emb_d, emb_s, labels=labels)
        self.scaler.scale(loss).backward()
        for k, i in enumerate(starts):
            torch.set_rng_state(states[k])
            # DDP reduces gradients once, after the last chunk.
            sync = contextlib.nullcontext() if (k == len(starts) - 1 or self.world == 1) else self.towers.no_sync()
            with sync:
                with autocast:
                    d, _, s, _ = self._forward(drone_u8[i:i + chunk], sat_u8[i:i + chunk])
                torch.autograd.backward([d.float(), s.float()],
                                        [emb_d.grad[i:i + chunk], emb_s.grad[i:i + chunk]])
        return loss

    # ---- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model_cfg": dataclasses.asdict(self.model.cfg), "state_dict": self.model.state_dict(),
                "loss": self.loss.state_dict(), "parts": self.parts.state_dict() if self.parts else {},
                "orient": self.orient.state_dict() if self.orient else {},
                "hash": self.hash.state_dict() if self.hash else {},
                "opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "step": self.step_count,
                "total_steps": self.total_steps, "torch_rng": torch.get_rng_state()}

    def save(self, path: str | Path) -> Path:
        """Tensors and plain containers only: loads with torch.load(weights_only=True)."""
        tmp = Path(str(path) + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)
        return Path(path)

    def load(self, path: str | Path) -> None:
        try:
            blob = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt files
            raise SkyfixError(f"cannot resume from {path}: {exc}") from exc
        self.model.load_state_dict(blob["state_dict"])
        self.loss.load_state_dict(blob["loss"])
        if self.parts is not None:
            self.parts.load_state_dict(blob["parts"])
        if self.orient is not None:
            self.orient.load_state_dict(blob["orient"])
        if self.hash is not None:
            self.hash.load_state_dict(blob["hash"])
        self.opt.load_state_dict(blob["opt"])
        self.sched.load_state_dict(blob["sched"])
        self.step_count, self.total_steps = int(blob["step"]), int(blob["total_steps"])
        torch.set_rng_state(blob["torch_rng"])


def collate(items) -> tuple:
    """(drone uint8 N x H x W x 3, satellite uint8, location labels N, rotations N in rad)."""
    drone = torch.from_numpy(np.stack([it[0] for it in items]))
    sat = torch.from_numpy(np.stack([it[1] for it in items]))
    rot = torch.tensor([it[3] if len(it) > 3 else float("nan") for it in items], dtype=torch.float32)
    return drone, sat, torch.tensor([it[2] for it in items]), rot


def run_info(cfg) -> dict:
    """What made a run: resolved config, versions and the git commit."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"config": dataclasses.asdict(cfg), "versions": {"python": platform.python_version(),
            "torch": str(torch.__version__), "numpy": str(np.__version__)}, "git_commit": commit or "unknown",
            "host": platform.node()}


def run_card(checkpoint: str | Path) -> dict:
    """What the model card says about the run a checkpoint came from (its run.yaml and the last
    validation in metrics.jsonl, when they are beside it)."""
    folder = Path(checkpoint).parent
    run = yaml.safe_load((folder / "run.yaml").read_text()) if (folder / "run.yaml").is_file() else {}
    lines = (folder / "metrics.jsonl").read_text().splitlines() if (folder / "metrics.jsonl").is_file() else []
    validation = [json.loads(x) for x in lines if '"val"' in x]
    train_cfg = (run.get("config") or {}).get("train") or {}
    return {"trained": {"command": run.get("command", ""), "git_commit": run.get("git_commit", ""),
                        "checkpoint": Path(checkpoint).name, "split": run.get("split", {}),
                        "steps": train_cfg.get("epochs", 0) * train_cfg.get("steps_per_epoch", 0),
                        "batch_size": train_cfg.get("batch_size"), "loss": train_cfg.get("loss"),
                        "last_validation": validation[-1] if validation else {}}}


def validate(model, val_pairs, device: str, batch: int = 16) -> dict:
    """Drone -> satellite and satellite -> drone retrieval over held-out locations."""
    from skyfix.train.metrics import retrieval_metrics
    model.eval()
    d, s = [], []
    with torch.inference_mode():
        for i in range(0, len(val_pairs), batch):
            items = [val_pairs[j] for j in range(i, min(i + batch, len(val_pairs)))]
            drone, sat, _, _ = collate(items)
            d.append(model.drone(drone.to(device)).float().cpu())
            s.append(model.sat(sat.to(device)).float().cpu())
    S = (torch.cat(d) @ torch.cat(s).T).numpy()
    P = np.eye(len(S), dtype=bool)
    return {"drone_to_sat": retrieval_metrics(S, P), "sat_to_drone": retrieval_metrics(S.T, P.T)}


def build_datasets(full_cfg):
    """(train ConcatPairs, validation ConcatPairs, split description).

    One ortho: train west of the validation line, validate east of it, a tile-size gap between
    (no imagery shared). Several scenes: whole scenes are train or validation.
    """
    from skyfix.tiles.ortho import load_canvas
    from skyfix.train.data import ConcatPairs, OrthoPairs, location_grid, split_by_area
    cfg, tile, px = full_cfg.train, full_cfg.tiles.tile_size_m, full_cfg.model.input_px
    if cfg.u1652_root:
        from skyfix.train.data import U1652Pairs
        train = U1652Pairs(cfg.u1652_root, px)
        val = U1652Pairs(cfg.u1652_root, px, "test/query_drone", "test/gallery_satellite", first_only=True)
        return train, val, {"train": f"University-1652 train: {len(train.ids)} locations, {len(train)} drone images",
                            "val": f"University-1652 test: {len(val)} locations (first drone image each)"}
    scenes = cfg.scenes or [{"ortho": cfg.ortho, "drone_from": cfg.drone_from,
                             "source_gsd_m": cfg.source_gsd_m, "split": "area"}]
    if not all(sc.get("ortho") for sc in scenes):
        raise SkyfixError("train.ortho (or every train.scenes[].ortho) must be set")
    margin = tile / 2 + 260.0 * math.tan(math.radians(12))  # the drone footprint stays on the map
    train_parts, val_parts, info = [], [], {"train": [], "val": [], "gap_m": tile,
                                            "spacing_m": cfg.location_spacing_m}
    for k, sc in enumerate(scenes):
        sat = load_canvas(sc["ortho"], full_cfg.tiles.gsd_m, source_gsd_m=sc.get("source_gsd_m"))
        drone = (load_canvas(sc["drone_from"], sat.gsd_m, source_gsd_m=sc.get("source_gsd_m"), frame=sat.frame)
                 if sc.get("drone_from") else None)
        locs = location_grid(sat, cfg.location_spacing_m, margin)

        def pairs(ls, seed):
            return OrthoPairs(sat, ls, tile, px, drone, heading=cfg.heading, seed=seed)
        name = Path(sc["ortho"]).name + (f" (drone views from {Path(sc['drone_from']).name})" if sc.get("drone_from") else "")
        if sc.get("split", "train") == "area":
            e0, _, e1, _ = sat.bounds_en()
            line = cfg.val_east_min_m if cfg.val_east_min_m is not None else e0 + (e1 - e0) * 2 / 3
            tr, va = split_by_area(locs, line, gap_m=tile)
            train_parts.append(pairs(tr, cfg.seed))
            val_parts.append(pairs(va, cfg.seed + 999))
            info["train"].append(f"{name}: {len(tr)} locations east < {line - tile:.0f} m")
            info["val"].append(f"{name}: east >= {line:.0f} m")
        elif sc["split"] in ("train", "val"):
            (train_parts if sc["split"] == "train" else val_parts).append(pairs(locs, cfg.seed + 999 * (sc["split"] == "val")))
            info[sc["split"]].append(f"{name}: {len(locs)} locations")
        else:
            raise SkyfixError(f"train.scenes[{k}].split must be train or val, got {sc['split']!r}")
    if not train_parts or not val_parts:
        raise SkyfixError("training needs at least one train and one validation area")
    val = ConcatPairs(val_parts)
    step = max(1, len(val) // cfg.val_views)
    for p in val.parts:  # thin validation evenly to about val_views views
        p.locations = p.locations[::step]
    val = ConcatPairs(val.parts)
    info["val_views"] = len(val)
    return ConcatPairs(train_parts), val, info


def init_distributed(full_cfg) -> tuple[int, int]:
    """Under torchrun: join the process group (NCCL on GPUs, gloo on CPUs); returns (rank, world)."""
    gpu = torch.cuda.is_available() and full_cfg.train.device != "cpu"
    dist.init_process_group("nccl" if gpu else "gloo")
    return _rank_world()


def _pick_device(cfg, rank: int, world: int) -> str:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if device == "cuda" and world > 1:  # one GPU per process under torchrun
        import os
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        torch.cuda.set_device(device)
    return device


def _train_epoch(state, pairs, sampler, epoch: int, steps_per_epoch: int, rank: int, metrics_log) -> None:
    """One epoch of steps (resuming mid-epoch); each rank trains on its share of every batch."""
    from tqdm import tqdm
    cfg = state.cfg
    pairs.epoch = sampler.epoch = epoch
    batches = list(sampler)[: steps_per_epoch]
    skip = state.step_count - epoch * steps_per_epoch
    bar = tqdm(batches[skip:], desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0)
    for idx in bar:
        mine = idx[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
        loss = state.step(*collate([pairs[i] for i in mine]))
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{state.sched.get_last_lr()[0]:.2e}")
        if metrics_log:
            metrics_log.write(json.dumps({"step": state.step_count, "loss": loss,
                                          "lr": state.sched.get_last_lr()[0]}) + "\n")


def _end_epoch(model, state, val, device: str, out: Path, epoch: int, best: float, metrics_log,
               t0: float, log) -> float:
    """Validate, log, save last.pt, and best.pt when R@1 improved; returns the best R@1."""
    from skyfix.train.towers import compute_model_id, save_checkpoint
    v = validate(model, val, device)
    r1 = v["drone_to_sat"]["r1"]
    metrics_log.write(json.dumps({"epoch": epoch + 1, "step": state.step_count, "val": v,
                                  "minutes": (time.perf_counter() - t0) / 60}) + "\n")
    metrics_log.flush()
    log(f"epoch {epoch + 1}: val drone->sat R@1 {r1:.3f} AP {v['drone_to_sat']['ap']:.3f}, "
        f"sat->drone R@1 {v['sat_to_drone']['r1']:.3f}")
    state.save(out / "last.pt")
    if r1 > best:
        save_checkpoint(model, out / "best.pt", extra={
            "epoch": epoch + 1, "val_r1": r1, "model_id": compute_model_id(model),
            "orientation_head": state.orient.state_dict() if state.orient else {},
            "hash_head": state.hash.state_dict() if state.hash else {}})
    return max(r1, best)


def train(full_cfg, resume: Optional[str] = None, log=print, command: str = "") -> Path:
    """Train from `full_cfg.train`; returns the folder with best.pt, last.pt, metrics.jsonl, run.yaml
    (which records `command`, the command line that started the run, for the model card)."""
    from skyfix.train.data import LocationBatchSampler
    from skyfix.train.towers import build_towers
    cfg = full_cfg.train
    rank, world = _rank_world()
    device = _pick_device(cfg, rank, world)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_towers(full_cfg.model)
    pairs, val, split_info = build_datasets(full_cfg)
    location_of = getattr(pairs, "location_of", None) or list(range(len(pairs)))
    state = TrainState(model, cfg, n_classes=max(location_of) + 1, device=device)
    sampler = LocationBatchSampler(location_of, cfg.batch_size * world,
                                   pairs.neighbours(cfg.hard_radius_m), cfg.hard_fraction, cfg.seed)
    steps_per_epoch = cfg.steps_per_epoch or len(sampler)
    state.total_steps = cfg.epochs * steps_per_epoch
    if resume:
        state.load(resume)
    info = {"command": command, **run_info(full_cfg), "split": split_info}
    if rank == 0:
        (out / "run.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
        log(f"train: {split_info['train']}; validation: {split_info['val']}; "
            f"{state.total_steps} steps on {device} x {world}")
    best, t0 = -1.0, time.perf_counter()
    metrics_log = open(out / "metrics.jsonl", "a") if rank == 0 else None
    try:
        for epoch in range(state.step_count // steps_per_epoch, cfg.epochs):
            _train_epoch(state, pairs, sampler, epoch, steps_per_epoch, rank, metrics_log)
            if rank == 0:
                best = _end_epoch(model, state, val, device, out, epoch, best, metrics_log, t0, log)
    finally:
        if metrics_log:
            metrics_log.close()
    if rank == 0:
        log(f"done in {(time.perf_counter() - t0) / 60:.1f} min; best val R@1 {best:.3f}: {out / 'best.pt'}\n"
            f"next: skyfix export onnx --checkpoint {out / 'best.pt'} --out models/trained")
    return out
