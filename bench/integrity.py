"""Integrity under the disturbances of real flight, resection, telemetry at capture time (docs/integrity.md)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from skyfix.bench.common import fmt, pack_drone_embedder


def telemetry_lag_errors(lag_s: float, telemetry_hz: float = 20.0, duration_s: float = 120.0,
                         camera_hz: float = 3.0, alt_agl_m: float = 120.0, seed: int = 0) -> dict:
    """Attitude and height used to rectify each frame of a simulated lawnmower flight (12 m/s,
    rounded turns, 3 deg wobble, no sensor noise) against the truth at its capture time, for
    the newest telemetry when the frame is processed lag_s later (what the loop did before) and
    for telemetry interpolated at the capture time. Returns {method: {quantity: errors}}.

    The ground error is what a wrong attitude does to a fix: the vehicle is placed from the
    image-centre ray, so it moves by the difference of that ray's ground point."""
    from pymavlink.dialects.v20 import common as mavlink2
    from skyfix.config import SimConfig
    from skyfix.edge.camera import PinholeCamera, ground_of_pixel, image_from_ground
    from skyfix.firmware_bridge.telemetry import TelemetryStore
    from skyfix.sim.route import Trajectory, make_route, round_corners
    from skyfix.sim.vehicle import VehicleModel
    cfg = SimConfig(route="lawnmower", length_m=1500.0, alt_agl_m=alt_agl_m, seed=seed)
    traj = Trajectory(round_corners(make_route(cfg, (-600, -600, 600, 600), 100.0), cfg.speed_m_s ** 2 / 2.5),
                      cfg.speed_m_s)
    vehicle, store, cam = VehicleModel(traj, cfg), TelemetryStore(), PinholeCamera.from_hfov(640, 480, 70.0)
    boot_minus_mono_s, link_delay_s = 60.0, 0.005
    samples = iter(np.arange(0.0, duration_s + 1.0, 1.0 / telemetry_hz))

    def receive_until(t_mono_s):  # the telemetry that has arrived by t_mono_s (as in flight)
        while (t := next(samples)) + link_delay_s <= t_mono_s:
            p = vehicle.pose(t)
            ms, recv = int(round((t + boot_minus_mono_s) * 1e3)), t + link_delay_s
            yaw = (p.yaw_rad + np.pi) % (2 * np.pi) - np.pi
            store.update(mavlink2.MAVLink_attitude_message(ms, p.roll_rad, p.pitch_rad, yaw, 0, 0, 0), recv)
            store.update(mavlink2.MAVLink_global_position_int_message(
                ms, 0, 0, 0, int(p.agl_m * 1e3), 0, 0, 0, 65535), recv)

    def centre_en(roll, pitch, yaw, agl):
        return np.array(ground_of_pixel(image_from_ground(cam, roll, pitch, yaw, 0.0, 0.0, agl), cam.cx_px, cam.cy_px))

    out = {m: {"heading_deg": [], "tilt_deg": [], "ground_m": []} for m in ("newest at processing", "interpolated at capture")}
    for t in np.arange(1.0, duration_s, 1.0 / camera_hz):
        receive_until(t + lag_s)  # the frame is processed lag_s after its capture
        true = vehicle.pose(t)
        # The newest values when processed: asked at processing time (max age widened by the lag
        # so they are never refused); interpolated: asked at capture time.
        for method, ask_s, max_age_s in (("newest at processing", t + lag_s, 0.5 + lag_s),
                                         ("interpolated at capture", t, 0.5)):
            tel = store.at(ask_s, max_age_s)
            d_yaw = (tel.yaw_rad - true.yaw_rad + np.pi) % (2 * np.pi) - np.pi
            e = out[method]
            e["heading_deg"].append(abs(np.degrees(d_yaw)))
            e["tilt_deg"].append(np.degrees(np.hypot(tel.roll_rad - true.roll_rad, tel.pitch_rad - true.pitch_rad)))
            e["ground_m"].append(float(np.linalg.norm(
                centre_en(tel.roll_rad, tel.pitch_rad, tel.yaw_rad, tel.alt_agl_m)
                - centre_en(true.roll_rad, true.pitch_rad, true.yaw_rad, true.agl_m))))
    return out


