"""Training data: drone/satellite pairs synthesised from orthophotos, the University-1652 folder
layout, and a batch sampler that never repeats a location and mixes in nearby ones."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from skyfix.edge.camera import PinholeCamera, ground_of_pixel, image_from_ground, rectify
from skyfix.errors import SkyfixError
from skyfix.render.views import ViewPose, photometric, render_view
from skyfix.pack.canvas import MapCanvas


@dataclass(frozen=True)
class Location:
    loc_id: int
    east_m: float
    north_m: float


def location_grid(canvas: MapCanvas, spacing_m: float, margin_m: float) -> list[Location]:
    """Locations every spacing_m over the canvas, margin_m inside its edges, valid imagery only."""
    e0, n0, e1, n1 = canvas.bounds_en()
    out = []
    for n in np.arange(n1 - margin_m, n0 + margin_m - 1e-6, -spacing_m):
        for e in np.arange(e0 + margin_m, e1 - margin_m + 1e-6, spacing_m):
            c, r = canvas.px_from_en(e, n)
            if canvas.valid[int(round(r)), int(round(c))]:
                out.append(Location(len(out), float(e), float(n)))
    return out


def split_by_area(locations: list[Location], val_east_min_m: float, gap_m: float):
    """Train: east < val_east_min_m - gap_m; validation: east >= val_east_min_m. The gap (at least
    a tile) keeps train and validation imagery from overlapping in metres."""
    train = [l for l in locations if l.east_m < val_east_min_m - gap_m]
    val = [l for l in locations if l.east_m >= val_east_min_m]
    if not train or not val:
        raise SkyfixError(f"split at east {val_east_min_m} m leaves {len(train)} train / {len(val)} "
                          "validation locations")
    return train, val


class OrthoPairs:
    """Pair i: (drone crop, satellite crop, location index) for locations[i].

    The satellite crop is what a TilePack renders; the drone crop is a pinhole view at a random
    height, heading and tilt (from `drone_canvas`, e.g. another date), with photometric change,
    rectified north-up with a noisy heading (or at a random heading: `heading='unknown'`).
    Deterministic for (seed, epoch, i).
    """

    def __init__(self, sat_canvas: MapCanvas, locations: list[Location], tile_size_m: float,
                 input_px: int, drone_canvas: Optional[MapCanvas] = None, cam: Optional[PinholeCamera] = None,
                 alt_range_m=(100.0, 200.0), tilt_max_deg: float = 10.0, heading: str = "known",
                 heading_err_deg: float = 3.0, seed: int = 0):
        self.sat, self.drone = sat_canvas, drone_canvas or sat_canvas
        self.locations, self.tile_size_m, self.px = locations, tile_size_m, input_px
        self.cam = cam or PinholeCamera.from_hfov(640, 480, 70.0)
        self.alt_range_m, self.tilt = alt_range_m, math.radians(tilt_max_deg)
        self.heading, self.heading_err = heading, math.radians(heading_err_deg)
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.locations)

    def sat_image(self, i: int) -> np.ndarray:
        loc = self.locations[i]
        return self.sat.render(loc.east_m, loc.north_m, self.tile_size_m, self.px)[0]

    def drone_image(self, i: int, rng: np.random.Generator):
        """(rectified drone crop, its rotation in rad: true heading minus the heading used)."""
        loc = self.locations[i]
        agl = rng.uniform(*self.alt_range_m)
        roll, pitch = rng.uniform(-self.tilt, self.tilt, 2)
        yaw = rng.uniform(0, 2 * math.pi)
        # Place the camera so that its image centre looks at the location (plus a few metres).
        e_off, n_off = ground_of_pixel(image_from_ground(self.cam, roll, pitch, yaw, 0, 0, agl),
                                       self.cam.cx_px, self.cam.cy_px)
        jitter = rng.normal(0, 3.0, 2)
        pose = ViewPose(loc.east_m - e_off + jitter[0], loc.north_m - n_off + jitter[1], agl, roll, pitch, yaw)
        frame, _, _ = render_view(self.drone, self.cam, pose)
        frame = photometric(frame, rng)
        yaw_est = yaw + rng.normal(0, self.heading_err) if self.heading == "known" else rng.uniform(0, 2 * math.pi)
        agl_est = agl * (1 + rng.normal(0, 0.05))
        crop = rectify(frame, self.cam, roll, pitch, yaw_est, agl_est, self.tile_size_m, self.px)[0]
        return crop, float((yaw - yaw_est + math.pi) % (2 * math.pi) - math.pi)

    def __getitem__(self, i: int):
        """(drone uint8, satellite uint8, location index, drone crop rotation in rad)."""
        rng = np.random.default_rng((self.seed, self.epoch, i))
        drone, rotation = self.drone_image(i, rng)
        return drone, self.sat_image(i), i, rotation


class ConcatPairs:
    """Several OrthoPairs (areas) as one dataset; item i keeps its global index as the label."""

    def __init__(self, parts: list):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def epoch(self) -> int:
        return self.parts[0].epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        for p in self.parts:
            p.epoch = value

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        drone, sat, _, rotation = self.parts[k][i - int(self.offsets[k])]
        return drone, sat, i, rotation

    def neighbours(self, radius_m: float) -> list[list[int]]:
        """Nearby locations within each area (areas are unrelated places)."""
        out = []
        for off, p in zip(self.offsets, self.parts):
            out += [[int(j + off) for j in nb] for nb in neighbours_by_distance(p.locations, radius_m)]
        return out


def neighbours_by_distance(locations: list[Location], radius_m: float) -> list[list[int]]:
    """For each location index, the indices of the others within radius_m (hard negatives)."""
    xy = np.array([(l.east_m, l.north_m) for l in locations])
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    return [list(np.flatnonzero((row <= radius_m) & (row > 0))) for row in d]


class LocationBatchSampler:
    """Batches of dataset indices with no location twice; a share of each batch is filled with
    locations near ones already in it (nearby ground looks alike: hard negatives).

    location_of: location id of each dataset index. neighbours: per location id, nearby ids
    (from `neighbours_by_distance`, or nearest neighbours in the current embedding space).
    """

    def __init__(self, location_of: list[int], batch_size: int, neighbours: Optional[list[list[int]]] = None,
                 hard_fraction: float = 0.5, seed: int = 0):
        self.location_of, self.batch_size = list(location_of), batch_size
        self.neighbours, self.hard_fraction, self.seed, self.epoch = neighbours, hard_fraction, seed, 0
        self.by_location: dict[int, list[int]] = {}
        for idx, loc in enumerate(self.location_of):
            self.by_location.setdefault(loc, []).append(idx)
        if len(self.by_location) < batch_size:
            raise SkyfixError(f"{len(self.by_location)} locations cannot fill a batch of {batch_size}")

    def __len__(self) -> int:
        return len(self.by_location) // self.batch_size

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        order = list(rng.permutation(list(self.by_location)))
        used: set = set()
        for _ in range(len(self)):
            batch: list[int] = []
            while len(batch) < self.batch_size:
                loc = next((l for l in order if l not in used), None)
                if loc is None:
                    return
                self._take(loc, batch, used, rng)
                if self.neighbours is not None and rng.random() < self.hard_fraction:
                    for nb in rng.permutation(self.neighbours[loc]):
                        if len(batch) < self.batch_size and nb not in used:
                            self._take(int(nb), batch, used, rng)
                            break
            yield [self.by_location[l][int(rng.integers(len(self.by_location[l])))] for l in batch]

    @staticmethod
    def _take(loc, batch, used, rng):
        batch.append(loc)
        used.add(loc)


# ---- University-1652 ---------------------------------------------------------------------------
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_u1652_split(folder: str | Path) -> dict[str, list[Path]]:
    """{location id: [image paths]} for a University-1652 folder such as train/drone."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SkyfixError(f"University-1652 folder not found: {folder}")
    out = {d.name: _images(d) for d in sorted(folder.iterdir()) if d.is_dir()}
    return {k: v for k, v in out.items() if v}


