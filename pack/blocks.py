"""The map imagery of a pack, stored in square blocks and read on demand.

Layout inside a pack:
  map/<row>_<col>.png   RGBA block of BLOCK_PX x BLOCK_PX map pixels (edge blocks cut to the map),
                        alpha = valid; blocks without any valid pixel are not stored
  map/blocks.csv        block_row, block_col, bytes, sha256 of every stored block
Only the blocks under a requested window are decoded (and checked against their digest), with a
small cache, so opening a pack and rendering a tile cost the same for 1 km2 and for 100 km2.
This module needs numpy and OpenCV only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import cv2
import numpy as np

from skyfix.errors import PackError
from skyfix.geo import LocalFrame
from skyfix.pack.canvas import MapCanvas, MapGrid

BLOCK_PX = 1024
MAP_DIR = "map"
TABLE_FILE = "map/blocks.csv"
COVERAGE_PX = 8  # the build keeps each block's valid fraction at 1/8 resolution to place tiles


def row_sweep_cache(width_px: int, block_px: int = BLOCK_PX) -> int:
    """Blocks to keep decoded so that a row-major sweep over the map (tiles, feature windows)
    decodes each block about once: two rows of blocks and a few more."""
    return 2 * -(-width_px // block_px) + 4


def block_path(folder: Path, row: int, col: int) -> Path:
    return folder / MAP_DIR / f"{row}_{col}.png"


def write_block(pack_dir: Path, row: int, col: int, rgb: np.ndarray, valid: np.ndarray) -> Optional[dict]:
    """Write one block (atomically: a partly written block never has its final name); returns its
    table row {row, col, bytes, sha256}, or None (nothing written) when it has no valid pixel."""
    if not valid.any():
        return None
    path = block_path(pack_dir, row, col)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.dstack([rgb, valid.astype(np.uint8) * 255]), cv2.COLOR_RGBA2BGRA))
    if not ok:
        raise PackError(f"cannot encode map block {row}_{col}")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(png.tobytes())
    os.replace(tmp, path)
    return table_row(row, col, png.tobytes())


def table_row(row: int, col: int, data: bytes) -> dict:
    """The block table's row {row, col, bytes, sha256} of a block file's bytes."""
    return {"row": row, "col": col, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def decode_block(data: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A block file's bytes as (uint8 RGB, bool valid); PackError naming `what` if not a block."""
    bgra = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if bgra is None or bgra.ndim != 3 or bgra.shape[2] != 4:
        raise PackError(f"{what} cannot be decoded")
    return cv2.cvtColor(bgra[:, :, :3], cv2.COLOR_BGR2RGB), bgra[:, :, 3] > 0


def write_table(pack_dir: Path, entries: Iterable[dict]) -> None:
    rows = sorted(entries, key=lambda e: (e["row"], e["col"]))
    lines = ["block_row,block_col,bytes,sha256"] + [f"{e['row']},{e['col']},{e['bytes']},{e['sha256']}" for e in rows]
    (pack_dir / TABLE_FILE).parent.mkdir(parents=True, exist_ok=True)
    (pack_dir / TABLE_FILE).write_text("\n".join(lines) + "\n")


def write_canvas_blocks(pack_dir: Path, canvas: MapCanvas, block_px: int = BLOCK_PX) -> None:
    """Store an in-memory canvas as blocks (packs written from a MapCanvas: tests, small maps)."""
    entries = []
    for r0 in range(0, canvas.height_px, block_px):
        for c0 in range(0, canvas.width_px, block_px):
            entries.append(write_block(pack_dir, r0 // block_px, c0 // block_px,
                                       *canvas.read_px(r0, r0 + block_px, c0, c0 + block_px)))
    write_table(pack_dir, [e for e in entries if e is not None])


