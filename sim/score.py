"""Scoring a simulated flight: errors of what the autopilot received, availability, calibration
against the reported accuracy; the track as CSV and PNG; the summary as text."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import cv2
import numpy as np

from skyfix.errors import SkyfixError
from skyfix.pack.canvas import MapCanvas
from skyfix.render.views import ViewPose

if TYPE_CHECKING:
    from skyfix.pack.blocks import MapBlocks


def scored_fix(frame, t_s: float, kind: str, lat_deg: float, lon_deg: float, horiz_accuracy_m: float,
               pose: ViewPose, velocity: Optional[tuple] = None) -> dict:
    """One fix the autopilot received, against the true pose at reception (local metres).
    `velocity` when the message carried one: (vel_east_m_s, vel_north_m_s, speed_accuracy_m_s,
    true_vel_east_m_s, true_vel_north_m_s); its error is the 2-D difference in m/s."""
    e, n, _ = frame.to_enu(lat_deg, lon_deg)
    rec = {"t_s": t_s, "type": kind, "east_m": float(e), "north_m": float(n),
           "true_east_m": pose.east_m, "true_north_m": pose.north_m,
           "horiz_accuracy_m": float(horiz_accuracy_m),
           "error_m": float(math.hypot(e - pose.east_m, n - pose.north_m))}
    if velocity is not None:
        ve, vn, acc, true_ve, true_vn = (float(v) for v in velocity)
        rec.update(vel_east_m_s=ve, vel_north_m_s=vn, speed_accuracy_m_s=acc,
                   vel_error_m_s=math.hypot(ve - true_ve, vn - true_vn))
    return rec


def velocity_score(received: list[dict]) -> Optional[dict]:
    """Error of the velocities the autopilot received (2-D, m/s) against their reported speed
    accuracy, or None when no message carried one."""
    with_vel = [r for r in received if "vel_error_m_s" in r]
    if not with_vel:
        return None
    err = np.array([r["vel_error_m_s"] for r in with_vel])
    acc = np.array([r["speed_accuracy_m_s"] for r in with_vel])
    return {"n": len(err), "error_m_s": {"median": float(np.median(err)), "p95": float(np.percentile(err, 95)),
                                         "max": float(err.max())},
            "speed_accuracy_m_s": {"median": float(np.median(acc)), "p95": float(np.percentile(acc, 95)),
                                   "max": float(acc.max())},
            "within_1x": float(np.mean(err <= acc)), "within_3x": float(np.mean(err <= 3 * acc))}


def availability(t_received_s: np.ndarray, from_s: float, to_s: float, fresh_s: float = 0.5) -> float:
    """Share of [from_s, to_s) (sampled every 0.1 s) with a message received in the last fresh_s;
    t_received_s sorted."""
    grid = np.arange(from_s, to_s, 0.1)
    if not len(grid) or not len(t_received_s):
        return 0.0
    idx = np.searchsorted(t_received_s, grid, side="right") - 1
    fresh = (idx >= 0) & (grid - t_received_s[np.clip(idx, 0, None)] <= fresh_s)
    return float(fresh.mean())


def within_flight(received: list[dict], duration_s: float) -> list[dict]:
    """The messages received while the flight lasts (t_s <= duration_s): what is scored and
    written to track.csv (`score`)."""
    return [r for r in received if r["t_s"] <= duration_s]


def drift_at(samples: list, t_mono_s: Optional[float], home_en: tuple) -> Optional[dict]:
    """Where the truth was at t_mono_s relative to home (the blind climb's drift before the
    hand-over): {east_m, north_m, distance_m, towards_deg (clockwise from north)}; None before
    a hand-over or without samples. samples: the SITL harness's (t_mono_s, true_east_m, ...)."""
    if t_mono_s is None or not samples:
        return None
    s = min(samples, key=lambda x: abs(x.t_mono_s - t_mono_s))
    de, dn = s.true_east_m - home_en[0], s.true_north_m - home_en[1]
    return {"east_m": round(de, 1), "north_m": round(dn, 1), "distance_m": round(math.hypot(de, dn), 1),
            "towards_deg": round(math.degrees(math.atan2(de, dn)) % 360.0, 1)}


