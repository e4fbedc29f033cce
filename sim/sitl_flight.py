"""`skyfix sim --vehicle ardupilot-sitl`: a mission flown by the real ArduCopter on skyfix alone.

    take-off: ALT_HOLD climb (no position needed) to the hand-over height, where the camera's
              footprint holds a whole map tile; skyfix acquires and publishes GPS_INPUT; the
              EKF takes it as its only GPS (origin set in flight)
    mission:  GUIDED targets along the route, back over the take-off point
    landing:  back over the take-off point, ALT_HOLD descent (below the hand-over height the
              fixes stop, so the way down mirrors the way up), disarm on the ground

Frames are rendered from the map at the SITL's true pose (SIM_STATE), telemetry comes from the
SITL over skyfix's own MAVLink link, and GPS_INPUT goes back on that link, as on a real drone.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from skyfix.edge.frame_loop import SourceFrame, run_frame_loop
from skyfix.edge.camera import PinholeCamera
from skyfix.edge.navigator import Navigator
from skyfix.edge.fly import start_gnss_guard
from skyfix.firmware_bridge.link import MavlinkBridge
from skyfix.firmware_bridge.publisher import FixPublisher
from skyfix.sim.route import footprint_margin_m, make_route
from skyfix.sim.score import flight_summary, plot_track, velocity_lines, write_track_csv
from skyfix.sim.sitl import EKF_GPS_GLITCHING, SitlPilot, SitlVehicle, sim_params
from skyfix.render.views import render_view
from skyfix.pack.tilepack import TilePack

MIN_RENDER_AGL_M = 5.0  # below this the camera sees the ground too close to matter


def mission_waypoints(pack: TilePack, cfg, home_en: tuple) -> list[tuple]:
    """[(east_m, north_m)]: the configured route, then back over home."""
    margin_m = footprint_margin_m(PinholeCamera.from_config(cfg.camera), cfg.sim.alt_agl_m) + 20.0
    route = make_route(cfg.sim, pack.map_blocks().bounds_en(), margin_m)
    return [tuple(map(float, p)) for p in route] + [home_en]


def leg_timeout_s(from_en: Optional[tuple], prev_target_en: Optional[tuple], to_en: tuple, speed_m_s: float,
                  wind_m_s: float = 0.0) -> float:
    """Time allowed for a leg: 2.5x its length at the mission speed less the wind (a headwind
    leg in 8 m/s flew at 3.6 m/s over the ground), at least 2 m/s, plus 30 s. The length is from
    where the autopilot says the vehicle is (a climb in wind drifts it hundreds of metres before
    the first leg), else from the previous target. The pilot also gives up earlier on a leg
    that stops making progress (SitlPilot.goto)."""
    start = from_en or prev_target_en or to_en
    ground_m_s = max(speed_m_s - wind_m_s, 2.0)
    return math.hypot(to_en[0] - start[0], to_en[1] - start[1]) / ground_m_s * 2.5 + 30.0


def fly_mission(pilot, waypoints: list, agl_m: float, speed_m_s: float, result: dict,
                fault: Optional[dict], wind_m_s: float = 0.0) -> None:
    """The pilot's script (runs in its own thread), for either autopilot's pilot (SitlPilot,
    sim.px4_flight.Px4Pilot): arm and climb in its CLIMB_MODE (no position needed), wait for
    the estimator to take skyfix's position, fly the waypoints in its MISSION_MODE, land.
    Fills `result`."""
    result["mission_completed"] = False
    if not (pilot.prepare() and pilot.arm(pilot.CLIMB_MODE) and pilot.climb_to(agl_m)):
        return
    if not pilot.wait_for_position(timeout_s=120.0):
        pilot.abort()
        return
    result["handover_t_mono_s"] = time.monotonic()
    if not pilot.set_mode(pilot.MISSION_MODE):
        pilot.abort()
        return
    pilot.after_handover()
    prev_target = None
    reached = True
    for e, n in waypoints:
        if fault is not None and "start_mono_s" not in fault:
            fault["start_mono_s"] = time.monotonic() + fault["after_s"]
        reached &= pilot.goto(e, n, agl_m, timeout_s=leg_timeout_s(pilot.estimated_en(), prev_target, (e, n), speed_m_s,
                                                                      wind_m_s))
        if not pilot.armed():
            return
        prev_target = (e, n)
    result["land_t_mono_s"] = time.monotonic()
    landed = pilot.descend_and_land()
    result["mission_completed"] = bool(reached and landed)


def _telemetry_error(t_s: float, tel, pose) -> dict:
    """What the autopilot's telemetry said at the frame's capture time minus the truth."""
    def d(a, b, wrap=False):
        if a is None:
            return None
        x = a - b
        return float(math.degrees((x + math.pi) % (2 * math.pi) - math.pi)) if wrap else float(x)
    return {"t_s": round(t_s, 2), "agl_m": d(tel.alt_agl_m, pose.agl_m), "roll_deg": d(tel.roll_rad, pose.roll_rad, True),
            "pitch_deg": d(tel.pitch_rad, pose.pitch_rad, True), "yaw_deg": d(tel.yaw_rad, pose.yaw_rad, True)}


def _camera_loop(nav: Navigator, vehicle: SitlVehicle, bridge: MavlinkBridge, pack: TilePack,
                 cam: PinholeCamera, cfg, pilot_thread: threading.Thread, progress: bool,
                 telemetry_errors: list) -> list:
    """Frames at the camera rate from the true pose while the mission runs, through the one
    frame loop; returns reasons."""
    kinds: list = []
    canvas = pack.map_blocks(cache_blocks=32)

    def rendered():
        period, next_t = 1.0 / cfg.sim.camera_hz, time.monotonic()
        while pilot_thread.is_alive():
            now = time.monotonic()
            if now < next_t:
                time.sleep(min(next_t - now, 0.05))
                continue
            next_t = max(next_t + period, time.monotonic())
            pose = vehicle.true_pose()
            if pose is None or pose.agl_m < MIN_RENDER_AGL_M:
                continue
            yield SourceFrame(render_view(canvas, cam, pose)[0], now, f"sitl-{len(kinds):05d}", meta=pose)

    last_print = [0.0]

    def record(sf: SourceFrame, tel, res) -> None:
        now = sf.t_capture_s
        kinds.append(res.kind.value)
        telemetry_errors.append(_telemetry_error(now - vehicle.t0_mono_s, tel, sf.meta))
        if progress and now - last_print[0] >= 10:
            last_print[0] = now
            print(f"  {now - vehicle.t0_mono_s:5.0f} s  agl {sf.meta.agl_m:5.1f} m  frames {len(kinds)}  "
                  f"published {len(vehicle.sent_fixes)}  mode {vehicle.modes[-1][1] if vehicle.modes else '?'}",
                  flush=True)

    run_frame_loop(nav, rendered(), lambda t_s: bridge.telemetry.at(t_s, cfg.nav.telemetry_max_age_s), record)
    return kinds


def _terminate_cleanly() -> None:
    """SIGTERM raises SystemExit in the main thread, so the SITL is stopped and its folder
    removed by the `finally` blocks (Python's default would exit without running them)."""
    import signal
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_signal)


