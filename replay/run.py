"""`skyfix replay`: a recorded flight (a video or timed photos, and the autopilot's log) through
the navigator, scored against the log's GPS.

Each frame's capture time on the log's clock is the video's start time plus the frame's time in
the video (plus --time-offset-s); the telemetry is the log's, interpolated at that time. The
navigator sees the frames and that telemetry only: the log's GPS is the reference the fixes are
scored against, and what the camera-log time offset is estimated from (printed, never applied
by itself).
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from skyfix.edge.frame_loop import SourceFrame, run_frame_loop
from skyfix.errors import SkyfixError
from skyfix.geo import LocalFrame
from skyfix.replay.log import FlightLog, LogError, LogTelemetry, read_log

OFFSET_SEARCH_S = 5.0   # the camera-log offsets tried by the estimate, +- this
OFFSET_STEP_S = 0.02


@dataclass
class ReplayFrame:
    image_rgb: np.ndarray
    t_utc_s: float
    name: str


def parse_utc(text: str) -> float:
    """An ISO 8601 time ('2026-12-03T10:00:00.5Z'; no zone: UTC) as UNIX seconds."""
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SkyfixError(f"--video-start must be an ISO 8601 time (2026-12-03T10:00:00Z), got {text!r}") from exc
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()


def video_frames(path: Path, start_utc_s: float, every: int = 1) -> Iterator[ReplayFrame]:
    """Every `every`-th frame of a video with its capture time: the start time plus the frame's
    own time stamp in the video (OpenCV's CAP_PROP_POS_MSEC)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SkyfixError(f"cannot open the video {path} (OpenCV reads MP4, AVI, MKV with its FFmpeg)")
    try:
        i = 0
        while True:
            ok = cap.grab()
            if not ok:
                return
            if i % every == 0:
                t_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
                ok, bgr = cap.retrieve()
                if ok and bgr is not None:
                    yield ReplayFrame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), start_utc_s + t_ms / 1e3, f"frame{i:06d}")
            i += 1
    finally:
        cap.release()


PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def photo_frames(folder: Path, time_offset_s: float) -> tuple:
    """(ReplayFrame iterator in capture order, first UTC s, last UTC s, notes) of the photos of a
    folder timed by their EXIF DateTimeOriginal (+ SubSecTimeOriginal), read as UTC, plus
    time_offset_s (a camera clock set to local time: the zone's offset, negated). Photos without
    an EXIF time are left out and counted."""
    from skyfix.edge.sources import read_exif
    from skyfix.tiles.ortho import imread_rgb
    timed, untimed = [], 0
    for p in sorted(q for q in folder.iterdir() if q.suffix.lower() in PHOTO_SUFFIXES):
        try:
            t = read_exif(p)["time_utc"]
        except OSError:
            t = None
        if t is None:
            untimed += 1
            continue
        timed.append((t.replace(tzinfo=dt.timezone.utc).timestamp() + time_offset_s, p))
    if not timed:
        raise SkyfixError(f"{folder}: no photo with an EXIF capture time (DateTimeOriginal)")
    timed.sort()
    notes = [f"{untimed} photos without an EXIF capture time left out"] if untimed else []
    frames = (ReplayFrame(imread_rgb(p), t, p.name) for t, p in timed)
    return frames, timed[0][0], timed[-1][0], notes


def video_seconds(path: Path) -> float:
    """The video's length (s) from its frame count and rate."""
    cap = cv2.VideoCapture(str(path))
    try:
        n, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    return float(n / fps) if fps > 0 else 0.0


