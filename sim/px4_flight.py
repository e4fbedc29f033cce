"""`skyfix sim --vehicle px4-sitl`: a mission flown by a real PX4 (SITL, SIH quadrotor) whose
EKF2 has skyfix's GLOBAL_POSITION_SENSOR as its only global position.

    take-off: Altitude mode (ALTCTL; needs no horizontal position) with the sticks sent as
              MANUAL_CONTROL, climbing to the hand-over height; skyfix acquires and publishes;
              EKF2 takes the fixes as its auxiliary global position (GPS off)
    mission:  Hold mode (AUTO.LOITER, a position mode) and MAV_CMD_DO_REPOSITION targets along
              the route, back over the take-off point
    landing:  Altitude mode descent over the take-off point (below the hand-over height the
              fixes stop, as on the ArduPilot flight), the land detector disarms on the ground

Frames are rendered from the map at SIH's true pose (HIL_STATE_QUATERNION on the ground-station
link); skyfix's bridge talks to PX4 on its onboard link, as a companion computer does.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Optional

import numpy as np

from skyfix.edge.navigator import Navigator
from skyfix.errors import require
from skyfix.geo import LocalFrame
from skyfix.render.views import ViewPose
from skyfix.sim.px4 import ONBOARD_CONNECTION, Px4Sitl
from skyfix.sim.score import flight_summary, velocity_lines
from skyfix.sim.sitl import Pilot, Sample, fly_leg, wait_until
from skyfix.sim.sitl_flight import _terminate_cleanly, fly_on_autopilot, mission_setup, write_sitl_outputs

# PX4 custom modes (main, sub) as MAV_CMD_DO_SET_MODE takes them and HEARTBEAT reports them.
PX4_MODES = {"ALTCTL": (2, 0), "POSCTL": (3, 0), "AUTO.LOITER": (4, 3), "AUTO.LAND": (4, 6)}
ESTIMATOR_POS_HORIZ_ABS = 16   # ESTIMATOR_STATUS.flags: a valid absolute horizontal position
LANDED_ON_GROUND = 1           # EXTENDED_SYS_STATE.landed_state


def px4_mode_name(custom_mode: int) -> str:
    """HEARTBEAT.custom_mode of PX4 as a name of PX4_MODES (else 'main.sub')."""
    main, sub = (custom_mode >> 16) & 0xFF, (custom_mode >> 24) & 0xFF
    for name, (m, s) in PX4_MODES.items():
        if m == main and (s == sub or s == 0 and main != 4):
            return name
    return f"{main}.{sub}"


def flight_params(sim_cfg) -> dict:
    """PX4 parameters of the simulated flight: SIH's wind (north/east components, m/s; SIH has
    no gusts), from sim.disturb's speed and the bearing it blows from."""
    d = sim_cfg.disturb
    # SIH takes the air-relative velocity as v + SIH_WIND (simulator_sih/sih.cpp: _v_apparent_N =
    # _v_N + _v_wind_N), so its drag pushes the vehicle towards -SIH_WIND: the parameter is the
    # vector pointing where the wind comes FROM, the convention of ArduPilot's SIM_WIND_DIR.
    frm = math.radians(d.wind_from_deg)
    return {"SIH_WIND_N": round(d.wind_m_s * math.cos(frm), 3), "SIH_WIND_E": round(d.wind_m_s * math.sin(frm), 3)}


