"""`skyfix sim`: a virtual drone flies a route over a real map in real time; skyfix navigates by
its camera and talks MAVLink over UDP to the vehicle (the simulated autopilot), which scores
every fix it receives.

    prepare_flight -> fly (camera frames -> Navigator; FixPublisher -> vehicle) -> summarise -> write
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from skyfix.edge.frame_loop import SourceFrame, run_frame_loop
from skyfix.edge.camera import PinholeCamera
from skyfix.edge.navigator import Navigator
from skyfix.errors import SkyfixError
from skyfix.firmware_bridge.link import MavlinkBridge
from skyfix.firmware_bridge.publisher import FixPublisher
from skyfix.sim.autopilot import SimAutopilot
from skyfix.sim.camera import SimCamera
from skyfix.sim.route import Trajectory, footprint_margin_m, make_route, round_corners
from skyfix.sim.score import frame_record, frame_summary, plot_track, score, within_flight, write_track_csv
from skyfix.sim.vehicle import VehicleModel
from skyfix.pack.tilepack import TilePack

TURN_ACCEL_M_S2 = 2.5  # lateral acceleration in turns: the corner radius is v^2 / a


@dataclass
class Flight:
    """Everything one simulated flight needs, made before take-off."""

    pack: TilePack
    nav: Navigator
    camera: SimCamera
    vehicle: VehicleModel
    traj: Trajectory
    duration_s: float
    startup_s: float
    t0_unix_s: float = 0.0  # take-off on the UNIX clock (set when it flies)


def prepare_flight(pack: TilePack, embedder, cfg, frames_from: Optional[str] = None,
                   source_gsd_m: Optional[float] = None) -> Flight:
    """Route, vehicle, camera and navigator for cfg.sim over the pack's map. Frames are rendered
    from `frames_from` (e.g. another date of the same area) or from the pack's own map."""
    if frames_from:
        from skyfix.tiles.ortho import load_canvas
        frames_canvas = load_canvas(frames_from, pack.map_gsd_m, source_gsd_m=source_gsd_m, frame=pack.frame)
    else:
        frames_canvas = pack.map_blocks(cache_blocks=32)  # frames read the blocks under them only
    cam = PinholeCamera.from_config(cfg.camera)
    margin_m = footprint_margin_m(cam, max(cfg.sim.alt_agl_m, cfg.sim.start_agl_m or 0.0), cfg.sim.tilt_deg + 2)
    route = round_corners(make_route(cfg.sim, pack.map_blocks().bounds_en(), margin_m),
                          cfg.sim.speed_m_s ** 2 / TURN_ACCEL_M_S2)
    traj = Trajectory(route, cfg.sim.speed_m_s)
    t_start = time.perf_counter()
    nav = Navigator(pack, embedder, cam, cfg.nav)
    startup_s = time.perf_counter() - t_start
    vehicle = VehicleModel(traj, cfg.sim)
    return Flight(pack, nav, SimCamera(frames_canvas, cam, vehicle, cfg.sim, pack.terrain), vehicle, traj,
                  min(cfg.sim.duration_s or traj.duration_s, traj.duration_s), startup_s)


def fly(flight: Flight, cfg, link_drop: Optional[tuple] = None, progress: bool = True,
        interference=None, tlog: Optional[Path] = None):
    """Fly in real time. Returns (frame records, scored fixes the vehicle received, link stats).
    interference: a function called with skyfix's MAVLink connection string once the link is
    up, returning a function that stops it (e.g. a hostile sender, `skyfix bench attack`).
    tlog: record the autopilot's side as a telemetry log (`SimAutopilot`)."""
    t0 = time.monotonic()
    flight.t0_unix_s = time.time()
    vehicle = SimAutopilot(flight.vehicle, t0, flight.pack.frame, tlog=tlog).start()
    if link_drop:
        vehicle.drop_link(*link_drop)
    bridge = MavlinkBridge.from_config(cfg.bridge, vehicle.skyfix_connection).start()
    publisher = None
    frames: list[dict] = []
    try:
        if not bridge.wait_for_heartbeat(5.0):
            raise SkyfixError("no HEARTBEAT from the simulated autopilot within 5 s")
        publisher = FixPublisher.from_config(bridge, flight.nav.estimate_at, cfg.bridge).start()
        stop_interference = interference(vehicle.skyfix_connection) if interference else None
        try:
            _camera_loop(flight, bridge, t0, cfg, frames, vehicle if progress else None)
        finally:
            if stop_interference is not None:
                stop_interference()
    finally:
        if publisher is not None:
            publisher.close()
        bridge.close()
        vehicle.close()
    link = {"reconnects": bridge.reconnects, **bridge.counters(),
            "publish_ms": list(publisher.send_ms) if publisher else []}
    return frames, vehicle.received(), link