@dataclass
class MapBlocks(MapGrid):
    """A pack's map imagery, decoded block by block on demand. Geometry as MapCanvas."""

    pack_dir: Path
    gsd_m: float
    frame: LocalFrame
    east0_m: float
    north0_m: float
    width_px: int
    height_px: int
    block_px: int = BLOCK_PX
    cache_blocks: int = 16
    _table: dict = field(default_factory=dict, init=False, repr=False)
    _cache: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self):
        path = self.pack_dir / TABLE_FILE
        try:
            lines = path.read_text().splitlines()[1:]
            for line in lines:
                r, c, n, digest = line.split(",")
                self._table[(int(r), int(c))] = (int(n), digest)
        except (OSError, ValueError) as exc:
            raise PackError(f"{self.pack_dir}: {TABLE_FILE} cannot be read ({exc}); rebuild the pack") from exc

    def reopened(self) -> "MapBlocks":
        """The same map with nothing decoded yet (to hand to another process)."""
        return dataclasses.replace(self)

    def _block(self, row: int, col: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(rgb, valid) of one block, None where the map has no data; PackError if it is corrupt."""
        key = (row, col)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        entry = self._table.get(key)
        value = None
        if entry is not None:
            path = block_path(self.pack_dir, row, col)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise PackError(f"{self.pack_dir}: map block {row}_{col} cannot be read ({exc})") from exc
            if len(data) != entry[0] or hashlib.sha256(data).hexdigest() != entry[1]:
                raise PackError(f"{self.pack_dir}: map block {row}_{col} is truncated or corrupt; rebuild the pack")
            value = decode_block(data, f"{self.pack_dir}: map block {row}_{col}")
        self._cache[key] = value
        while len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)
        return value

    def verify(self) -> int:
        """Check every stored block against its size and SHA-256 (`skyfix tiles inspect`);
        returns the number of blocks, PackError naming the first bad one."""
        for (row, col), (size, digest) in sorted(self._table.items()):
            path = block_path(self.pack_dir, row, col)
            data = path.read_bytes() if path.is_file() else b""
            if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                raise PackError(f"{self.pack_dir}: map block {row}_{col} is missing, truncated or corrupt; "
                                "rebuild the pack")
        return len(self._table)

    def read_px(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        """Map pixels rows r0:r1, cols c0:c1 as (uint8 H x W x 3, bool valid H x W); outside the
        map and in missing blocks: black, not valid."""
        rgb = np.zeros((r1 - r0, c1 - c0, 3), np.uint8)
        valid = np.zeros((r1 - r0, c1 - c0), bool)
        b = self.block_px
        for br in range(max(r0, 0) // b, (min(r1, self.height_px) - 1) // b + 1):
            for bc in range(max(c0, 0) // b, (min(c1, self.width_px) - 1) // b + 1):
                block = self._block(br, bc)
                if block is None:
                    continue
                img, val = block
                # Intersection of the request with this block, in map pixels.
                a0, a1 = max(r0, br * b), min(r1, br * b + img.shape[0])
                d0, d1 = max(c0, bc * b), min(c1, bc * b + img.shape[1])
                if a0 < a1 and d0 < d1:
                    rgb[a0 - r0:a1 - r0, d0 - c0:d1 - c0] = img[a0 - br * b:a1 - br * b, d0 - bc * b:d1 - bc * b]
                    valid[a0 - r0:a1 - r0, d0 - c0:d1 - c0] = val[a0 - br * b:a1 - br * b, d0 - bc * b:d1 - bc * b]
        return rgb, valid

    def region_px(self, r0: int, r1: int, c0: int, c1: int) -> MapCanvas:
        """Map pixels rows r0:r1, cols c0:c1 as a MapCanvas with the same geometry."""
        rgb, valid = self.read_px(r0, r1, c0, c1)
        g = self.gsd_m
        return MapCanvas(rgb, valid, g, self.frame, self.east0_m + c0 * g, self.north0_m - r0 * g)

    def render(self, east_m: float, north_m: float, size_m: float, out_px: int, rotation_deg: float = 0.0):
        """As MapCanvas.render, decoding only the blocks under the square (any rotation)."""
        col, row = self.px_from_en(east_m, north_m)
        scale = size_m / out_px / self.gsd_m
        half = int(np.ceil(size_m / self.gsd_m * 0.7072 + (1.5 * scale if scale > 1.5 else 0) + 2))
        c, r = int(round(float(col))), int(round(float(row)))
        return self.region_px(r - half, r + half + 1, c - half, c + half + 1).render(
            east_m, north_m, size_m, out_px, rotation_deg)

    def overview(self, max_px: int) -> tuple[np.ndarray, float]:
        """The whole map shrunk to at most max_px on its longer side, block by block (memory of
        the result only): (uint8 RGB, scale = overview px per map px)."""
        scale = min(1.0, max_px / max(self.width_px, self.height_px))
        out = np.zeros((max(1, round(self.height_px * scale)), max(1, round(self.width_px * scale)), 3), np.uint8)
        b = self.block_px
        for br, bc in sorted(self._table):
            block = self._block(br, bc)
            y0, x0 = round(br * b * scale), round(bc * b * scale)
            y1 = round(min((br + 1) * b, self.height_px) * scale)
            x1 = round(min((bc + 1) * b, self.width_px) * scale)
            if block is not None and y1 > y0 and x1 > x0:
                out[y0:y1, x0:x1] = cv2.resize(block[0], (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        return out, scale

    def whole(self) -> MapCanvas:
        """The whole map in memory (the simulator and plots of small maps)."""
        return self.region_px(0, self.height_px, 0, self.width_px)
