"""Frame sources: an OpenCV camera index, a video file or GStreamer pipeline, or a folder of
images (EXIF time and GPS read with Pillow; an optional telemetry CSV supplies attitude and
height for replay).

A source's `read()` returns a `SourceFrame`, or None when it is exhausted; a frame that cannot
be decoded comes back with `image_rgb=None` (the navigator answers it with a reason).
"""
from __future__ import annotations

import csv
import logging
import datetime as dt
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from skyfix.contracts import Telemetry
from skyfix.errors import SkyfixError, require

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}


log = logging.getLogger("skyfix.source")

@dataclass
class SourceFrame:
    image_rgb: Optional[np.ndarray]
    t_capture_mono_s: float
    source_id: str
    telemetry: Optional[Telemetry] = None   # only replay sources carry their own telemetry
    exif: Optional[dict] = None


class CaptureSource:
    """cv2.VideoCapture: '0' (camera index), a video file, or a GStreamer pipeline ('... ! appsink').

    A video file ends (read returns None). A live camera never ends the loop: a failed read is
    a frame without pixels (the navigator gives it a reason), and after REOPEN_AFTER failures in
    a row the camera is reopened, so a stalled or unplugged camera resumes on its own."""

    REOPEN_AFTER = 10
    STALL_WAIT_S = 0.1

    def __init__(self, uri: str, open_capture=None):
        self.uri, self.n = uri, 0
        self.live = uri.isdigit() or "!" in uri
        if not self.live and not Path(uri).exists():
            raise SkyfixError(f"video not found: {uri}")
        self._open_capture = open_capture or _open_capture
        self.cap = self._open_capture(uri)
        if not self.cap.isOpened():
            raise SkyfixError(f"cannot open camera/video '{uri}' (for GStreamer, OpenCV must be "
                              "built with it, as JetPack's is)")
        self.failures, self.reopens = 0, 0

    def read(self) -> Optional[SourceFrame]:
        ok, bgr = self.cap.read()
        t = time.monotonic()
        if ok and bgr is not None:
            self.failures = 0
            self.n += 1
            return SourceFrame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), t, f"{Path(self.uri).name}#{self.n}")
        if not self.live:
            return None
        self.failures += 1
        if self.failures % self.REOPEN_AFTER == 0:
            log.warning("camera '%s' gave no frame %d times in a row: reopening it", self.uri, self.failures)
            self.cap.release()
            self.cap = self._open_capture(self.uri)
            self.reopens += 1
        time.sleep(self.STALL_WAIT_S)
        return SourceFrame(None, t, f"{Path(self.uri).name}#stalled")

    def close(self) -> None:
        self.cap.release()


def _open_capture(uri: str):
    if uri.isdigit():
        return cv2.VideoCapture(int(uri))
    if "!" in uri:
        return cv2.VideoCapture(uri, cv2.CAP_GSTREAMER)
    return cv2.VideoCapture(uri)


def read_exif(path: str | Path) -> dict:
    """{'time_utc': datetime|None, 'lat_deg', 'lon_deg', 'alt_m'} from a JPEG's EXIF (Pillow)."""
    Image = require("PIL.Image")
    out = {"time_utc": None, "lat_deg": None, "lon_deg": None, "alt_m": None}
    with Image.open(path) as im:
        exif = im.getexif()
        ifd = exif.get_ifd(0x8769)
        stamp = ifd.get(36867) or exif.get(306)  # DateTimeOriginal, DateTime
        if stamp:
            out["time_utc"] = dt.datetime.strptime(stamp.strip("\x00"), "%Y:%m:%d %H:%M:%S")
            subsec = str(ifd.get(37521) or "").strip("\x00 ")  # SubSecTimeOriginal: digits of a second
            if subsec.isdigit():
                out["time_utc"] += dt.timedelta(seconds=int(subsec) / 10 ** len(subsec))
        gps = exif.get_ifd(0x8825)
    if 2 in gps and 4 in gps:
        def deg(v):
            return float(v[0]) + float(v[1]) / 60 + float(v[2]) / 3600
        out["lat_deg"] = deg(gps[2]) * (-1 if gps.get(1) == "S" else 1)
        out["lon_deg"] = deg(gps[4]) * (-1 if gps.get(3) == "W" else 1)
    if 6 in gps:
        out["alt_m"] = float(gps[6]) * (-1 if gps.get(5) == b"\x01" else 1)
    return out


