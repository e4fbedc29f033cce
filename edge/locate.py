"""`skyfix locate`: positions of photos, offline, without an autopilot.

    skyfix locate --pack PACK PHOTOS... [--telemetry CSV] [--agl-m 120] --out fixes.csv|.geojson

Each photo is located on its own (`locate_frame`: crop, embed, global search, refine,
camera resection; no track to confirm it), so a row's accuracy is the single measurement's.
Attitude and height come from the telemetry CSV (name, roll_deg, pitch_deg, yaw_deg, agl_m,
as for replay) or `--agl-m`; without a heading the rotation is searched. The EXIF capture time
is reported; EXIF GPS, where present, is the reference the error column is measured against
(it is never used to locate). Writes CSV or GeoJSON (opens in QGIS) and a picture.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from skyfix.contracts import Frame, Reason, Telemetry
from skyfix.edge.navigator import Measurement
from skyfix.errors import SkyfixError
from skyfix.geo import haversine_m

log = logging.getLogger("skyfix.locate")

PHOTO_SPACING_S = 60.0  # the navigator sees photos this far apart: none is "stale" or tracked


@dataclass
class PhotoFix:
    """One photo's row. accuracy_m: DRMS radius (as GPS_INPUT's horiz_accuracy), metres."""

    name: str
    time_utc: str = ""
    lat_deg: Optional[float] = None
    lon_deg: Optional[float] = None
    accuracy_m: Optional[float] = None
    heading_deg: Optional[float] = None
    inliers: Optional[int] = None
    scale: Optional[float] = None      # map/crop scale of the match: ~ true height / assumed height
    reason: str = ""
    detail: str = ""
    ref_lat_deg: Optional[float] = None
    ref_lon_deg: Optional[float] = None
    error_m: Optional[float] = None


def _photo_frame(path: Path, index: int, telemetry: dict, agl_m: Optional[float]):
    """(Frame or None, EXIF dict, why not). The image is read with OpenCV; EXIF with Pillow."""
    from skyfix.edge.sources import read_exif, telemetry_values
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return None, {}, "not a readable image"
    try:
        exif = read_exif(path)
    except Exception:  # Pillow raises many types for odd EXIF; the photo is still usable
        exif = {}
    tel = telemetry_values(telemetry.get(path.name) or {})
    if tel.get("alt_agl_m") is None and agl_m is not None:
        tel["alt_agl_m"] = agl_m
    t_us = int(index * PHOTO_SPACING_S * 1e6)
    frame = Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), t_us, Telemetry(t_us, **tel) if tel else None, path.name)
    return frame, exif, ""


# What a wrong recorded heading looks like to one photo: no match, too few inliers, or a match
# whose rotation contradicts the heading. `locate_frame` then searches the rotation.
HEADING_DOUBT = (Reason.NO_MATCH, Reason.WEAK_MATCH, Reason.IMPLAUSIBLE, Reason.AMBIGUOUS)


def locate_frame(nav, frame: Frame) -> tuple:
    """One photo on its own, without a track, through `nav` (a Navigator): (Measurement or None,
    Reason, detail). Nothing confirms a single photo, so its accuracy is only the
    measurement's own (`Measurement.sigma_m`), and no state is kept between photos: a
    heading one photo's image contradicts says nothing about the next one's.

    A recorded heading that gives no usable match is tried turned by 180, 90 and 270 deg (a
    gimbal-yaw convention, a swapped axis), then left out (the rotation searched); the
    strongest of those placements is used, and said, only if it reaches
    nav.heading_override_min_inliers. Never raises."""
    nav.heading.reset()
    m, kind, detail = _locate_once(nav, frame)
    tel = frame.telemetry
    if m is not None or tel is None or tel.yaw_rad is None or kind not in HEADING_DOUBT:
        return m, kind, detail
    tries = []
    for turn_deg in (180.0, 90.0, 270.0, None):
        yaw = None if turn_deg is None else tel.yaw_rad + math.radians(turn_deg)
        tried = dataclasses.replace(frame, telemetry=dataclasses.replace(tel, yaw_rad=yaw))
        nav.heading.reset()
        tries.append(_locate_once(nav, tried))
    floor = max(nav.cfg.heading_override_min_inliers, nav.cfg.min_inliers)
    placed = [t for t in tries if t[0] is not None and t[0].match.inliers >= floor]
    if not placed:
        return m, kind, detail  # the recorded heading stands: nothing strong says otherwise
    m2, _, detail2 = max(placed, key=lambda t: t[0].match.inliers)
    off_deg = abs((math.degrees(m2.yaw_rad - tel.yaw_rad) + 180.0) % 360.0 - 180.0)
    if off_deg <= nav.cfg.max_rotation_deg:  # the search found it where the record said: no overrule
        return m2, Reason.OK, "; ".join(x for x in (f"found with the rotation searched ({kind.value} "
                                                     "at the recorded heading, which agrees)", detail2) if x)
    nav.heading_overrides += 1
    said = (f"recorded heading {math.degrees(tel.yaw_rad) % 360:.0f} deg gave {kind.value}; the image's "
            f"{math.degrees(m2.yaw_rad) % 360:.0f} deg ({m2.match.inliers} inliers) used instead")
    log.warning("%s: %s", frame.source_id, said)
    return m2, Reason.OK, "; ".join(x for x in (said, detail2) if x)


def _locate_once(nav, frame: Frame) -> tuple:
    """One try of `locate_frame`: (Measurement or None, Reason, detail); never raises."""
    try:
        m = nav.measure(frame, {})
    except Exception as exc:  # one bad photo must not end a batch
        log.exception("photo %s failed", getattr(frame, "source_id", "?"))
        return None, Reason.ERROR, f"{type(exc).__name__}: {exc}"
    if isinstance(m, Measurement):
        return m, Reason.OK, "; ".join(m.notes)
    return None, m[0], nav.retrieval.with_coarse(m[1], frame.t_capture_us / 1e6)


def locate_photos(nav, paths: list, telemetry: Optional[dict] = None, agl_m: Optional[float] = None) -> list[PhotoFix]:
    """One PhotoFix per path (in the order given). nav: a Navigator over the pack."""
    rows = []
    for i, path in enumerate(Path(p) for p in paths):
        frame, exif, why = _photo_frame(path, i + 1, telemetry or {}, agl_m)
        row = PhotoFix(path.name, time_utc=exif["time_utc"].isoformat() if exif.get("time_utc") else "",
                       ref_lat_deg=exif.get("lat_deg"), ref_lon_deg=exif.get("lon_deg"))
        if frame is None:
            row.reason, row.detail = Reason.BAD_FRAME.value, why
            rows.append(row)
            continue
        m, kind, detail = locate_frame(nav, frame)
        if kind is Reason.HEIGHT_MISSING:
            detail += " (no height in its EXIF: give --agl-m M, or agl_m in the --telemetry CSV)"
        row.reason, row.detail = kind.value, detail
        if m is not None:
            lat, lon, _ = nav.pack.frame.to_lla(m.east_m, m.north_m)
            row.lat_deg, row.lon_deg = float(lat), float(lon)
            row.accuracy_m = nav.accuracy_with_map_bias_m(math.sqrt(2.0) * m.sigma_m)
            row.heading_deg = float(math.degrees(m.yaw_rad) % 360.0)
            row.inliers, row.scale = int(m.match.inliers), float(m.match.scale)
            if row.ref_lat_deg is not None and row.ref_lon_deg is not None:
                row.error_m = float(haversine_m(row.ref_lat_deg, row.ref_lon_deg, row.lat_deg, row.lon_deg))
        rows.append(row)
    return rows


def write_csv(rows: list[PhotoFix], path: Path) -> None:
    fields = list(asdict(PhotoFix("")).keys())
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})


def write_geojson(rows: list[PhotoFix], path: Path) -> None:
    """Points (WGS 84 lon, lat) with every column as properties; reference positions as a
    second point per photo (kind: reference), so QGIS shows both."""
    features = []
    for r in rows:
        props = asdict(r)
        if r.lat_deg is not None:
            features.append({"type": "Feature", "properties": {**props, "kind": "fix"},
                             "geometry": {"type": "Point", "coordinates": [r.lon_deg, r.lat_deg]}})
        if r.ref_lat_deg is not None:
            features.append({"type": "Feature", "properties": {"name": r.name, "kind": "reference"},
                             "geometry": {"type": "Point", "coordinates": [r.ref_lon_deg, r.ref_lat_deg]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1))


def plot_locations(rows: list[PhotoFix], pack, path: Path, max_px: int = 1200) -> Path:
    """The pack's map with each photo's fix, its accuracy circle and, where known, a line to
    the reference position. Written with OpenCV (no plotting library needed onboard)."""
    canvas = pack.map_blocks()
    rgb, scale = canvas.overview(max_px)  # decoded block by block: the pack may cover 100 km2
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)

    def px(lat, lon):
        e, n = pack.frame.to_enu(lat, lon)[:2]
        c, r = canvas.px_from_en(e, n)
        return int(round(float(c) * scale)), int(round(float(r) * scale))

    for r in rows:
        if r.lat_deg is None:
            continue
        p = px(r.lat_deg, r.lon_deg)
        cv2.circle(img, p, max(2, int(r.accuracy_m / canvas.gsd_m * scale)), (0, 200, 255), 1, cv2.LINE_AA)
        if r.ref_lat_deg is not None:
            q = px(r.ref_lat_deg, r.ref_lon_deg)
            cv2.line(img, p, q, (255, 255, 255), 1, cv2.LINE_AA)
            cv2.drawMarker(img, q, (0, 220, 0), cv2.MARKER_CROSS, 10, 2)
        cv2.circle(img, p, 4, (0, 0, 255), -1, cv2.LINE_AA)
        cv2.putText(img, Path(r.name).stem, (p[0] + 6, p[1] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
    located = sum(r.lat_deg is not None for r in rows)
    errors = [r.error_m for r in rows if r.error_m is not None]
    title = f"{located}/{len(rows)} photos located" + (f", error median {np.median(errors):.1f} m" if errors else "")
    cv2.putText(img, title, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    if not cv2.imwrite(str(path), img):
        raise SkyfixError(f"cannot write {path}")
    return path


def run_locate(pack_path: str, photos: list, out: str, cfg, embedder=None,
               telemetry_csv: Optional[str] = None, agl_m: Optional[float] = None) -> list[PhotoFix]:
    """The command: open everything, locate, write the table (CSV or GeoJSON by suffix) and
    `<out>.png`. Returns the rows. `embedder`: the drone tower; None opens the model the pack
    records (edge.models; a checkpoint is run by the caller, `export.models.load_embedder`)."""
    from skyfix.edge.camera import PinholeCamera
    from skyfix.edge.models import model_for_pack, open_towers
    from skyfix.edge.navigator import Navigator
    from skyfix.edge.sources import IMAGE_SUFFIXES, read_telemetry_csv
    from skyfix.pack.tilepack import TilePack
    out_path = Path(out)
    if out_path.suffix.lower() not in (".csv", ".geojson", ".json"):
        raise SkyfixError(f"--out must end in .csv or .geojson, got {out}")
    paths, skipped = [], []
    for p in map(Path, photos):
        if p.is_dir():
            inside = sorted(q for q in p.iterdir() if q.is_file())
            paths += [q for q in inside if q.suffix.lower() in IMAGE_SUFFIXES]
            skipped += [q.name for q in inside if q.suffix.lower() not in IMAGE_SUFFIXES]
        else:
            paths.append(p)
    if skipped:
        log.warning("not photos (suffix not one of %s), skipped: %s", ", ".join(sorted(IMAGE_SUFFIXES)),
                    ", ".join(skipped[:10]) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""))
    if not paths:
        raise SkyfixError("no photos given")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SkyfixError(f"not found: {', '.join(missing[:5])}")
    pack = TilePack.open(pack_path)
    if embedder is None:
        embedder = open_towers(model_for_pack(pack), "drone")
    nav = Navigator(pack, embedder, PinholeCamera.from_config(cfg.camera), cfg.nav)
    rows = locate_photos(nav, paths, read_telemetry_csv(telemetry_csv) if telemetry_csv else {}, agl_m)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    (write_csv if out_path.suffix.lower() == ".csv" else write_geojson)(rows, out_path)
    plot_locations(rows, pack, out_path.with_suffix(".png"))
    return rows
