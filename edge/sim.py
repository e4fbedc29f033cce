"""Simulator in the loop: a virtual drone flies a route over a real map; skyfix navigates by it.

The vehicle side speaks MAVLink over real UDP sockets (HEARTBEAT, ATTITUDE, GLOBAL_POSITION_INT
with relative altitude and no GPS, ALTITUDE, SYSTEM_TIME) and scores every GPS_INPUT /
GLOBAL_POSITION_SENSOR it receives against the true position. Camera frames are rendered from
the map (or a second date of it) through the pinhole camera model.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from skyfix.config import SimConfig
from skyfix.contracts import Frame
from skyfix.edge.camera import PinholeCamera
from skyfix.edge.views import ViewPose, photometric, render_view
from skyfix.errors import SkyfixError, require
from skyfix.firmware_bridge.messages import mavlink_module
from skyfix.tiles.canvas import MapCanvas

log = logging.getLogger("skyfix.sim")
GROUND_MSL_M = 2500.0  # simulated ground elevation (flat)


# ---- routes -------------------------------------------------------------------------------------
def make_route(cfg: SimConfig, bounds_en: tuple, margin_m: float) -> np.ndarray:
    """Waypoints K x 2 (east_m, north_m) inside bounds shrunk by margin_m."""
    e0, n0, e1, n1 = bounds_en
    e0, n0, e1, n1 = e0 + margin_m, n0 + margin_m, e1 - margin_m, n1 - margin_m
    if e1 <= e0 or n1 <= n0:
        raise SkyfixError("the map is too small for a route at this altitude")
    if cfg.route == "waypoints":
        wp = np.asarray(cfg.waypoints_en_m, float)
        if wp.ndim != 2 or wp.shape[1] != 2 or len(wp) < 2:
            raise SkyfixError("sim.waypoints_en_m needs at least two [east, north] pairs")
        return wp
    if cfg.route == "straight":
        # Along the diagonal through the centre, as long as fits (up to length_m).
        d = np.array([e1 - e0, n1 - n0]) / np.hypot(e1 - e0, n1 - n0)
        c = np.array([(e0 + e1) / 2, (n0 + n1) / 2])
        half = min(cfg.length_m, np.hypot(e1 - e0, n1 - n0)) / 2
        return np.array([c - d * half, c + d * half])
    if cfg.route == "lawnmower":
        # East-west legs `leg_spacing_m` apart from the north edge down, truncated at length_m.
        norths = np.arange(n1, n0 - 1e-6, -cfg.leg_spacing_m)
        if len(norths) < 2:
            norths = np.array([n1, n0])
        pts = []
        for i, n in enumerate(norths):
            pts += [(e0, n), (e1, n)] if i % 2 == 0 else [(e1, n), (e0, n)]
        return truncate(np.array(pts), cfg.length_m)
    raise SkyfixError(f"unknown route '{cfg.route}'; choose straight, lawnmower or waypoints")


def truncate(wp: np.ndarray, length_m: float) -> np.ndarray:
    out, total = [wp[0]], 0.0
    for a, b in zip(wp[:-1], wp[1:]):
        seg = float(np.hypot(*(b - a)))
        if total + seg >= length_m:
            out.append(a + (b - a) * (length_m - total) / seg)
            return np.array(out)
        out.append(b)
        total += seg
    return np.array(out)


def round_corners(wp: np.ndarray, radius_m: float, step_m: float = 2.0) -> np.ndarray:
    """Replace each interior corner by a circular arc of radius_m (a vehicle turns with bounded
    acceleration v^2 / r, it does not pivot). Returns a dense polyline K x 2."""
    out = [wp[0]]
    for a, b, c in zip(wp[:-2], wp[1:-1], wp[2:]):
        u, w = (b - a) / np.linalg.norm(b - a), (c - b) / np.linalg.norm(c - b)
        turn = math.acos(float(np.clip(u @ w, -1, 1)))
        if turn < 1e-3:
            out.append(b)
            continue
        cut = min(radius_m * math.tan(turn / 2), np.linalg.norm(b - a) / 2, np.linalg.norm(c - b) / 2)
        p0, p1 = b - u * cut, b + w * cut
        # Quadratic Bezier through the corner: close to the arc, tangent to both legs.
        for f in np.linspace(0, 1, max(2, int(cut * turn / step_m) + 2)):
            out.append((1 - f) ** 2 * p0 + 2 * (1 - f) * f * b + f ** 2 * p1)
    out.append(wp[-1])
    pts = np.array(out)
    keep = np.concatenate([[True], np.hypot(*np.diff(pts, axis=0).T) > 1e-6])
    return pts[keep]


@dataclass
class Trajectory:
    """Constant-speed flight along waypoints; heading follows the path."""

    waypoints: np.ndarray
    speed_m_s: float
    cum_m: np.ndarray = field(init=False)

    def __post_init__(self):
        seg = np.hypot(*np.diff(self.waypoints, axis=0).T)
        self.cum_m = np.concatenate([[0.0], np.cumsum(seg)])

    @property
    def duration_s(self) -> float:
        return float(self.cum_m[-1] / self.speed_m_s)

    def at(self, t_s: float):
        """(east_m, north_m, yaw_rad) at time t_s."""
        d = float(np.clip(t_s * self.speed_m_s, 0, self.cum_m[-1]))
        i = int(np.clip(np.searchsorted(self.cum_m, d, side="right") - 1, 0, len(self.waypoints) - 2))
        a, b = self.waypoints[i], self.waypoints[i + 1]
        f = (d - self.cum_m[i]) / max(self.cum_m[i + 1] - self.cum_m[i], 1e-9)
        p = a + (b - a) * f
        yaw = math.atan2(b[0] - a[0], b[1] - a[1])  # from north, clockwise
        return float(p[0]), float(p[1]), yaw


class VehicleModel:
    """True pose and noisy telemetry of the simulated drone."""

    def __init__(self, traj: Trajectory, cfg: SimConfig):
        self.traj, self.cfg = traj, cfg
        self.rng = np.random.default_rng(cfg.seed + 1)
        self._lock = threading.Lock()

    def pose(self, t_s: float) -> ViewPose:
        e, n, yaw = self.traj.at(t_s)
        tilt = math.radians(self.cfg.tilt_deg)
        return ViewPose(e, n, self.cfg.alt_agl_m, tilt * math.sin(0.9 * t_s), tilt * math.cos(0.7 * t_s), yaw)

    def noisy(self, t_s: float):
        p = self.pose(t_s)
        with self._lock:  # the generator is shared by the MAVLink thread and tests
            a = np.radians(self.cfg.attitude_noise_deg) * self.rng.standard_normal(3)
            dh = self.cfg.alt_noise_m * self.rng.standard_normal()
        return p.roll_rad + a[0], p.pitch_rad + a[1], (p.yaw_rad + a[2]) % (2 * math.pi), p.agl_m + dh


# ---- the vehicle side over MAVLink ----------------------------------------------------------------
def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimAutopilot:
    """Plays the flight controller: streams telemetry to skyfix, receives and scores its fixes."""

    def __init__(self, vehicle: VehicleModel, connection: str, t0_mono_s: float, frame,
                 telemetry_hz: float = 20.0):
        mavutil = require("pymavlink.mavutil")
        self.vehicle, self.t0, self.frame, self.hz = vehicle, t0_mono_s, frame, telemetry_hz
        self.conn = mavutil.mavlink_connection(connection, source_system=1, source_component=1,
                                               dialect="common")
        self.received: list[dict] = []
        self.silent_s = (math.inf, math.inf)  # fault injection: no traffic in [from, until) sim time
        self._stop = threading.Event()
        self._threads = []

    def drop_link(self, from_s: float, duration_s: float) -> None:
        self.silent_s = (from_s, from_s + duration_s)

    def _silent(self, t_s: float) -> bool:
        return self.silent_s[0] <= t_s < self.silent_s[1]

    def start(self) -> "SimAutopilot":
        for fn in (self._tx, self._rx):
            th = threading.Thread(target=fn, daemon=True, name=f"sim-{fn.__name__}")
            th.start()
            self._threads.append(th)
        return self

    def close(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=2.0)
        self.conn.close()

    def _tx(self) -> None:
        m = mavlink_module()
        mav = self.conn.mav
        k = 0
        while not self._stop.wait(1.0 / self.hz):
            now = time.monotonic()
            t = now - self.t0
            if self._silent(t):
                continue
            boot_ms = int(t * 1e3) + 60_000  # the FC booted a minute before take-off
            roll, pitch, yaw, agl = self.vehicle.noisy(t)
            yaw_wrapped = (yaw + math.pi) % (2 * math.pi) - math.pi
            mav.attitude_send(boot_ms, roll, pitch, yaw_wrapped, 0.0, 0.0, 0.0)
            # No GPS: lat/lon are zero; relative_alt (mm) is the barometric height over home.
            mav.global_position_int_send(boot_ms, 0, 0, int((GROUND_MSL_M + agl) * 1e3),
                                         int(agl * 1e3), 0, 0, 0, 65535)
            mav.altitude_send(int(t * 1e6), GROUND_MSL_M + agl, GROUND_MSL_M + agl, GROUND_MSL_M + agl,
                              agl, float("nan"), float("nan"))
            if k % int(self.hz) == 0:
                mav.heartbeat_send(m.MAV_TYPE_QUADROTOR, m.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0,
                                   m.MAV_STATE_ACTIVE)
                mav.system_time_send(int(time.time() * 1e6), boot_ms)
            k += 1

    def _rx(self) -> None:
        while not self._stop.is_set():
            msg = self.conn.recv_match(type=["GPS_INPUT", "GLOBAL_POSITION_SENSOR"], blocking=True, timeout=0.2)
            if msg is None:
                continue
            t = time.monotonic() - self.t0
            if self._silent(t):
                continue
            pose = self.vehicle.pose(t)
            e, n, _ = self.frame.to_enu(msg.lat / 1e7, msg.lon / 1e7)
            acc = msg.horiz_accuracy if msg.get_type() == "GPS_INPUT" else msg.eph
            self.received.append({"t_s": t, "type": msg.get_type(), "east_m": float(e), "north_m": float(n),
                                  "true_east_m": pose.east_m, "true_north_m": pose.north_m,
                                  "horiz_accuracy_m": float(acc),
                                  "error_m": float(math.hypot(e - pose.east_m, n - pose.north_m))})


# ---- the camera -----------------------------------------------------------------------------------
class SimCamera:
    """Renders the frame the drone's camera sees at a sim time (true pose), with photometric change."""

    def __init__(self, canvas: MapCanvas, cam: PinholeCamera, vehicle: VehicleModel, cfg: SimConfig):
        self.canvas, self.cam, self.vehicle, self.cfg = canvas, cam, vehicle, cfg
        self.rng = np.random.default_rng(cfg.seed)

    def render(self, t_s: float) -> np.ndarray:
        img, _, _ = render_view(self.canvas, self.cam, self.vehicle.pose(t_s))
        if self.cfg.photometric:
            img = photometric(img, self.rng, strength=0.7)
        return img