class Px4Vehicle(Px4Sitl):
    """The vehicle interface of the flight (as sim.sitl.SitlVehicle) for PX4 SITL: the truth from
    HIL_STATE_QUATERNION, EKF2's estimate from GLOBAL_POSITION_INT, its horizontal position test
    ratio (ESTIMATOR_STATUS.pos_horiz_ratio: EKF2's filtered test ratio of its horizontal position
    sources, the auxiliary global position among them; above 1, measurements are being rejected),
    the mode from HEARTBEAT, the landed state from EXTENDED_SYS_STATE."""

    STREAMS_HZ = {"HIL_STATE_QUATERNION": 50, "GLOBAL_POSITION_INT": 10, "ESTIMATOR_STATUS": 5,
                  "EXTENDED_SYS_STATE": 2, "ALTITUDE": 10}

    def __init__(self, frame: LocalFrame, home_alt_msl_m: float, home_en: tuple, params: Optional[dict] = None):
        lat, lon, _ = frame.to_lla(*home_en)
        super().__init__(params, home=(lat, lon, home_alt_msl_m))
        self.frame, self.home_alt_msl_m, self.home_en = frame, home_alt_msl_m, home_en
        self.t0_mono_s = time.monotonic()
        self.samples: deque = deque(maxlen=40_000)
        self.statustexts: list[tuple] = []     # (t_mono_s, severity, text)
        self.modes: list[tuple] = []           # (t_mono_s, mode name) at each change
        self.sent_fixes: list[dict] = []
        self.test_ratios: list[tuple] = []     # (t_mono_s, ESTIMATOR_STATUS.pos_horiz_ratio, flags)
        self._state: dict = {}
        self._truth_en: deque = deque(maxlen=100)   # (PX4 time s, east_m, north_m) of the last 2 s
        self._lock = threading.Lock()

    def __enter__(self) -> "Px4Vehicle":
        super().__enter__()
        mavlink = require("pymavlink.mavutil").mavlink
        for name, hz in self.STREAMS_HZ.items():
            self.request_interval(getattr(mavlink, f"MAVLINK_MSG_ID_{name}"), hz)
        return self

    @property
    def conn(self):
        return self._conn

    def _take(self, msg, now: float) -> None:
        super()._take(msg, now)
        kind = msg.get_type()
        with self._lock:
            if kind == "HIL_STATE_QUATERNION":
                self._state[kind] = msg
                self._truth_en.append((msg.time_usec * 1e-6, *self.frame.to_enu(msg.lat * 1e-7, msg.lon * 1e-7)[:2]))
                if self.estimate() is None or now - self.estimate()[3] > 1.0:
                    self._sample(now, None)
            elif kind == "GLOBAL_POSITION_INT" and (msg.lat or msg.lon):
                self._state[kind] = msg
                self._sample(now, msg)
            elif kind == "HEARTBEAT" and msg.get_srcComponent() == 1 and msg.autopilot == 12:  # PX4
                self._state[kind] = msg
                mode = px4_mode_name(msg.custom_mode)
                if not self.modes or self.modes[-1][1] != mode:
                    self.modes.append((now, mode))
            elif kind == "ESTIMATOR_STATUS":
                self.test_ratios.append((now, float(msg.pos_horiz_ratio), int(msg.flags)))
            elif kind in ("EXTENDED_SYS_STATE", "ALTITUDE"):
                self._state[kind] = msg
            elif kind == "STATUSTEXT":
                self.statustexts.append((now, msg.severity, msg.text))

    def _sample(self, now: float, gpi) -> None:
        """A sample of the truth alone, or of EKF2's estimate (GLOBAL_POSITION_INT) against the
        truth at the estimate's own time (both stamped by PX4's clock: a moving vehicle is not
        scored on the link's delay or the two streams' phase)."""
        if not self._truth_en:
            return
        t_s, te, tn = self._truth_en[-1]
        ee = en = None
        if gpi is not None:
            ee, en, _ = self.frame.to_enu(gpi.lat * 1e-7, gpi.lon * 1e-7)
            times = np.array([x[0] for x in self._truth_en])
            at_s = gpi.time_boot_ms * 1e-3
            if times[0] <= at_s <= times[-1]:
                te = float(np.interp(at_s, times, [x[1] for x in self._truth_en]))
                tn = float(np.interp(at_s, times, [x[2] for x in self._truth_en]))
        self.samples.append(Sample(now, float(te), float(tn), None if ee is None else float(ee),
                                   None if en is None else float(en), 0))

    def latest(self, kind: str):
        with self._lock:
            return self._state.get(kind)

    def true_pose(self, t_s: float = None) -> Optional[ViewPose]:
        """The latest true pose of SIH (real time: t_s is not used), or None before the first."""
        st = self.latest("HIL_STATE_QUATERNION")
        if st is None:
            return None
        from pymavlink.quaternion import Quaternion
        roll, pitch, yaw = Quaternion(list(st.attitude_quaternion)).euler
        e, n, _ = self.frame.to_enu(st.lat * 1e-7, st.lon * 1e-7)
        return ViewPose(float(e), float(n), st.alt * 1e-3 - self.home_alt_msl_m, float(roll), float(pitch), float(yaw))

    def received(self) -> list[dict]:
        return list(self.sent_fixes)

    def record_fix(self, fix, t_mono_s: float) -> None:
        """Called by the publisher for every GLOBAL_POSITION_SENSOR sent: scored against the truth."""
        from skyfix.sim.score import scored_fix
        pose = self.true_pose()
        if pose is not None:
            self.sent_fixes.append(scored_fix(self.frame, t_mono_s - self.t0_mono_s, "GLOBAL_POSITION_SENSOR",
                                              fix.lat_deg, fix.lon_deg, fix.horiz_accuracy_m, pose, None))