def bench_telemetry(lags_s=(0.1, 0.2, 0.3)) -> str:
    """Markdown table of telemetry_lag_errors for several processing lags."""
    rows = ["| processing lag | telemetry used | heading error p50 / p95 / max deg | tilt error p50 / p95 / max deg | "
            "ground error p50 / p95 / max m |", "|---|---|---|---|---|"]
    for lag in lags_s:
        for method, e in telemetry_lag_errors(lag).items():
            cells = [" / ".join(f"{np.percentile(e[k], q):.2f}" for q in (50, 95, 100))
                     for k in ("heading_deg", "tilt_deg", "ground_m")]
            rows.append(f"| {lag * 1e3:.0f} ms | {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def bench_resection(pack_path: str, views: int = 15, attitude_err_deg: float = 3.0,
                    height_err_frac: float = 0.03, seed: int = 0) -> str:
    """Vehicle position from a match, placed (a) by the telemetry tilt (the match centre minus
    the crop's offset from the nadir) and (b) by camera resection, when the telemetry attitude
    is off by attitude_err_deg (1 sigma per axis) and the height by height_err_frac. Rendered
    views at 120 m over the pack's map; markdown table."""

    from skyfix.config import NavConfig
    from skyfix.edge.camera import PinholeCamera, image_from_crop, rectify
    from skyfix.edge.navigator import open_matcher
    from skyfix.edge.pose import image_px_of_crop_px, resect
    from skyfix.pack.tilepack import TilePack
    from skyfix.render.views import ViewPose, render_view
    pack = TilePack.open(pack_path)
    canvas, cam, rng = pack.canvas(), PinholeCamera.from_hfov(640, 480, 70.0), np.random.default_rng(seed)
    matcher, size_m = open_matcher(pack, NavConfig()), pack.tile_size_m
    px = int(round(size_m / canvas.gsd_m))
    e0, n0, e1, n1 = canvas.bounds_en()
    tilt, resected = [], []
    while len(tilt) < views:
        pose = ViewPose(rng.uniform(e0 + 250, e1 - 250), rng.uniform(n0 + 250, n1 - 250), 120.0,
                        math.radians(rng.uniform(-8, 8)), math.radians(rng.uniform(-8, 8)), rng.uniform(0, 2 * math.pi))
        img = render_view(canvas, cam, pose)[0]
        dr, dp, dy = np.radians(rng.normal(0, attitude_err_deg, 3))
        att = (pose.roll_rad + dr, pose.pitch_rad + dp, pose.yaw_rad + dy, 120.0 * (1 + rng.normal(0, height_err_frac)))
        crop, _, (oe, on) = rectify(img, cam, *att, size_m, px)
        m = matcher.match(crop, canvas.gsd_m, (pose.east_m, pose.north_m), 80.0)
        if m is None:
            continue
        t = math.radians(m.rotation_deg)
        tilt.append(math.hypot(m.east_m - (oe * math.cos(t) + on * math.sin(t)) - pose.east_m,
                               m.north_m - (on * math.cos(t) - oe * math.sin(t)) - pose.north_m))
        cp = resect(cam, image_px_of_crop_px(m.crop_px, image_from_crop(cam, *att, size_m, px)[0]), m.ground_en_m)
        resected.append(math.inf if cp is None else math.hypot(cp.east_m - pose.east_m, cp.north_m - pose.north_m))
    rows = [f"| vehicle placed by ({views} views, attitude error {attitude_err_deg:g} deg, height error "
            f"{100 * height_err_frac:g} %) | median m | p90 m | max m |", "|---|---|---|---|"]
    for name, e in (("telemetry tilt (before)", tilt), ("camera resection (now)", resected)):
        rows.append(f"| {name} | {np.median(e):.2f} | {np.percentile(e, 90):.2f} | {np.max(e):.2f} |")
    return "\n".join(rows)


_LENS = {"camera": {"fx_px": 457.0, "dist_coeffs": [-0.25, 0.08, 0.0, 0.0]}}


_MIX = {"wind_m_s": 8.0, "wind_from_deg": 300.0, "gust_m_s": 3.0, "attitude_bias": {"yaw_deg": 5.0},
        "attitude_drift_per_s": {"roll_deg": 0.1, "pitch_deg": -0.05}, "attitude_lag_s": 0.1,
        "time_offset_s": 0.03, "time_jitter_s": 0.01, "exposure_ms": 4.0, "gain_jitter": 0.2}
# name -> (sim.disturb, other config sections). Every row flies with the tilt that holds the track
# against the air (tilt_from_drag), so "calm" differs from the rows below by their disturbance only.


INTEGRITY_CONDITIONS = {
    "calm": ({}, {}),
    "wind 8 m/s": ({"wind_m_s": 8.0, "wind_from_deg": 300.0}, {}),
    "wind 8 m/s, gusts 3 m/s": ({"wind_m_s": 8.0, "wind_from_deg": 300.0, "gust_m_s": 3.0}, {}),
    "roll bias 10 deg": ({"attitude_bias": {"roll_deg": 10.0}}, {}),
    "attitude drift 0.2 deg/s": ({"attitude_drift_per_s": {"roll_deg": 0.2, "pitch_deg": 0.2}}, {}),
    "attitude step 8 deg at 20 s": ({"attitude_step": {"roll_deg": -8.0}, "attitude_step_at_s": 20.0}, {}),
    "attitude lag 0.2 s": ({"attitude_lag_s": 0.2, "gust_m_s": 3.0}, {}),
    "yaw bias 15 deg": ({"attitude_bias": {"yaw_deg": 15.0}}, {}),
    "time offset 50 ms, jitter 20 ms": ({"time_offset_s": 0.05, "time_jitter_s": 0.02}, {}),
    "lens distortion (k1 -0.25)": ({}, _LENS),
    "motion blur 8 ms, gain jitter 0.3": ({"exposure_ms": 8.0, "gain_jitter": 0.3}, {}),
    "mix: all of the above, milder": (_MIX, _LENS),
}