def flight_summary(vehicle, pilot, result: dict, nav, kinds: list, bridge, name: str) -> tuple:
    """What both SITL harnesses' `--json` summaries hold (ArduPilot's and PX4's add their
    EKF's own figures): skyfix's messages scored against the truth, the autopilot's estimate
    against the truth from the hand-over to the landing, the failsafes, the mission, the blind
    climb's drift, the modes, the pilot's steps and the navigator's counters. vehicle: the
    harness's vehicle (samples, statustexts, modes, received(), home_en, t0_mono_s). Returns
    (summary, the STATUSTEXTs as (s since start, text), (hand-over, landing) monotonic s)."""
    t0 = vehicle.t0_mono_s
    start, end = result.get("handover_t_mono_s"), result.get("land_t_mono_s")
    flying = [s for s in vehicle.samples if start is not None and start <= s.t_mono_s <= (end or math.inf)
              and s.est_east_m is not None]
    err = np.array([math.hypot(s.est_east_m - s.true_east_m, s.est_north_m - s.true_north_m) for s in flying])
    texts = [(round(t - t0, 1), text) for t, _, text in vehicle.statustexts]
    duration_s = (vehicle.samples[-1].t_mono_s - t0) if vehicle.samples else 0.0
    summary = score(vehicle.received(), duration_s)
    summary.update({
        "vehicle": name,
        "autopilot_error_m": ({"median": float(np.median(err)), "p95": float(np.percentile(err, 95)),
                               "max": float(err.max())} if len(err) else {"median": None, "p95": None, "max": None}),
        "failsafes": [f"{t} s: {text}" for t, text in texts if "failsafe" in text.lower()],
        "mission_completed": bool(result.get("mission_completed")),
        "handover_s": None if start is None else round(start - t0, 1),
        "handover_drift": drift_at(vehicle.samples, start, vehicle.home_en),
        "mission_s": None if start is None or end is None else round(end - start, 1),
        "modes": [(round(t - t0, 1), m) for t, m in vehicle.modes],
        "pilot": [(round(t - t0, 1), e) for t, e in (pilot.events if pilot else [])],
        "statustext": texts[-60:],
        "n_frames": len(kinds), "reasons": nav.reason_counts(), "integrity": nav.integrity_counts(),
        "accuracy_terms": nav.accuracy_terms(), "latency_ms": nav.timing_summary(),
        "link": {"stream_requests": bridge.stream_requests if bridge else 0},
    })
    return summary, texts, (start, end)


def score(received: list[dict], duration_s: float, fresh_s: float = 0.5) -> dict:
    """Errors of the published fixes, availability (share of time with a fix received in the last
    `fresh_s`), and calibration against the reported accuracy. Only messages received while the
    flight lasts (t_s <= duration_s) are scored: the simulated vehicle stands still at the
    route's end the instant it gets there, which no vehicle can (the publisher's last messages,
    sent on the track's velocity, would be scored against that)."""
    received = within_flight(received, duration_s)
    if not received:
        return {"error_m": {"median": None, "p95": None, "max": None}, "availability": 0.0,
                "n_published": 0, "calibration": {"within_1x": None, "within_3x": None},
                "time_to_first_fix_s": None}
    err = np.array([r["error_m"] for r in received])
    acc = np.array([r["horiz_accuracy_m"] for r in received])
    t = np.array([r["t_s"] for r in received])
    return {"error_m": {"median": float(np.median(err)), "p95": float(np.percentile(err, 95)),
                        "max": float(err.max())},
            "accuracy_m": {"median": float(np.median(acc)), "min": float(acc.min()), "max": float(acc.max())},
            "availability": availability(t, 0.0, duration_s, fresh_s),
            "n_published": int(len(err)),
            "calibration": {"within_1x": float(np.mean(err <= acc)), "within_3x": float(np.mean(err <= 3 * acc)),
                            "beyond_3x": int(np.sum(err > 3 * acc)),
                            "median_error_over_accuracy": float(np.median(err / acc)),
                            "worst_error_over_accuracy": float(np.max(err / acc))},
            "time_to_first_fix_s": float(t[0]), "velocity": velocity_score(received)}