class Px4Pilot(Pilot):
    """What a ground station does over PX4's GCS link: modes, arming, the sticks (MANUAL_CONTROL,
    sent continuously: PX4 takes a MAVLink joystick as its manual control), reposition targets,
    landing. Each step waits for its result with a timeout and says what happened."""

    CLIMB_MODE, MISSION_MODE = "ALTCTL", "AUTO.LOITER"
    ARM_TIMEOUT_S = 90.0

    def __init__(self, vehicle: Px4Vehicle, speed_m_s: float = 12.0):
        super().__init__(vehicle)
        self.speed_m_s = speed_m_s
        self.throttle = 0.5               # stick, 0..1 (0.5: hold the altitude in ALTCTL)
        self._stop = threading.Event()
        self._sticks = threading.Thread(target=self._send_sticks, daemon=True, name="px4-sticks")
        self._sticks.start()

    def close(self) -> None:
        self._stop.set()
        self._sticks.join(timeout=1.0)

    def _send_sticks(self) -> None:
        while not self._stop.is_set():
            try:
                self.v.conn.mav.manual_control_send(1, 0, 0, int(1000 * self.throttle), 0, 0)
            except OSError:
                return
            time.sleep(0.05)

    def prepare(self) -> bool:
        return True  # EKF2 sets its origin from the first auxiliary global position it fuses

    def after_handover(self) -> None:
        pass

    def abort(self) -> None:
        self.descend_and_land()

    def request_mode(self, mode: str) -> None:
        """MAV_CMD_DO_SET_MODE with PX4's main and sub mode; the HEARTBEAT says whether it was taken."""
        main, sub = PX4_MODES[mode]
        self.v.conn.mav.command_long_send(1, 1, 176, 0, 1, main, sub, 0, 0, 0, 0)  # DO_SET_MODE, custom

    def height_m(self) -> Optional[float]:
        """PX4's own height over the take-off point (ALTITUDE.altitude_relative: baro, no GPS)."""
        alt = self.v.latest("ALTITUDE")
        return None if alt is None or not math.isfinite(alt.altitude_relative) else float(alt.altitude_relative)

    def climb_to(self, agl_m: float, timeout_s: float = 120.0) -> bool:
        end = time.monotonic() + timeout_s
        self.throttle = 1.0
        while time.monotonic() < end:
            time.sleep(0.2)
            if (self.height_m() or 0.0) >= agl_m - 3.0:
                self.throttle = 0.5
                self.note(f"at {self.height_m():.0f} m: holding")
                return True
        self.throttle = 0.5
        self.note("climb timed out")
        return False

    def wait_for_position(self, timeout_s: float) -> bool:
        """Until EKF2 reports an absolute horizontal position (it took skyfix's fixes)."""
        def has_position() -> bool:
            st = self.v.test_ratios[-1] if self.v.test_ratios else None
            return bool(st is not None and st[2] & ESTIMATOR_POS_HORIZ_ABS and self.v.estimate() is not None)
        return wait_until(self, has_position, timeout_s, "EKF2 has a global position from skyfix",
                          "EKF2 never took skyfix's position")

    def goto(self, east_m: float, north_m: float, agl_m: float, timeout_s: float, within_m: float = 5.0,
             stall_s: float = 60.0) -> bool:
        """MAV_CMD_DO_REPOSITION at the mission speed (Hold mode flies there; `fly_leg`)."""
        lat, lon, _ = self.v.frame.to_lla(east_m, north_m)
        alt_msl = self.v.home_alt_msl_m + agl_m
        last_cmd = [0.0]

        def step() -> bool:
            if time.monotonic() - last_cmd[0] > 3.0 or self.mode() != "AUTO.LOITER":
                # COMMAND_INT: lat/lon as integers (a float parameter rounds them to about 0.5 m).
                self.v.conn.mav.command_int_send(1, 1, 0, 192, 0, 0, self.speed_m_s, 1, 0, math.nan,
                                                 int(lat * 1e7), int(lon * 1e7), alt_msl)
                last_cmd[0] = time.monotonic()
            time.sleep(0.5)
            return True
        return fly_leg(self, east_m, north_m, step, timeout_s, within_m, stall_s)

    def estimated_en(self) -> Optional[tuple]:
        """(east_m, north_m) of EKF2's global position, or None before it has one."""
        est = self.v.estimate()
        if est is None:
            return None
        e, n, _ = self.v.frame.to_enu(est[0], est[1])
        return float(e), float(n)

    def descend_and_land(self, timeout_s: float = 180.0) -> bool:
        """Altitude mode descent (no position needed), as the ArduPilot flight's ALT_HOLD one;
        PX4's land detector disarms on the ground."""
        self.throttle = 0.5
        if not self.set_mode("ALTCTL"):
            return False
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if not self.armed():
                self.throttle = 0.5
                self.note("landed (Altitude mode descent) and disarmed")
                return True
            h = self.height_m() or 0.0
            self.throttle = 0.0 if h > 15.0 else 0.25  # full descent rate high up, gentler below
            ext = self.v.latest("EXTENDED_SYS_STATE")
            if ext is not None and ext.landed_state == LANDED_ON_GROUND:
                self.v.conn.mav.command_long_send(1, 1, 400, 0, 0, 0, 0, 0, 0, 0, 0)  # disarm
            time.sleep(0.2)
        self.note("descent timed out")
        return False