def _exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def _faulted(estimate, fault: Optional[dict]):
    """The navigator's estimate, withheld during the fault window (the camera 'blinded')."""
    def wrapped(now_s: float):
        start = (fault or {}).get("start_mono_s")
        if start is not None and start <= now_s < start + fault["duration_s"]:
            return None
        return estimate(now_s)
    return wrapped


def mission_setup(pack_path: str | Path, embedder, cfg) -> tuple:
    """What every SITL flight starts from: (pack, home (east_m, north_m) at the map's centre, home
    altitude m, PinholeCamera, Navigator over the pack with the home altitude as its ground)."""
    pack = TilePack.open(pack_path, expect_model_id=embedder.model_id)
    e0, n0, e1, n1 = pack.map_blocks().bounds_en()
    home_en = ((e0 + e1) / 2, (n0 + n1) / 2)
    home_alt = cfg.sim.ground_alt_msl_m
    cam = PinholeCamera.from_config(cfg.camera)
    nav = Navigator(pack, embedder, cam, dataclasses.replace(cfg.nav, ground_alt_msl_m=home_alt))
    return pack, home_en, home_alt, cam, nav


@dataclass
class Flown:
    """What `fly_on_autopilot` leaves: the pilot, the bridge, the mission's result (fly_mission),
    the frames' reasons and the telemetry's error at each frame."""

    pilot: object
    bridge: Optional[MavlinkBridge]
    result: dict
    kinds: list
    telemetry_errors: list
    guard: object = None  # edge.gnss_guard.GnssGuard beside a GNSS (its verdicts, events, summary)