def check_overlap(log: FlightLog, start_utc_s: float, length_s: float) -> list:
    """Notes on how the video sits in the log; LogError when they do not overlap at all (a log
    of another flight or day, or a wrong start time)."""
    first, last = log.span_s
    end = start_utc_s + length_s

    def utc(t):
        return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")
    if end < first or start_utc_s > last:
        raise LogError(f"the video ({utc(start_utc_s)} for {length_s:.0f} s) does not overlap the log "
                       f"({utc(first)} to {utc(last)}): a log of another flight or day, or a wrong start; "
                       "give --video-start or --time-offset-s")
    notes = []
    if start_utc_s < first:
        notes.append(f"the video starts {first - start_utc_s:.1f} s before the log: those frames have no telemetry")
    if end > last:
        notes.append(f"the video runs {end - last:.1f} s past the log's end"
                     + (" (the log is cut: truncated?)" if log.partial_end else "") + ": those frames have no telemetry")
    if length_s < 0.5 * (last - first):
        notes.append(f"the video covers {length_s:.0f} s of the log's {last - first:.0f} s")
    return notes


def estimate_offset_s(fixes: list[dict], log: FlightLog) -> Optional[tuple]:
    """(offset s, median error m at it) that best lines the fixes up with the log's GPS: the
    fixes' positions against the GPS at their time plus each offset within +-OFFSET_SEARCH_S.
    None with fewer than 10 fixes. A camera clock that runs ahead of the log's shows as a
    negative offset; apply it with --time-offset-s."""
    if len(fixes) < 10:
        return None
    frame = LocalFrame(fixes[0]["lat_deg"], fixes[0]["lon_deg"])
    en = np.array([frame.to_enu(f["lat_deg"], f["lon_deg"])[:2] for f in fixes])
    t = np.array([f["t_utc_s"] for f in fixes])
    gps_t, lat, lon = log.gps
    g_e, g_n, _ = frame.to_enu(lat, lon)
    best = None
    for off in np.arange(-OFFSET_SEARCH_S, OFFSET_SEARCH_S + 1e-9, OFFSET_STEP_S):
        tt = t + off
        inside = (tt >= gps_t[0]) & (tt <= gps_t[-1])
        if inside.sum() < 10:
            continue
        err = np.hypot(np.interp(tt[inside], gps_t, g_e) - en[inside, 0], np.interp(tt[inside], gps_t, g_n) - en[inside, 1])
        med = float(np.median(err))
        if best is None or med < best[1]:
            best = (float(off), med)
    return best


def clock_warnings(estimate: Optional[tuple], sigma_s: float) -> list:
    """[warning] when the camera-log offset the data shows (estimate_offset_s) is beyond what the
    published accuracy allows for (3 x nav.time_offset_sigma_s; at least 0.1 s, the estimate's
    own spread on a 12 m/s flight): then
    every fix was placed where the vehicle was at another time, and its accuracy did not say so."""
    if not estimate or abs(estimate[0]) <= max(3 * sigma_s, 5 * OFFSET_STEP_S):
        return []
    said = (f"the camera clock is {estimate[0]:+.2f} s off the log's by the data, beyond the "
            f"{max(3 * sigma_s, 5 * OFFSET_STEP_S):.2f} s the accuracy allows for (nav.time_offset_sigma_s): the fixes lag or lead "
            "the vehicle; set the offset (--time-offset-s here, the camera's clock in flight)")
    logging.getLogger("skyfix.replay").warning(said)
    return [said]


def _scored_row(sf: SourceFrame, res, gps: Optional[tuple], frame: LocalFrame, t_first_s: float, scored: list) -> dict:
    """One frame's row of fixes.csv (its fix and its error against the log's GPS, or the reason
    there is none); a fix with a GPS to score it against is also appended to `scored`."""
    row = {"name": sf.source_id, "t_utc_s": sf.t_capture_s, "reason": res.kind.value, "detail": res.detail,
           "gps_lat_deg": gps[0] if gps else None, "gps_lon_deg": gps[1] if gps else None}
    if res.fix is not None:
        row.update(lat_deg=res.fix.lat_deg, lon_deg=res.fix.lon_deg, horiz_accuracy_m=res.fix.horiz_accuracy_m)
        if gps:
            e, n, _ = frame.to_enu(res.fix.lat_deg, res.fix.lon_deg)
            ge, gn, _ = frame.to_enu(*gps)
            row["error_m"] = float(math.hypot(e - ge, n - gn))
            scored.append({"t_s": sf.t_capture_s - t_first_s, "east_m": float(e), "north_m": float(n),
                           "horiz_accuracy_m": res.fix.horiz_accuracy_m, "error_m": row["error_m"]})
    return row