class U1652Pairs:
    """Pairs from `root/<split>/{drone,satellite}/<id>/*` (or the test folders query_drone and
    gallery_satellite): item i is (drone image, the satellite image of its location, location
    index); every drone image is one item (`first_only`: one per location)."""

    def __init__(self, root: str | Path, input_px: int, drone_dir: str = "train/drone",
                 sat_dir: str = "train/satellite", first_only: bool = False):
        drone = read_u1652_split(Path(root) / drone_dir)
        sat = read_u1652_split(Path(root) / sat_dir)
        ids = sorted(set(drone) & set(sat))
        if not ids:
            raise SkyfixError(f"{root}: no location has both drone and satellite training images")
        self.ids, self.px = ids, input_px
        self.sat_path = {i: sat[i][0] for i in ids}
        self.items = [(p, k) for k, i in enumerate(ids) for p in (drone[i][:1] if first_only else drone[i])]
        self.epoch = 0

    def neighbours(self, radius_m: float):
        return None  # no geometry between University-1652 locations

    def __len__(self) -> int:
        return len(self.items)

    @property
    def location_of(self) -> list[int]:
        return [k for _, k in self.items]

    def __getitem__(self, i: int):
        from skyfix.tiles.ortho import read_image_px
        path, k = self.items[i]
        return (read_image_px(path, self.px), read_image_px(self.sat_path[self.ids[k]], self.px), k,
                float("nan"))


def u1652_test_sets(root: str | Path) -> dict[str, dict[str, list[Path]]]:
    """The standard test folders: query_drone, gallery_satellite, query_satellite, gallery_drone."""
    test = Path(root) / "test"
    return {name: read_u1652_split(test / name)
            for name in ("query_drone", "gallery_satellite", "query_satellite", "gallery_drone")}