def fly_on_autopilot(pack: TilePack, nav: Navigator, cam: PinholeCamera, cfg, vehicle, pilot, bridge_cfg,
                     connection: str, estimate_at, fault: Optional[dict], wind_m_s: float, progress: bool,
                     gnss_cfg=None) -> Flown:
    """The flight, for either autopilot (its vehicle running, its pilot made): skyfix's bridge on
    `connection` publishing `estimate_at` (bridge_cfg's protocol), the pilot's script
    (`fly_mission`) in its own thread, and frames rendered at the true pose through the frame
    loop until the script ends. With gnss_cfg (a GnssConfig), the GNSS watch runs beside
    (edge/gnss_guard.py). The bridge, the publisher, the watch and the pilot are
    closed after."""
    bridge = publisher = guard = None
    result: dict = {}
    telemetry_errors: list = []
    kinds: list = []
    try:
        bridge = MavlinkBridge.from_config(bridge_cfg, connection).start()
        publisher = FixPublisher.from_config(bridge, estimate_at, bridge_cfg, on_sent=vehicle.record_fix).start()
        if gnss_cfg is not None:
            guard = start_gnss_guard(dataclasses.replace(cfg, gnss=gnss_cfg, bridge=bridge_cfg), bridge, nav, pack.frame)
        script = threading.Thread(target=fly_mission, daemon=True, args=(
            pilot, mission_waypoints(pack, cfg, vehicle.home_en), cfg.sim.alt_agl_m, cfg.sim.speed_m_s, result,
            fault, wind_m_s))
        script.start()
        kinds = _camera_loop(nav, vehicle, bridge, pack, cam, cfg, script, progress, telemetry_errors)
    finally:
        pilot.close()
        if guard is not None:
            guard.close()
        if publisher is not None:
            publisher.close()
        if bridge is not None:
            bridge.close()
    return Flown(pilot, bridge, result, kinds, telemetry_errors, guard)


def run_sitl(pack_path: str | Path, embedder, cfg, out_dir: str | Path = "out/sitl",
             fault_after_s: Optional[float] = None, fault_s: float = 10.0, binary: Optional[str] = None,
             progress: bool = True) -> dict:
    """Fly the mission with ArduCopter SITL on skyfix's fixes alone; returns the summary and
    writes track.csv, track.png and summary.json into out_dir."""
    pack, home_en, home_alt, cam, nav = mission_setup(pack_path, embedder, cfg)
    fault = None if fault_after_s is None else {"after_s": fault_after_s, "duration_s": fault_s}
    params = {"GPS1_DELAY_MS": 1}  # GPS_INPUT carries the estimate at its send time, not 200 ms old
    if cfg.bridge.send_velocity:
        params["EK3_SRC1_VELXY"] = 3  # GPS: fuse the horizontal velocity skyfix sends
    if cfg.sim.declination_deg is not None:
        params.update({"COMPASS_DEC": math.radians(cfg.sim.declination_deg), "COMPASS_AUTODEC": 0})
    params.update(sim_params(cfg.sim))
    _terminate_cleanly()
    vehicle = SitlVehicle(pack.frame, home_alt, binary=binary, home_en=home_en, params=params).start()
    try:
        flown = fly_on_autopilot(pack, nav, cam, cfg, vehicle, SitlPilot(vehicle),
                                 dataclasses.replace(cfg.bridge, protocol="ardupilot"), vehicle.skyfix_connection,
                                 _faulted(nav.estimate_at, fault), fault,
                                 cfg.sim.disturb.wind_m_s + cfg.sim.disturb.gust_m_s, progress)
    finally:
        vehicle.close()
    summary = summarise_sitl(vehicle, flown.pilot, flown.result, nav, flown.kinds, fault, flown.bridge)
    summary["telemetry_error"] = flown.telemetry_errors
    write_sitl_outputs(pack, vehicle, summary, Path(out_dir))
    return summary