class FolderSource:
    """Images of a folder in name order, replayed at `rate_hz` (0: as fast as read).

    telemetry_csv columns: name, roll_deg, pitch_deg, yaw_deg, agl_m, and optionally t_s (the
    capture time in seconds, any origin); one row per image, empty cells mean unknown. A frame's
    capture time is when it was taken, not when it was read: t_s from the CSV, else the EXIF
    DateTimeOriginal (+ SubSecTimeOriginal), else, with a warning, the time it was read. Times
    are kept on the monotonic clock's scale, starting where the replay starts.
    """

    def __init__(self, folder: str | Path, telemetry_csv: Optional[str | Path] = None, rate_hz: float = 0.0):
        self.paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SkyfixError(f"no images in {folder}")
        self.telemetry = read_telemetry_csv(telemetry_csv) if telemetry_csv else {}
        self.rate_hz, self.i, self._next = rate_hz, 0, time.monotonic()
        self._origin = None  # (photo time of the first frame, monotonic time then)
        self._warned = False

    def _capture_time(self, name: str, exif: Optional[dict], read_s: float) -> float:
        taken = (self.telemetry.get(name) or {}).get("t_s")
        if taken is None and exif and exif.get("time_utc") is not None:
            taken = exif["time_utc"].timestamp()
        if taken is None:
            if not self._warned:
                log.warning("%s has no capture time (no t_s in the telemetry CSV, no EXIF time): using the "
                            "time it was read", name)
                self._warned = True
            return read_s
        if self._origin is None:
            self._origin = (taken, read_s)
        return self._origin[1] + (taken - self._origin[0])

    def read(self) -> Optional[SourceFrame]:
        if self.i >= len(self.paths):
            return None
        if self.rate_hz > 0:
            time.sleep(max(0.0, self._next - time.monotonic()))
            self._next += 1.0 / self.rate_hz
        path = self.paths[self.i]
        self.i += 1
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        t = time.monotonic()
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr is not None else None
        try:
            exif = read_exif(path) if img is not None else None
        except Exception:  # Pillow raises many types for odd EXIF; a frame without EXIF is fine
            exif = None
        t = self._capture_time(path.name, exif, t)
        tel = self.telemetry.get(path.name)
        if tel is not None:
            tel = Telemetry(int(t * 1e6), **telemetry_values(tel))
        return SourceFrame(img, t, path.name, tel, exif)

    def close(self) -> None:
        pass


TELEMETRY_CSV_COLUMNS = {"roll_deg": ("roll_rad", math.pi / 180, 90.0), "pitch_deg": ("pitch_rad", math.pi / 180, 90.0),
                         "yaw_deg": ("yaw_rad", math.pi / 180, 720.0), "agl_m": ("alt_agl_m", 1.0, 20000.0),
                         "t_s": ("t_s", 1.0, 1e10)}  # t_s: optional capture time


def telemetry_values(row: dict) -> dict:
    """A `read_telemetry_csv` row as Telemetry fields (its capture time t_s left out)."""
    return {k: v for k, v in row.items() if k != "t_s"}


def read_telemetry_csv(path) -> dict:
    """{image name: {roll_rad, pitch_rad, yaw_rad, alt_agl_m}} from a replay CSV (columns name,
    roll_deg, pitch_deg, yaw_deg, agl_m; an empty cell is unknown). SkyfixError naming the file
    and line for a missing column, a value that is not a number or out of range."""
    out = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "name" not in reader.fieldnames:
                raise SkyfixError(f"{path}: no 'name' column (expected name, roll_deg, pitch_deg, yaw_deg, agl_m)")
            for row in reader:
                out[row["name"]] = {key: _csv_number(row.get(col), scale, limit, path, reader.line_num, col)
                                    for col, (key, scale, limit) in TELEMETRY_CSV_COLUMNS.items()}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SkyfixError(f"{path}: cannot read the telemetry CSV ({exc})") from exc
    return out


def _csv_number(cell, scale: float, limit: float, path, line: int, column: str) -> Optional[float]:
    if cell is None or cell.strip() == "":
        return None
    try:
        value = float(cell)
    except ValueError:
        raise SkyfixError(f"{path}:{line}: {column} '{cell}' is not a number") from None
    if not math.isfinite(value) or abs(value) > limit:
        raise SkyfixError(f"{path}:{line}: {column} {cell} is outside +-{limit:g}")
    return value * scale


def open_source(uri: str, telemetry_csv: Optional[str] = None, rate_hz: float = 0.0):
    """A folder -> FolderSource; anything else -> CaptureSource (camera index, video, GStreamer)."""
    if Path(uri).is_dir():
        return FolderSource(uri, telemetry_csv, rate_hz)
    return CaptureSource(uri)