# ---- scoring --------------------------------------------------------------------------------------
def score(received: list[dict], duration_s: float, fresh_s: float = 0.5) -> dict:
    """Errors of the published fixes, availability (share of time with a fix received in the last
    `fresh_s`), and calibration against the reported accuracy."""
    if not received:
        return {"error_m": {"median": None, "p95": None, "max": None}, "availability": 0.0,
                "n_published": 0, "calibration": {"within_1x": None, "within_3x": None},
                "time_to_first_fix_s": None}
    err = np.array([r["error_m"] for r in received])
    acc = np.array([r["horiz_accuracy_m"] for r in received])
    t = np.array([r["t_s"] for r in received])
    grid = np.arange(0.0, duration_s, 0.1)
    idx = np.searchsorted(t, grid, side="right") - 1
    fresh = (idx >= 0) & (grid - t[np.clip(idx, 0, None)] <= fresh_s)
    return {"error_m": {"median": float(np.median(err)), "p95": float(np.percentile(err, 95)),
                        "max": float(err.max())},
            "availability": float(fresh.mean()),
            "n_published": int(len(err)),
            "calibration": {"within_1x": float(np.mean(err <= acc)), "within_3x": float(np.mean(err <= 3 * acc)),
                            "worst_error_over_accuracy": float(np.max(err / acc))},
            "time_to_first_fix_s": float(t[0])}