def summarise_sitl(vehicle: SitlVehicle, pilot: SitlPilot, result: dict, nav: Navigator, kinds: list,
                   fault: Optional[dict], bridge) -> dict:
    """The `--json` summary (`score.flight_summary`), with ArduPilot's EKF glitches and the
    blackout fault's recovery."""
    summary, texts, _ = flight_summary(vehicle, pilot, result, nav, kinds, bridge, "ardupilot-sitl")
    glitch_flags = sum(1 for a, b in zip(vehicle.samples, list(vehicle.samples)[1:])
                       if b.ekf_flags & EKF_GPS_GLITCHING and not a.ekf_flags & EKF_GPS_GLITCHING)
    # A glitch is seen twice (the EKF status flag and its message); "Glitch cleared" is its end.
    summary["ekf_glitches"] = glitch_flags + sum("glitch" in t.lower() and "cleared" not in t.lower() for _, t in texts)
    started = fault and "start_mono_s" in fault
    summary["fault"] = ({"from_s": round(fault["start_mono_s"] - vehicle.t0_mono_s, 1),
                         "duration_s": fault["duration_s"]} if started else None)
    if started:
        summary["fault_recovery"] = _fault_recovery(vehicle, fault)
    return summary


def _fault_recovery(vehicle: SitlVehicle, fault: dict) -> dict:
    """The autopilot's error during the blackout and in the 10 s after the fixes return, and the
    largest jump of its estimate from one sample to the next (beyond the true motion) then."""
    t0, t1 = fault["start_mono_s"], fault["start_mono_s"] + fault["duration_s"]
    est = [s for s in vehicle.samples if s.est_east_m is not None]

    def worst(a, b):
        e = [math.hypot(s.est_east_m - s.true_east_m, s.est_north_m - s.true_north_m) for s in est if a <= s.t_mono_s < b]
        return round(max(e), 2) if e else None
    after = [s for s in est if t1 <= s.t_mono_s < t1 + 10.0]
    jumps = [math.hypot((b.est_east_m - a.est_east_m) - (b.true_east_m - a.true_east_m),
                        (b.est_north_m - a.est_north_m) - (b.true_north_m - a.true_north_m))
             for a, b in zip(after, after[1:])]
    return {"autopilot_error_max_during_m": worst(t0, t1), "autopilot_error_max_10s_after_m": worst(t1, t1 + 10.0),
            "largest_estimate_jump_after_m": round(max(jumps), 2) if jumps else None}


def write_sitl_outputs(pack: TilePack, vehicle: SitlVehicle, summary: dict, out_dir: Path) -> Path:
    import json
    out_dir.mkdir(parents=True, exist_ok=True)
    write_track_csv(vehicle.received(), out_dir / "track.csv")
    truth = np.array([(s.true_east_m, s.true_north_m) for s in vehicle.samples]) if vehicle.samples else np.zeros((1, 2))
    estimate = [{"east_m": s.est_east_m, "north_m": s.est_north_m} for s in vehicle.samples
                if s.est_east_m is not None]
    plot_track(pack.map_blocks(), truth, vehicle.received(), out_dir / "track.png", estimate=estimate)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return out_dir


def format_sitl_summary(s: dict) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    a, e = s["autopilot_error_m"], s["error_m"]
    return "\n".join([
        f"ArduCopter SITL on skyfix alone: mission {'completed' if s['mission_completed'] else 'NOT completed'}; "
        f"hand-over at {fmt(s['handover_s'])} s, mission {fmt(s['mission_s'])} s",
        f"autopilot's estimate vs truth: median {fmt(a['median'])} m, p95 {fmt(a['p95'])} m, max {fmt(a['max'])} m",
        f"skyfix's GPS_INPUT vs truth: median {fmt(e['median'])} m, p95 {fmt(e['p95'])} m, max {fmt(e['max'])} m; "
        f"{s['n_published']} sent",
        f"EKF GPS glitches {s['ekf_glitches']}; failsafes {s['failsafes'] or 'none'}; fault {s['fault']}",
        f"modes {s['modes']}"] + velocity_lines(s))