ERROR_COLOURS_BGR = ((0, 200, 0), (0, 200, 255), (0, 0, 255))  # < 3 m, 3-10 m, >= 10 m


def plot_track(canvas: "MapCanvas | MapBlocks", truth_en: np.ndarray, received: list[dict], path: str | Path,
               max_px: int = 1200, estimate: Optional[list] = None, reference: str = "true track") -> Path:
    """PNG of the map for a person reading it at a glance: published fixes coloured by error
    (green < 3 m, orange 3-10 m, red >= 10 m), the autopilot's own estimate when given (blue),
    the true track drawn last (white over black, so it stays visible) with start and end
    markers, a scale bar, a north arrow, and the error summary in the title bar. reference: what
    the white track is, in the legend (a replay's is the log's GPS, not the truth)."""
    rgb, f = canvas.overview(max_px)  # a pack's map blocks are shrunk one by one
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)

    def px(e, n):
        c, r = canvas.px_from_en(e, n)
        return int(round((c + 0.5) * f)), int(round((r + 0.5) * f))

    for r in received:
        colour = ERROR_COLOURS_BGR[int(r["error_m"] >= 3.0) + int(r["error_m"] >= 10.0)]
        cv2.circle(img, px(r["east_m"], r["north_m"]), 3, colour, -1, cv2.LINE_AA)
    if estimate:
        est = np.array([px(r["east_m"], r["north_m"]) for r in estimate], np.int32)
        cv2.polylines(img, [est], False, (255, 120, 0), 1, cv2.LINE_AA)
    track = np.array([px(e, n) for e, n in truth_en], np.int32)
    cv2.polylines(img, [track], False, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.polylines(img, [track], False, (255, 255, 255), 2, cv2.LINE_AA)
    if len(track):
        _marker(img, tuple(track[0]), "start", (0, 200, 0))
        _marker(img, tuple(track[-1]), "end", (0, 0, 220))
    _scale_bar(img, canvas.gsd_m / f)
    _north_arrow(img)
    err = np.array([r["error_m"] for r in received])
    title = (f"{len(received)} fixes published; error median {np.median(err):.1f} m, p95 "
             f"{np.percentile(err, 95):.1f} m, max {err.max():.1f} m" if len(err) else "no fix published")
    legend = f"fixes: green < 3 m, orange 3-10 m, red >= 10 m (against the {reference}); {reference} white" + (
        "; autopilot estimate blue" if estimate else "")
    bar = np.full((56, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (10, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(bar, legend, (10, 46), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.vstack([bar, img])):
        raise SkyfixError(f"cannot write {path}")
    return Path(path)


def _marker(img: np.ndarray, at: tuple, label: str, colour: tuple) -> None:
    cv2.circle(img, at, 8, (255, 255, 255), -1, cv2.LINE_AA)
    cv2.circle(img, at, 6, colour, -1, cv2.LINE_AA)
    cv2.putText(img, label, (at[0] + 10, at[1] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 2, cv2.LINE_AA)


def _scale_bar(img: np.ndarray, m_per_px: float) -> None:
    """A bar of a round length (10, 20, 50, 100, ... m) near a fifth of the image width."""
    target_m = img.shape[1] / 5 * m_per_px
    length_m = max(v for v in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if v <= max(target_m, 10))
    length_px = int(round(length_m / m_per_px))
    x0, y0 = 15, img.shape[0] - 20
    cv2.rectangle(img, (x0 - 5, y0 - 25), (x0 + length_px + 5, y0 + 8), (255, 255, 255), -1)
    cv2.line(img, (x0, y0), (x0 + length_px, y0), (0, 0, 0), 3)
    cv2.putText(img, f"{length_m} m", (x0, y0 - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)


def _north_arrow(img: np.ndarray) -> None:
    x, y = img.shape[1] - 30, 20
    cv2.rectangle(img, (x - 18, y - 12), (x + 18, y + 52), (255, 255, 255), -1)
    cv2.arrowedLine(img, (x, y + 40), (x, y + 5), (0, 0, 0), 2, cv2.LINE_AA, tipLength=0.35)
    cv2.putText(img, "N", (x - 15, y + 30), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)


def write_track_csv(received: list[dict], path: str | Path) -> Path:
    with open(path, "w", newline="") as f:
        keys = ["t_s", "type", "true_east_m", "true_north_m", "east_m", "north_m", "horiz_accuracy_m", "error_m"]
        if any("vel_error_m_s" in r for r in received):
            keys += ["vel_east_m_s", "vel_north_m_s", "speed_accuracy_m_s", "vel_error_m_s"]
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        for r in received:
            w.writerow({k: r[k] for k in keys if k in r})
    return Path(path)


def frame_record(t: float, pose: ViewPose, res, pack) -> dict:
    """One frame of the flight: whether it gave a fix, why (kind and text), its error and accuracy."""
    rec = {"t_s": t, "fix": res.fix is not None, "kind": res.kind.value, "reason": res.reason, "error_m": None,
           "acc_m": None, "frame_ms": float(sum(res.timings_ms.values()))}
    if res.fix is not None:
        e, n, _ = pack.frame.to_enu(res.fix.lat_deg, res.fix.lon_deg)
        rec["error_m"] = float(math.hypot(e - pose.east_m, n - pose.north_m))
        rec["acc_m"] = res.fix.horiz_accuracy_m
    return rec


def frame_summary(frames: list[dict], nav, duration: float, startup_s: float) -> dict:
    """Per-frame figures: fixes, their errors, confident wrong fixes, latency, reasons."""
    err = np.array([f["error_m"] for f in frames if f["fix"]])
    acc = np.array([f["acc_m"] for f in frames if f["fix"]])
    lat = nav.timing_summary()
    total = lat.get("frame_total")
    return {
        "n_frames": len(frames),
        "n_fixes": int(len(err)),
        "frame_fix_error_m": {"median": float(np.median(err)) if len(err) else None,
                              "p95": float(np.percentile(err, 95)) if len(err) else None,
                              "max": float(err.max()) if len(err) else None},
        "confident_wrong_fixes": int(np.sum(err > 3 * acc)) if len(err) else 0,
        "latency_ms": lat,
        "sustainable_fps": 1000.0 / total["p50"] if total else None,
        "frames_per_s": len(frames) / duration,
        "startup_s": startup_s,
        "reasons": nav.reason_counts(),
        "integrity": nav.integrity_counts(), "accuracy_terms": nav.accuracy_terms(),
    }


def velocity_lines(s: dict) -> list[str]:
    """The summary's velocity line, when the fixes carried velocity."""
    v = s.get("velocity")
    if not v:
        return []
    return [f"velocity sent in {v['n']} messages: error median/p95 {v['error_m_s']['median']:.2f}/"
            f"{v['error_m_s']['p95']:.2f} m/s, speed accuracy median/max {v['speed_accuracy_m_s']['median']:.2f}/"
            f"{v['speed_accuracy_m_s']['max']:.2f} m/s, within 1x {v['within_1x']:.1%}, 3x {v['within_3x']:.1%}"]


def format_summary(s: dict) -> str:
    e, c = s["error_m"], s["calibration"]
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [f"route {s['route_m']:.0f} m at {s['alt_agl_m']:.0f} m AGL, {s['duration_s']:.0f} s, frames from {s['frames_from']}",
             f"published fixes {s['n_published']} ({s['protocol']}): error median {fmt(e['median'])} m, "
             f"p95 {fmt(e['p95'])} m, max {fmt(e['max'])} m; availability {s['availability']:.1%}",
             f"calibration: within 1x accuracy {fmt(None if c['within_1x'] is None else 100 * c['within_1x'])} %, "
             f"within 3x {fmt(None if c['within_3x'] is None else 100 * c['within_3x'])} % ({c.get('beyond_3x', 0)} "
             f"beyond 3x), median error/accuracy "
             f"{'n/a' if c.get('median_error_over_accuracy') is None else format(c['median_error_over_accuracy'], '.2f')}",
             f"frames {s['n_frames']}, fixes {s['n_fixes']}, confident wrong fixes {s['confident_wrong_fixes']}; "
             f"first fix after {fmt(s['time_to_first_fix_s'])} s",
             "latency ms (p50/p95): " + ", ".join(f"{k} {v['p50']:.0f}/{v['p95']:.0f}"
                                                  for k, v in s["latency_ms"].items() if v),
             f"sustainable {fmt(s['sustainable_fps'])} frames/s on this machine; reasons {s['reasons']}"]
    lines += velocity_lines(s)
    t = s.get("accuracy_terms") or {}
    if t.get("ground") == "flat ground assumed":
        lines.append(f"no terrain in the pack: every accuracy allows for slopes of {t['ground_slope_deg']:g} deg "
                     "(nav.ground_slope_deg); a DEM removes it")
    g = s.get("map_gaps")
    if g:
        lines.append(f"map gaps ({g['gaps']} x {g['gap_s']:.0f} s): {g['published_in_gaps']} published inside, coasted "
                     f"{g['coasted_s']} s; error median/max "
                     + (f"{g['error_m']['median']:.1f}/{g['error_m']['max']:.1f} m, accuracy median/max "
                        f"{g['accuracy_m']['median']:.1f}/{g['accuracy_m']['max']:.1f} m, within 3x {g['within_3x']:.1%}"
                        if g["error_m"] else "n/a"))
    return "\n".join(lines)


def rss_trend_mb_per_h(samples: list) -> float:
    """Slope of a least-squares line through (t_min, rss_mb), in MB per hour: a leak shows as a
    steady slope, while the allocator's ups and downs (tens of MB either way between minutes in
    the 12-minute soaks) would make an end-minus-start figure say whatever the last sample was."""
    if len(samples) < 2:
        return float("nan")
    t = np.array([x["t_min"] for x in samples])
    return float(np.polyfit(t, [x["rss_mb"] for x in samples], 1)[0] * 60.0)


def rss_floors_mb(samples: list) -> tuple:
    """(lowest RSS of the first third of the samples, of the last third), MB. A leak lifts the
    floor; memory the allocator takes and gives back between samples does not."""
    rss = [x["rss_mb"] for x in samples]
    third = max(1, len(rss) // 3)
    return min(rss[:third]), min(rss[-third:])


def odometry_errors(folder: Path, method: str, features_model: str = "models/xfeat",
                    fx_px: float = 702.0, agl_m: Optional[float] = None) -> list[dict]:
    """Consecutive photos of a real flight (EXIF GPS): the image displacement at the EXIF
    height against the GPS displacement. One dict per pair: gps_m, vo_m (None when no match)."""
    import cv2
    from skyfix.edge.camera import PinholeCamera
    from skyfix.edge.features import XFeatExtractor, open_extractor
    from skyfix.edge.odometry import frame_shift
    from skyfix.edge.sources import read_exif
    from skyfix.geo import LocalFrame
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    exifs = [read_exif(p) for p in paths]
    frame = LocalFrame(exifs[0]["lat_deg"], exifs[0]["lon_deg"])
    # Frames are finer than a map: XFeat at their own resolution.
    ex = XFeatExtractor(features_model, upscale=1.0) if method == "xfeat" else open_extractor(method)
    out, prev = [], None
    for path, exif in zip(paths, exifs):
        img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        cam = PinholeCamera(w, h, fx_px, fx_px, (w - 1) / 2, (h - 1) / 2)
        e, n, _ = frame.to_enu(exif["lat_deg"], exif["lon_deg"])
        if prev is not None:
            shift = frame_shift(prev[0], img, ex, cam, agl_m or exif["alt_m"])
            out.append({"pair": f"{prev[2]}->{path.stem}", "gps_m": float(np.hypot(e - prev[1][0], n - prev[1][1])),
                        "vo_m": None if shift is None else shift.distance_m,
                        "inliers": 0 if shift is None else shift.inliers})
        prev = (img, (e, n), path.stem)
    return out