def plot_track(canvas: MapCanvas, truth_en: np.ndarray, received: list[dict], path: str | Path,
               max_px: int = 1200) -> Path:
    """PNG of the map with the true track (green) and published fixes (red dots)."""
    img = cv2.cvtColor(canvas.image_rgb, cv2.COLOR_RGB2BGR)
    f = min(1.0, max_px / max(img.shape[:2]))
    img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)

    def px(e, n):
        c, r = canvas.px_from_en(e, n)
        return int(round((c + 0.5) * f)), int(round((r + 0.5) * f))

    pts = np.array([px(e, n) for e, n in truth_en], np.int32)
    cv2.polylines(img, [pts], False, (0, 220, 0), 2, cv2.LINE_AA)
    for r in received:
        cv2.circle(img, px(r["east_m"], r["north_m"]), 2, (0, 0, 255), -1, cv2.LINE_AA)
    cv2.putText(img, "true track (green), published fixes (red)", (10, 25), cv2.FONT_HERSHEY_SIMPLEX,
                0.7, (255, 255, 255), 2, cv2.LINE_AA)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise SkyfixError(f"cannot write {path}")
    return Path(path)


def write_track_csv(received: list[dict], path: str | Path) -> Path:
    with open(path, "w", newline="") as f:
        keys = ["t_s", "type", "true_east_m", "true_north_m", "east_m", "north_m", "horiz_accuracy_m", "error_m"]
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in received:
            w.writerow({k: r[k] for k in keys})
    return Path(path)