def _integrity_row(name: str, s: dict, handover_availability: float) -> str:
    e, cal = s["error_m"], s["calibration"]
    beyond, first_fix_s = cal.get("beyond_3x", 0), s.get("time_to_first_fix_s")
    autopilot = s.get("autopilot_error_m")
    extra = "" if autopilot is None else (f" | {fmt(autopilot['median'])} / {fmt(autopilot['max'])} | "
                                          f"{s['ekf_glitches']} | {'yes' if s['mission_completed'] else 'NO'}")
    return (f"| {name} | {fmt(100 * handover_availability)} % | {fmt(100 * s['availability'])} % | "
            f"{fmt(e['median'])} / {fmt(e['p95'])} / {fmt(e['max'])} | {fmt((s.get('accuracy_m') or {}).get('median'), '{:.2f}')} | "
            f"{fmt(cal.get('median_error_over_accuracy'), '{:.2f}')} | "
            f"{fmt(None if cal.get('within_1x') is None else 100 * cal['within_1x'])} % | "
            f"{fmt(cal.get('worst_error_over_accuracy'), '{:.2f}')} | **{beyond}** | {s['n_published']} | {fmt(first_fix_s)} | "
            f"{sum(v for k, v in s.get('integrity', {}).items() if k.startswith('attitude'))}{extra} |")


def _availability_from(track_csv: str, start_s: Optional[float], end_s: float) -> float:
    """Availability of a flight's messages (its track.csv) from start_s (the first fix or the
    hand-over) to end_s; 0 when it never started."""
    import csv

    from skyfix.sim.score import availability
    if start_s is None:
        return 0.0
    with open(track_csv) as f:
        t = np.array([float(row["t_s"]) for row in csv.DictReader(f)])
    return availability(t, start_s, end_s)


def bench_integrity(pack_path: str, length_m: float = 600.0, conditions: Optional[list] = None,
                    sitl_wind_m_s: tuple = (), out: str = "out/bench/integrity") -> str:
    """Fly the simulated drone through INTEGRITY_CONDITIONS (each alone, and a milder mix), and
    ArduCopter SITL in each of sitl_wind_m_s, and print per condition: availability from the
    first fix (SIL) or the hand-over (SITL) to the end and over the whole flight, error median
    / p95 / max, the worst error-to-accuracy ratio, messages beyond 3x their accuracy, frames
    where the image contradicted the telemetry's attitude, and in SITL the autopilot's own
    error, its GPS glitches and whether the mission completed."""
    import json

    from skyfix.config import load_config
    from skyfix.sim.run import run_sim
    embedder = pack_drone_embedder(pack_path)
    rows = ["| condition | availability from first fix / hand-over | whole flight | error median / p95 / max m | "
            "accuracy median m | median error / accuracy | within 1x | worst error / accuracy | beyond 3x | messages | "
            "first fix s | attitude contradicted (frames) | autopilot error median / max m | EKF glitches | "
            "mission completed |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    names = conditions or list(INTEGRITY_CONDITIONS)
    for name in names:
        disturb, sections = INTEGRITY_CONDITIONS[name]
        cfg = load_config(overrides={**sections, "sim": {"route": "straight", "length_m": length_m,
                                                          "disturb": {"tilt_from_drag": True, **disturb}}})
        slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
        s = run_sim(pack_path, embedder, cfg, out_dir=f"{out}/{slug}", progress=False)
        handover = _availability_from(f"{out}/{slug}/track.csv", s.get("time_to_first_fix_s"), s["duration_s"])
        rows.append(_integrity_row(name, s, handover) + " | | |")
        print(rows[-1], flush=True)
    for wind in sitl_wind_m_s:
        from skyfix.sim.sitl_flight import run_sitl
        cfg = load_config(overrides={"sim": {"route": "straight", "length_m": 500.0, "declination_deg": 8.66,
                                             "disturb": {"wind_m_s": wind, "wind_from_deg": 180.0}}})
        s = run_sitl(pack_path, embedder, cfg, out_dir=f"{out}/sitl_wind_{wind:g}", progress=False)
        end_s = s["handover_s"] + s["mission_s"] if s["handover_s"] is not None and s["mission_s"] else 0.0
        handover = _availability_from(f"{out}/sitl_wind_{wind:g}/track.csv", s["handover_s"], end_s)
        rows.append(_integrity_row(f"ArduCopter SITL, wind {wind:g} m/s", s, handover))
        print(rows[-1], flush=True)
        Path(f"{out}/sitl_wind_{wind:g}.json").write_text(json.dumps(s, indent=2, default=str))
    return "\n".join(rows)
