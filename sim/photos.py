"""A folder of simulated survey photos over a map, as a camera would write them: JPEGs with EXIF
capture time and GPS (the truth), and a telemetry CSV (name, roll_deg, pitch_deg, yaw_deg,
agl_m) carrying the attitude and height a flight log would give, with their noise.

Used by `skyfix bench locate` and the `skyfix locate` tests.
"""
from __future__ import annotations

import csv
import datetime as dt
import math
from pathlib import Path

import numpy as np

from skyfix.edge.camera import PinholeCamera
from skyfix.errors import require
from skyfix.render.views import ViewPose, photometric, render_view


def _dms(value_deg: float) -> tuple:
    d = abs(value_deg)
    deg, minutes = int(d), int((d - int(d)) * 60)
    return (float(deg), float(minutes), round((d - deg - minutes / 60) * 3600, 4))


def write_photo(path: Path, image_rgb: np.ndarray, lat_deg: float, lon_deg: float, alt_m: float,
                time_utc: dt.datetime) -> None:
    """A JPEG with EXIF DateTimeOriginal and GPS latitude/longitude/altitude (Pillow)."""
    Image = require("PIL.Image")
    exif = Image.Exif()
    exif[306] = time_utc.strftime("%Y:%m:%d %H:%M:%S")
    exif.get_ifd(0x8769)[36867] = exif[306]
    exif.get_ifd(0x8769)[37521] = f"{time_utc.microsecond // 1000:03d}"  # SubSecTimeOriginal, ms
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N" if lat_deg >= 0 else "S", 2: _dms(lat_deg), 3: "E" if lon_deg >= 0 else "W",
                4: _dms(lon_deg), 5: b"\x00" if alt_m >= 0 else b"\x01", 6: abs(float(alt_m))})
    Image.fromarray(image_rgb).save(path, quality=92, exif=exif)


def _write_telemetry_csv(path: Path, rows: list) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "roll_deg", "pitch_deg", "yaw_deg", "agl_m"])
        w.writerows(rows)
    return path


def write_photo_sequence(canvas, cam: PinholeCamera, out_dir: str | Path, n: int, start_en: tuple,
                         velocity_en_m_s: tuple, rate_hz: float = 3.0, agl_m: float = 120.0, seed: int = 0,
                         attitude_noise_deg: float = 0.5) -> Path:
    """n photos along a straight line (a camera recording a flight), EXIF times rate_hz apart
    (with milliseconds) and GPS = the truth; returns the telemetry CSV (no t_s column: the
    replay takes the EXIF times)."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    yaw = math.atan2(velocity_en_m_s[0], velocity_en_m_s[1])
    t0 = dt.datetime(2026, 6, 1, 10, 0, 0)
    rows = []
    for i in range(n):
        t = i / rate_hz
        pose = ViewPose(start_en[0] + velocity_en_m_s[0] * t, start_en[1] + velocity_en_m_s[1] * t, agl_m,
                        *np.radians(rng.uniform(-2, 2, 2)), yaw)
        lat, lon, _ = canvas.frame.to_lla(pose.east_m, pose.north_m)
        name = f"seq_{i:04d}.jpg"
        write_photo(out_dir / name, photometric(render_view(canvas, cam, pose)[0], rng), float(lat), float(lon),
                    agl_m, t0 + dt.timedelta(seconds=t))
        noisy = np.degrees([pose.roll_rad, pose.pitch_rad, pose.yaw_rad]) + rng.normal(0, attitude_noise_deg, 3)
        rows.append([name, *(f"{v:.3f}" for v in noisy), f"{agl_m:.2f}"])
    return _write_telemetry_csv(out_dir / "telemetry.csv", rows)


def write_photo_set(canvas, cam: PinholeCamera, out_dir: str | Path, n: int, seed: int = 0,
                    agl_range_m=(100.0, 160.0), tilt_deg: float = 5.0, attitude_noise_deg: float = 0.5,
                    height_noise_frac: float = 0.03, margin_m: float = 120.0) -> Path:
    """n photos at random places, heights, headings and tilts over the canvas; returns the
    telemetry CSV's path. EXIF GPS holds the true camera position (the reference)."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    e0, n0, e1, n1 = canvas.bounds_en()
    t0 = dt.datetime(2026, 6, 1, 10, 0, 0)
    rows = []
    for i in range(n):
        pose = ViewPose(rng.uniform(e0 + margin_m, e1 - margin_m), rng.uniform(n0 + margin_m, n1 - margin_m),
                        rng.uniform(*agl_range_m), *np.radians(rng.uniform(-tilt_deg, tilt_deg, 2)),
                        rng.uniform(0, 2 * math.pi))
        image = photometric(render_view(canvas, cam, pose)[0], rng)
        lat, lon, _ = canvas.frame.to_lla(pose.east_m, pose.north_m)
        name = f"photo_{i:03d}.jpg"
        write_photo(out_dir / name, image, float(lat), float(lon), pose.agl_m, t0 + dt.timedelta(seconds=2 * i))
        noisy = np.degrees([pose.roll_rad, pose.pitch_rad, pose.yaw_rad]) + rng.normal(0, attitude_noise_deg, 3)
        rows.append([name, *(f"{v:.3f}" for v in noisy), f"{pose.agl_m * (1 + rng.normal(0, height_noise_frac)):.2f}"])
    return _write_telemetry_csv(out_dir / "telemetry.csv", rows)


def turn_recorded_headings(csv_path: str | Path, every: int, by_deg: float) -> list[str]:
    """Make every `every`-th photo's recorded heading wrong by `by_deg` in a telemetry CSV (a
    gimbal-yaw convention, a bad magnetometer); returns the names of the photos changed."""
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    changed = []
    for k, row in enumerate(rows[1:]):
        if k % every == 0:
            row[3] = f"{(float(row[3]) + by_deg) % 360.0:.3f}"
            changed.append(row[0])
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return changed