def in_map_gap(t_s: float, sim_cfg) -> bool:
    """True inside a stretch without map matches: [k * every, k * every + gap) for k >= 1."""
    if sim_cfg.map_gap_s <= 0 or t_s < sim_cfg.map_gap_every_s:
        return False
    return t_s % sim_cfg.map_gap_every_s < sim_cfg.map_gap_s


def gap_summary(received: list[dict], sim_cfg, duration_s: float) -> Optional[dict]:
    """How the track coasted through the map gaps: the messages the autopilot received inside
    them (error, accuracy, within 3x) and for how long into each gap it kept receiving."""
    if sim_cfg.map_gap_s <= 0:
        return None
    starts = np.arange(sim_cfg.map_gap_every_s, duration_s, sim_cfg.map_gap_every_s)
    inside = [r for r in received if in_map_gap(r["t_s"], sim_cfg)]
    coasted = []
    for s0 in starts:
        times = [r["t_s"] - s0 for r in inside if s0 <= r["t_s"] < s0 + sim_cfg.map_gap_s]
        coasted.append(round(float(max(times)), 1) if times else 0.0)
    err = np.array([r["error_m"] for r in inside])
    acc = np.array([r["horiz_accuracy_m"] for r in inside])
    return {"gap_s": sim_cfg.map_gap_s, "every_s": sim_cfg.map_gap_every_s, "gaps": len(starts),
            "published_in_gaps": len(inside), "coasted_s": coasted,
            "error_m": {"median": float(np.median(err)), "max": float(err.max())} if len(err) else None,
            "accuracy_m": {"median": float(np.median(acc)), "max": float(acc.max())} if len(acc) else None,
            "within_3x": float(np.mean(err <= 3 * acc)) if len(err) else None}


def capture_stamp_error(sim_cfg):
    """A function giving each frame's stamp minus its true capture time (s): the configured
    offset plus seeded Gaussian jitter (disturb.time_offset_s, disturb.time_jitter_s)."""
    d, rng = sim_cfg.disturb, np.random.default_rng(sim_cfg.seed + 7)
    return lambda: d.time_offset_s + (d.time_jitter_s * float(rng.standard_normal()) if d.time_jitter_s else 0.0)


def _camera_loop(flight: Flight, bridge: MavlinkBridge, t0: float, cfg, frames: list,
                 progress_vehicle=None) -> None:
    """Frames at the camera rate (dropped when the loop falls behind), each with the telemetry
    interpolated at its capture time, through the one frame loop."""
    stamp_error = capture_stamp_error(cfg.sim)

    def rendered():
        period, next_t = 1.0 / cfg.sim.camera_hz, 0.0
        while (t := time.monotonic() - t0) < flight.duration_s:
            if t < next_t:
                time.sleep(next_t - t)
                continue
            flight.nav.map_matching = not in_map_gap(t, cfg.sim)
            stamp_s = t0 + t + stamp_error()  # the camera's clock against the autopilot's
            yield SourceFrame(flight.camera.render(t), stamp_s, f"sim-{len(frames):05d}", meta=t)
            next_t = max(next_t + period, time.monotonic() - t0)

    last_print = [0.0]

    def record(sf: SourceFrame, _tel, res) -> None:
        t = sf.meta
        frames.append(frame_record(t, flight.vehicle.pose(t), res, flight.pack))
        if progress_vehicle is not None and t - last_print[0] >= 10:
            last_print[0] = t
            print(f"  t {t:5.0f}/{flight.duration_s:.0f} s  frames {len(frames)}  fixes "
                  f"{sum(f['fix'] for f in frames)}  published {len(progress_vehicle.received())}", flush=True)

    run_frame_loop(flight.nav, rendered(), lambda t_s: bridge.telemetry.at(t_s, cfg.nav.telemetry_max_age_s), record)