def rejected_spans_s(test_ratios: list, start_s: float, end_s: float) -> list:
    """Spans (seconds) in which EKF2's horizontal position test ratio stayed above 1 (each
    measurement rejected), between start_s and end_s (monotonic)."""
    spans, since = [], None
    for t, ratio, _ in test_ratios:
        if not start_s <= t <= end_s:
            continue
        if ratio > 1.0 and since is None:
            since = t
        elif ratio <= 1.0 and since is not None:
            spans.append(t - since)
            since = None
    if since is not None:
        spans.append(end_s - since)
    return spans


def run_px4(pack_path: str | Path, embedder, cfg, out_dir: str | Path = "out/px4", progress: bool = True) -> dict:
    """Fly the mission with PX4 SITL on skyfix's fixes alone; returns the summary and writes
    track.csv, track.png and summary.json into out_dir."""
    pack, home_en, home_alt, cam, nav = mission_setup(pack_path, embedder, cfg)
    bridge_cfg = dataclasses.replace(cfg.bridge, protocol="px4", connection=ONBOARD_CONNECTION)
    _terminate_cleanly()
    with Px4Vehicle(pack.frame, home_alt, home_en, {**flight_params(cfg.sim), **cfg.sim.px4_params}) as vehicle:
        flown = fly_on_autopilot(pack, nav, cam, cfg, vehicle, Px4Pilot(vehicle, cfg.sim.speed_m_s), bridge_cfg,
                                 ONBOARD_CONNECTION, nav.estimate_at, None, cfg.sim.disturb.wind_m_s, progress)
    summary = summarise_px4(vehicle, flown.pilot, flown.result, nav, flown.kinds, flown.bridge)
    summary["telemetry_error"] = flown.telemetry_errors
    write_sitl_outputs(pack, vehicle, summary, Path(out_dir))
    return summary


def summarise_px4(vehicle: Px4Vehicle, pilot: Px4Pilot, result: dict, nav: Navigator, kinds: list, bridge) -> dict:
    """The `--json` summary (`score.flight_summary`), with EKF2's rejections for ArduPilot's glitches."""
    summary, _, (start, end) = flight_summary(vehicle, pilot, result, nav, kinds, bridge, "px4-sitl")
    spans = rejected_spans_s(vehicle.test_ratios, start or math.inf, end or time.monotonic())
    ratios = [round(r, 3) for t, r, _ in vehicle.test_ratios
              if start is not None and start <= t <= (end or math.inf) and math.isfinite(r)]
    summary["ekf2_rejections"] = {"spans": len(spans), "longest_s": round(max(spans), 2) if spans else 0.0,
                                  "total_s": round(sum(spans), 2), "max_test_ratio": max(ratios, default=None)}
    return summary


def format_px4_summary(s: dict) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    a, e, r = s["autopilot_error_m"], s["error_m"], s["ekf2_rejections"]
    return "\n".join([
        f"PX4 SITL on skyfix alone: mission {'completed' if s['mission_completed'] else 'NOT completed'}; "
        f"hand-over at {fmt(s['handover_s'])} s, mission {fmt(s['mission_s'])} s",
        f"EKF2's estimate vs truth: median {fmt(a['median'])} m, p95 {fmt(a['p95'])} m, max {fmt(a['max'])} m",
        f"skyfix's GLOBAL_POSITION_SENSOR vs truth: median {fmt(e['median'])} m, p95 {fmt(e['p95'])} m, "
        f"max {fmt(e['max'])} m; {s['n_published']} sent",
        f"EKF2 rejected the position {r['spans']} times, longest {r['longest_s']} s; failsafes {s['failsafes'] or 'none'}",
        f"modes {s['modes']}"] + velocity_lines(s))