# ---- the flight -----------------------------------------------------------------------------------
def run_sim(pack_path: str | Path, model: str, cfg, frames_from: Optional[str] = None,
            source_gsd_m: Optional[float] = None, out_dir: str | Path = "out/sim",
            link_drop: Optional[tuple] = None, progress: bool = True) -> dict:
    """Fly cfg.sim's route in real time with skyfix in the loop; returns the summary dict and
    writes track.csv, track.png, summary.json and gallery.npz into out_dir."""
    from skyfix.edge.embedders import load_embedder
    from skyfix.edge.navigator import Navigator
    from skyfix.firmware_bridge.link import MavlinkBridge
    from skyfix.firmware_bridge.publisher import FixPublisher
    from skyfix.tiles.pack import TilePack
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pack = TilePack.open(pack_path)
    embedder = load_embedder(model, "drone", cfg.model)
    if frames_from:
        from skyfix.tiles.ortho import load_canvas
        frames_canvas = load_canvas(frames_from, pack.canvas().gsd_m, source_gsd_m=source_gsd_m, frame=pack.frame)
    else:
        frames_canvas = pack.canvas()
    cam = PinholeCamera.from_config(cfg.camera)
    # Keep the whole footprint on the map: half its diagonal plus the tilt.
    half_diag = cfg.sim.alt_agl_m / cam.fx_px * math.hypot(cam.width_px, cam.height_px) / 2
    margin = half_diag + cfg.sim.alt_agl_m * math.tan(math.radians(cfg.sim.tilt_deg + 2))
    turn_radius_m = cfg.sim.speed_m_s ** 2 / 2.5  # 2.5 m/s^2 lateral acceleration in turns
    route = round_corners(make_route(cfg.sim, pack.canvas().bounds_en(), margin), turn_radius_m)
    traj = Trajectory(route, cfg.sim.speed_m_s)
    duration = min(cfg.sim.duration_s or traj.duration_s, traj.duration_s)
    t_start = time.perf_counter()
    nav = Navigator(pack, embedder, cam, cfg.nav)
    startup_s = time.perf_counter() - t_start
    vehicle = VehicleModel(traj, cfg.sim)
    port = free_udp_port()
    t0 = time.monotonic()
    autopilot = SimAutopilot(vehicle, f"udpout:127.0.0.1:{port}", t0, pack.frame).start()
    if link_drop:
        autopilot.drop_link(*link_drop)
    bridge = MavlinkBridge(f"udpin:127.0.0.1:{port}", link_timeout_s=cfg.bridge.link_timeout_s).start()
    frames: list[dict] = []
    publisher = None
    try:
        if not bridge.wait_for_heartbeat(5.0):
            raise SkyfixError("no HEARTBEAT from the simulated autopilot within 5 s")
        publisher = FixPublisher(bridge, nav.estimate_at, cfg.bridge.protocol, cfg.bridge.rate_hz,
                                 cfg.bridge.max_fix_age_s, cfg.bridge.vert_accuracy_m).start()
        camera = SimCamera(frames_canvas, cam, vehicle, cfg.sim)
        period, next_t, last_print = 1.0 / cfg.sim.camera_hz, 0.0, 0.0
        while (t := time.monotonic() - t0) < duration:
            if t < next_t:
                time.sleep(next_t - t)
                continue
            img = camera.render(t)
            tel = bridge.telemetry.snapshot(time.monotonic(), cfg.nav.telemetry_max_age_s)
            res = nav.step(Frame(img, int((t0 + t) * 1e6), tel, f"sim-{len(frames):05d}"))
            frames.append(_frame_record(t, vehicle.pose(t), res, pack))
            next_t = max(next_t + period, time.monotonic() - t0)  # drop frames when behind
            if progress and t - last_print >= 10:
                last_print = t
                ok = sum(f["fix"] for f in frames)
                print(f"  t {t:5.0f}/{duration:.0f} s  frames {len(frames)}  fixes {ok}  "
                      f"published {len(autopilot.received)}", flush=True)
    finally:
        if publisher is not None:
            publisher.close()
        bridge.close()
        autopilot.close()
    summary = score(autopilot.received, duration)
    summary.update(_frame_summary(frames, nav, duration, startup_s))
    if publisher is not None and publisher.send_ms:
        summary["latency_ms"]["publish"] = {"p50": float(np.percentile(publisher.send_ms, 50)),
                                            "p95": float(np.percentile(publisher.send_ms, 95))}
    summary.update({"route_m": float(traj.cum_m[-1]), "duration_s": duration, "alt_agl_m": cfg.sim.alt_agl_m,
                    "model_id": pack.model_id, "pack": str(pack_path), "frames_from": str(frames_from or "pack map"),
                    "protocol": cfg.bridge.protocol, "link": {"reconnects": bridge.reconnects,
                                                              "bad_packets": bridge.bad_packets},
                    "config": {"sim": dataclasses.asdict(cfg.sim), "nav": dataclasses.asdict(cfg.nav),
                               "bridge": dataclasses.asdict(cfg.bridge), "camera": dataclasses.asdict(cfg.camera)}})
    write_track_csv(autopilot.received, out_dir / "track.csv")
    truth = np.array([traj.at(t)[:2] for t in np.arange(0, duration, 0.5)])
    plot_track(pack.canvas(), truth, autopilot.received, out_dir / "track.png")
    nav.gallery.save(out_dir / "gallery.npz")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _frame_record(t: float, pose: ViewPose, res, pack) -> dict:
    rec = {"t_s": t, "fix": res.fix is not None, "reason": res.reason, "error_m": None, "acc_m": None}
    if res.fix is not None:
        e, n, _ = pack.frame.to_enu(res.fix.lat_deg, res.fix.lon_deg)
        rec["error_m"] = float(math.hypot(e - pose.east_m, n - pose.north_m))
        rec["acc_m"] = res.fix.horiz_accuracy_m
    return rec