def summarise(flight: Flight, frames: list, received: list, link: dict, cfg) -> dict:
    """The summary dict of the README's `skyfix sim` JSON."""
    summary = score(received, flight.duration_s)
    summary["map_gaps"] = gap_summary(received, cfg.sim, flight.duration_s)
    summary.update(frame_summary(frames, flight.nav, flight.duration_s, flight.startup_s))
    if link["publish_ms"]:
        summary["latency_ms"]["publish"] = {"p50": float(np.percentile(link["publish_ms"], 50)),
                                            "p95": float(np.percentile(link["publish_ms"], 95))}
    # What was flown: a --duration-s shorter than the route stops the vehicle part way.
    flown_m = min(float(flight.traj.cum_m[-1]), flight.duration_s * flight.traj.speed_m_s)
    summary.update({"route_m": flown_m, "duration_s": flight.duration_s,
                    "alt_agl_m": cfg.sim.alt_agl_m, "start_agl_m": cfg.sim.start_agl_m,
                    "model_id": flight.pack.model_id,
                    "pack": str(flight.pack.path), "protocol": cfg.bridge.protocol,
                    "link": {k: v for k, v in link.items() if k != "publish_ms"},
                    "config": {k: dataclasses.asdict(getattr(cfg, k)) for k in ("sim", "nav", "bridge", "camera")}})
    return summary


def write_outputs(flight: Flight, received: list, summary: dict, out_dir: Path) -> Path:
    """track.csv, track.png, gallery.npz and summary.json into out_dir; returns out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_track_csv(received, out_dir / "track.csv")
    truth = np.array([flight.traj.at(t)[:2] for t in np.arange(0, flight.duration_s, 0.5)])
    plot_track(flight.pack.map_blocks(), truth, received, out_dir / "track.png")
    flight.nav.gallery.save(out_dir / "gallery.npz")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return out_dir


def run_sim(pack_path: str | Path, embedder, cfg, frames_from: Optional[str] = None,
            source_gsd_m: Optional[float] = None, out_dir: str | Path = "out/sim",
            link_drop: Optional[tuple] = None, progress: bool = True, interference=None,
            record: bool = False) -> dict:
    """Fly cfg.sim's route in real time with skyfix in the loop (drone tower `embedder`);
    returns the summary and writes track.csv, track.png, summary.json and gallery.npz.
    record: also write the flight as a user would have it, flight.tlog (the autopilot's
    telemetry and GPS) and flight.mp4 (the camera at sim.camera_hz), for `skyfix replay`."""
    pack = TilePack.open(pack_path, expect_model_id=embedder.model_id)
    flight = prepare_flight(pack, embedder, cfg, frames_from, source_gsd_m)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames, received, link = fly(flight, cfg, link_drop, progress, interference,
                                 tlog=out_dir / "flight.tlog" if record else None)
    received = within_flight(received, flight.duration_s)  # the summary and track.csv count the same messages
    summary = summarise(flight, frames, received, link, cfg)
    summary["frames_from"] = str(frames_from or "pack map")
    if record:
        summary["recording"] = record_video(flight, out_dir / "flight.mp4", cfg.sim.camera_hz)
    write_outputs(flight, received, summary, out_dir)
    return summary


def record_video(flight: Flight, path: Path, fps: float) -> dict:
    """The flight's camera as a video at fps (frames rendered at exact times, as a camera
    records them); returns {video, log, video_start_utc} for the summary."""
    import datetime as dt

    import cv2
    cam = flight.camera.cam
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (cam.width_px, cam.height_px))
    if not writer.isOpened():
        raise SkyfixError(f"OpenCV cannot write the video {path}")
    try:
        for t in np.arange(0.0, flight.duration_s, 1.0 / fps):
            writer.write(cv2.cvtColor(flight.camera.render(float(t)), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    start = dt.datetime.fromtimestamp(flight.t0_unix_s, dt.timezone.utc).isoformat(timespec="microseconds")
    return {"video": str(path), "log": str(path.with_suffix(".tlog")), "video_start_utc": start}