def replay(pack_path: str, frames: Iterator[ReplayFrame], log: FlightLog, cfg, out_dir: Path,
           notes: Optional[list] = None, progress: bool = True, extra: Optional[dict] = None) -> dict:
    """Replay frames through the navigator with the log's telemetry; write fixes.csv,
    fixes.geojson, track.png and report.json (with `extra` in it) into out_dir; return the report."""
    from skyfix.edge.fly import startup
    from skyfix.edge.navigator import Navigator
    from skyfix.sim.score import plot_track, score
    cfg = dataclasses.replace(cfg, nav=dataclasses.replace(cfg.nav, pack=pack_path))  # the caller's is left alone
    pack, embedder, cam = startup(cfg)
    nav = Navigator(pack, embedder, cam, cfg.nav)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, scored, untimed = [], [], [0]

    def record(sf: SourceFrame, tel, res) -> None:
        if res is None:  # outside the log's telemetry: not replayed
            untimed[0] += 1
            return
        rows.append(_scored_row(sf, res, log.gps_at(sf.t_capture_s), pack.frame, rows[0]["t_utc_s"] if rows else
                                sf.t_capture_s, scored))
        if progress and len(rows) % 100 == 0:
            print(f"  {len(rows)} frames, {len(scored)} fixes", flush=True)

    telemetry = LogTelemetry(log)  # the onboard TelemetryStore, fed as a live link feeds it
    run_frame_loop(nav, (SourceFrame(rf.image_rgb, rf.t_utc_s, rf.name) for rf in frames),
                   lambda t_s: telemetry.at(t_s, cfg.nav.telemetry_max_age_s), record, skip_without_telemetry=True)
    untimed = untimed[0]
    if not rows:
        raise LogError("no frame of the video falls inside the log: check --video-start / --time-offset-s")
    duration_s = rows[-1]["t_utc_s"] - rows[0]["t_utc_s"]
    report = score(scored, duration_s)
    report.update({"frames": len(rows), "frames_without_telemetry": untimed, "reasons": nav.reason_counts(),
                   "integrity": nav.integrity_counts(), "accuracy_terms": nav.accuracy_terms(), "latency_ms": nav.timing_summary(),
                   "pack": str(pack_path), "log": str(log.path), "notes": (notes or []) + log.notes, **(extra or {})})
    fixes = [r for r in rows if "lat_deg" in r]
    report["time_offset_estimate_s"] = estimate_offset_s(fixes, log)
    report["warnings"] = clock_warnings(report["time_offset_estimate_s"], cfg.nav.time_offset_sigma_s)
    _write_csv(rows, out_dir / "fixes.csv")
    _write_geojson(fixes, log, out_dir / "fixes.geojson")
    g_t = log.gps[0]
    inside = (g_t >= rows[0]["t_utc_s"]) & (g_t <= rows[-1]["t_utc_s"])
    ge, gn, _ = pack.frame.to_enu(log.gps[1][inside], log.gps[2][inside])
    plot_track(pack.map_blocks(), np.column_stack([ge, gn]), scored, out_dir / "track.png", reference="log's GPS")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def _write_csv(rows: list[dict], path: Path) -> None:
    cols = ["name", "t_utc_s", "lat_deg", "lon_deg", "horiz_accuracy_m", "gps_lat_deg", "gps_lon_deg", "error_m",
            "reason", "detail"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.8f}" if isinstance(v, float) and k.endswith("_deg") else v) for k, v in r.items()})