def _frame_summary(frames: list[dict], nav, duration: float, startup_s: float) -> dict:
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
        "reasons": dict(nav.reasons),
    }


def format_summary(s: dict) -> str:
    e, c = s["error_m"], s["calibration"]
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [f"route {s['route_m']:.0f} m at {s['alt_agl_m']:.0f} m AGL, {s['duration_s']:.0f} s, frames from {s['frames_from']}",
             f"published fixes {s['n_published']} ({s['protocol']}): error median {fmt(e['median'])} m, "
             f"p95 {fmt(e['p95'])} m, max {fmt(e['max'])} m; availability {s['availability']:.1%}",
             f"calibration: within 1x accuracy {fmt(None if c['within_1x'] is None else 100 * c['within_1x'])} %, "
             f"within 3x {fmt(None if c['within_3x'] is None else 100 * c['within_3x'])} %",
             f"frames {s['n_frames']}, fixes {s['n_fixes']}, confident wrong fixes {s['confident_wrong_fixes']}; "
             f"first fix after {fmt(s['time_to_first_fix_s'])} s",
             "latency ms (p50/p95): " + ", ".join(f"{k} {v['p50']:.0f}/{v['p95']:.0f}"
                                                  for k, v in s["latency_ms"].items() if v),
             f"sustainable {fmt(s['sustainable_fps'])} frames/s on this machine; reasons {s['reasons']}"]
    return "\n".join(lines)