def _write_geojson(fixes: list[dict], log: FlightLog, path: Path) -> None:
    """The fixes as points (accuracy and error as properties) and the log's GPS track as a line."""
    feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [f["lon_deg"], f["lat_deg"]]},
              "properties": {"t_utc_s": f["t_utc_s"], "horiz_accuracy_m": f["horiz_accuracy_m"],
                             "error_m": f.get("error_m")}} for f in fixes]
    if fixes:
        t0, t1 = fixes[0]["t_utc_s"], fixes[-1]["t_utc_s"]
        keep = (log.gps[0] >= t0) & (log.gps[0] <= t1)
        feats.append({"type": "Feature", "properties": {"name": "GPS (reference)"},
                      "geometry": {"type": "LineString",
                                   "coordinates": [[float(lo), float(la)] for la, lo in zip(log.gps[1][keep], log.gps[2][keep])]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


def format_report(r: dict) -> str:
    """A few lines for people."""
    e, cal = r["error_m"], r["calibration"]
    lines = [f"{r['frames']} frames replayed ({r['frames_without_telemetry']} outside the log), "
             f"{r['n_published']} fixes, availability {100 * r['availability']:.1f} %"]
    if r["n_published"]:
        lines.append(f"error against the log's GPS: median {e['median']:.1f} m, p95 {e['p95']:.1f} m, max "
                     f"{e['max']:.1f} m; within 1x / 3x of the accuracy: {100 * cal['within_1x']:.0f} % / "
                     f"{100 * cal['within_3x']:.0f} % ({cal['beyond_3x']} beyond 3x)")
    if r.get("time_offset_estimate_s"):
        off, med = r["time_offset_estimate_s"]
        total = r.get("time_offset_s", 0.0) + off
        lines.append(f"camera-log time offset estimated from the data: {off:+.2f} s more than the one applied "
                     f"(median error {med:.1f} m there); replay with --time-offset-s {total:.2f} to apply it")
    lines += [f"warning: {w}" for w in r.get("warnings", [])]
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def run_replay(video: Optional[str], log_path: str, pack_path: str, cfg, out_dir: str,
               video_start: Optional[str] = None, time_offset_s: float = 0.0, every: int = 1, progress: bool = True,
               photos: Optional[str] = None) -> dict:
    """`skyfix replay`: read the log, place the video on its clock (video_start, else the log's
    first attitude; plus time_offset_s) or the photos by their EXIF times, check they overlap the
    log, replay and score. The camera's intrinsics come from cfg.camera; its image size from the
    video or the first photo."""
    log = read_log(log_path)
    if photos:
        folder = Path(photos)
        if not folder.is_dir():
            raise SkyfixError(f"photo folder not found: {folder}")
        frames, first, last, notes = photo_frames(folder, time_offset_s)
        notes += check_overlap(log, first, last - first)
        size = tuple(reversed(next(photo_frames(folder, 0.0)[0]).image_rgb.shape[:2]))
    else:
        video = Path(video or "")
        if not video.is_file():
            raise SkyfixError(f"video not found: {video}")
        start = (parse_utc(video_start) if video_start else log.span_s[0]) + time_offset_s
        notes = [] if video_start else ["no --video-start: the video is taken to start with the log"]
        notes += check_overlap(log, start, video_seconds(video))
        cap = cv2.VideoCapture(str(video))
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        cap.release()
        frames = video_frames(video, start, every)
    if size != (cfg.camera.width_px, cfg.camera.height_px):
        notes.append(f"camera size taken from the images: {size[0]} x {size[1]} (the config's intrinsics fit it "
                     "only if they are a field of view)")
        cfg = dataclasses.replace(cfg, camera=dataclasses.replace(cfg.camera, width_px=size[0], height_px=size[1]))
    if log.partial_end:
        notes.append("the log ends inside a message: it was cut (a truncated file); its last record was skipped")
    return replay(pack_path, frames, log, cfg, Path(out_dir), notes, progress, {"time_offset_s": time_offset_s})
