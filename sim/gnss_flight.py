"""`skyfix sim --vehicle ardupilot-sitl --gnss SCENARIO`: ArduCopter takes off and flies on its own
GNSS (the SITL's simulated receiver), skyfix runs beside it as its watchdog and fallback, and the
GNSS is lost or lies mid-mission.

    take-off: GUIDED, on the GNSS (no blind climb, no global search needed later)
    skyfix:   VISION_POSITION_ESTIMATE (ExternalNav, EKF source set 2) from the hand-over height;
              the GNSS watch (edge/gnss_guard.py) on GPS_RAW_INT
    the event `after_s` seconds into the mission:
        jam    the receiver off (SIM_GPS1_ENABLE 0)
        spoof  the receiver's position pulled away at `rate_m_s` towards `bearing_deg`
               (SIM_GPS1_GLTCH_X/Y ramped, degrees of latitude and longitude, every 0.2 s)
        step   the receiver's position moved `step_m` towards `bearing_deg` at once
        clean  nothing (false alarms are counted)
    the mission goes on, on whichever source the EKF uses; LAND at the end.

Why ExternalNav and not a second GPS (GPS2_TYPE 14 fed by GPS_INPUT): the EKF's source sets
choose between kinds of sensor (EK3_SRCn_POSXY: GPS, ExternalNav, ...), not between GPS
receivers; a second GPS would be one more "GPS", chosen or blended with the spoofed one by
AP_GPS (GPS_AUTO_SWITCH), so MAV_CMD_SET_EKF_SOURCE_SET could not separate them. ArduPilot's
ExternalNav is fed with positions relative to the EKF origin, which skyfix reads from
GPS_GLOBAL_ORIGIN. With VISO_TYPE 1 (MAVLink) ArduPilot does not re-align ExternalNav to its own
position while the GNSS is in use (the T265 and VOXL back-ends do: they are odometry), so
skyfix's positions stay absolute and the switch pulls the EKF back to them.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from skyfix.errors import SkyfixError
from skyfix.sim.sitl import EKF_CONST_POS_MODE, EKF_POS_HORIZ_ABS, SitlPilot, SitlVehicle, sim_params, wait_until
from skyfix.sim.sitl_flight import fly_on_autopilot, mission_setup, summarise_sitl, write_sitl_outputs

SCENARIOS = ("clean", "jam", "spoof", "step", "stuck")
# What each simulator can do to its receiver. ArduPilot's SITL offsets its position
# (SIM_GPS1_GLTCH_X/Y) or switches it off; PX4's failure injection (MAV_CMD_INJECT_FAILURE) can
# switch it off, freeze it (STUCK: the last fix repeated while the vehicle flies on) or degrade
# its metadata (WRONG), but cannot move its position: no spoof, no step.
VEHICLE_SCENARIOS = {"ardupilot": ("clean", "jam", "spoof", "step"), "px4": ("clean", "jam", "stuck")}
FAILURE_UNIT_SENSOR_GPS, FAILURE_TYPE_OFF, FAILURE_TYPE_STUCK = 4, 1, 2
# PX4 beside a GNSS: its simulated receiver on, the GNSS and skyfix's auxiliary global position
# fused together, failure injection allowed (SITL only).
PX4_GNSS_PARAMS = {"SENS_EN_GPSSIM": 1, "SYS_HAS_GPS": 1, "EKF2_GPS_CTRL": 7, "EKF2_AGP0_ID": 1,
                   "EKF2_AGP0_CTRL": 1, "SYS_FAILURE_EN": 1}

# Every parameter this mode changes on ArduPilot (README "Beside a GNSS"): GNSS in source set 1,
# skyfix's ExternalNav in source set 2, skyfix's switch by MAV_CMD_SET_EKF_SOURCE_SET.
ARDUPILOT_GNSS_PARAMS = {
    "GPS1_TYPE": 1,            # the receiver (SITL: its simulated u-blox)
    "SIM_GPS1_ENABLE": 1,
    "EK3_SRC1_POSXY": 3, "EK3_SRC1_VELXY": 3, "EK3_SRC1_POSZ": 1, "EK3_SRC1_VELZ": 3, "EK3_SRC1_YAW": 1,
    "EK3_SRC2_POSXY": 6,       # ExternalNav: skyfix's VISION_POSITION_ESTIMATE
    "EK3_SRC2_VELXY": 0, "EK3_SRC2_POSZ": 1, "EK3_SRC2_VELZ": 0, "EK3_SRC2_YAW": 1,
    "EK3_SRC_OPTIONS": 0,      # do not fuse every source's velocity: the spoofed GNSS's would stay in
    "VISO_TYPE": 1,            # MAVLink vision (VISION_POSITION_ESTIMATE)
    "VISO_POS_M_NSE": 0.5,     # the floor ArduPilot puts under skyfix's stated sigma
    "VISO_DELAY_MS": 50,       # capture to arrival, about
    "ARMING_SKIPCHK": 1 << 18,  # skip the VisualOdometry arming check: skyfix has no fix on the ground
}


@dataclass
class GnssScenario:
    """What happens to the GNSS, `after_s` seconds after the mission's first leg starts."""

    kind: str = "clean"
    after_s: float = 30.0
    rate_m_s: float = 1.0       # spoof: pull-off speed
    bearing_deg: float = 90.0   # spoof / step: where the GNSS is pulled towards (clockwise from north)
    step_m: float = 50.0        # step: size

    def __post_init__(self):
        if self.kind not in SCENARIOS:
            raise SkyfixError(f"GNSS scenario must be one of {SCENARIOS}, got '{self.kind}'")

    def pull_m(self, since_s: float) -> float:
        """How far the GNSS is pulled off (m) since_s seconds after the event started."""
        if since_s < 0 or self.kind in ("clean", "jam", "stuck"):
            return 0.0
        return self.step_m if self.kind == "step" else self.rate_m_s * since_s


class GnssPilot(SitlPilot):
    """ArduCopter flown on its GNSS: the take-off in GUIDED, targets in GUIDED, LAND at the end."""

    CLIMB_MODE, MISSION_MODE = "GUIDED", "GUIDED"

    def prepare(self) -> bool:
        """Until the EKF has a position from the GNSS (arming in GUIDED needs one)."""
        return wait_until(self, self._ekf_has_position, 120.0, "EKF has a position from the GNSS",
                          "EKF never had a GNSS position")

    def _ekf_has_position(self) -> bool:
        ekf = self.v.latest("EKF_STATUS_REPORT")
        return bool(ekf is not None and ekf.flags & EKF_POS_HORIZ_ABS and not ekf.flags & EKF_CONST_POS_MODE)

    def climb_to(self, agl_m: float, timeout_s: float = 120.0) -> bool:
        """MAV_CMD_NAV_TAKEOFF to agl_m, until the autopilot's own height is within 3 m of it."""
        self.v.conn.mav.command_long_send(1, 1, 22, 0, 0, 0, 0, 0, 0, 0, agl_m)
        return wait_until(self, lambda: (self.estimated_agl_m() or 0.0) >= agl_m - 3.0, timeout_s,
                          f"took off to {agl_m:.0f} m on the GNSS", "take-off timed out")

    def wait_for_position(self, timeout_s: float) -> bool:
        return self._ekf_has_position()

    def after_handover(self) -> None:
        """Nothing to hand over: the GNSS flew the climb."""

    def descend_and_land(self, timeout_s: float = 180.0) -> bool:
        return self.land(timeout_s)


class GnssEvent:
    """Applies the scenario to the simulated receiver from the control link (ArduPilot: its SIM_
    parameters; PX4: failure injection), from the moment `clock["start_mono_s"]` (set by the
    mission script when its first leg starts)."""

    def __init__(self, vehicle, scenario: GnssScenario, clock: dict, px4: bool = False):
        self.v, self.scenario, self.clock, self.px4 = vehicle, scenario, clock, px4
        self.started_mono_s: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="gnss-event")

    def start(self) -> "GnssEvent":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _set(self, name: str, value: float) -> None:
        self.v.conn.mav.param_set_send(1, 1, name.encode(), float(value), 9)  # MAV_PARAM_TYPE_REAL32

    def _set_glitch(self, dlat_deg: float, dlon_deg: float) -> None:
        """ArduPilot SITL: the receiver's position offset (SIM_GPS1_GLTCH_X/Y, degrees)."""
        self._set("SIM_GPS1_GLTCH_X", dlat_deg)
        self._set("SIM_GPS1_GLTCH_Y", dlon_deg)

    def _inject(self, failure_type: int) -> None:
        """PX4: MAV_CMD_INJECT_FAILURE on every GPS instance."""
        for _ in range(3):  # UDP: said thrice
            self.v.conn.mav.command_long_send(1, 1, 420, 0, FAILURE_UNIT_SENSOR_GPS, failure_type, 0, 0, 0, 0, 0)
            time.sleep(0.1)

    def _loop(self) -> None:
        s = self.scenario
        lat0, lon0, _ = self.v.frame.to_lla(*self.v.home_en)
        while not self._stop.wait(0.2):
            start = self.clock.get("start_mono_s")
            if start is None or time.monotonic() < start or s.kind == "clean":
                continue
            if self.started_mono_s is None:
                self.started_mono_s = time.monotonic()
                if s.kind == "jam" and self.px4:
                    return self._inject(FAILURE_TYPE_OFF)
                if s.kind == "stuck":
                    return self._inject(FAILURE_TYPE_STUCK)
                if s.kind == "jam":
                    for _ in range(3):  # the control link is TCP; said thrice all the same
                        self._set("SIM_GPS1_ENABLE", 0)
                    return
            pull = s.pull_m(time.monotonic() - self.started_mono_s)
            e0, n0 = self.v.home_en
            b = math.radians(s.bearing_deg)
            lat, lon, _ = self.v.frame.to_lla(e0 + pull * math.sin(b), n0 + pull * math.cos(b))
            self._set_glitch(float(lat) - float(lat0), float(lon) - float(lon0))
            if s.kind == "step":  # set once, and said again 0.5 s later
                time.sleep(0.5)
                self._set_glitch(float(lat) - float(lat0), float(lon) - float(lon0))
                return


def run_gnss_sitl(pack_path: str | Path, embedder, cfg, scenario: GnssScenario, out_dir: str | Path = "out/sitl-gnss",
                  binary: Optional[str] = None, progress: bool = True) -> dict:
    """Fly the mission on the GNSS with skyfix watching (see the module docstring); returns the
    summary (sitl_flight's, with "gnss": the watch's verdicts and switches and the scenario's
    scores, gnss_scores) and writes track.csv, track.png and summary.json into out_dir."""
    _check_scenario("ardupilot", scenario)
    pack, home_en, home_alt, cam, nav = mission_setup(pack_path, embedder, cfg)
    # WPNAV_SPEED_UP: the harness climbs at 5 m/s (ArduPilot's 2.5 m/s default took 50 s to 120 m).
    params = {**ARDUPILOT_GNSS_PARAMS, "WPNAV_SPEED_UP": 500, **sim_params(cfg.sim)}
    if cfg.sim.declination_deg is not None:
        params.update({"COMPASS_DEC": math.radians(cfg.sim.declination_deg), "COMPASS_AUTODEC": 0})
    clock = {"after_s": scenario.after_s}
    vehicle = SitlVehicle(pack.frame, home_alt, binary=binary, home_en=home_en, params=params).start()
    event = GnssEvent(vehicle, scenario, clock).start()
    try:
        flown = fly_on_autopilot(pack, nav, cam, cfg, vehicle, GnssPilot(vehicle),
                                 dataclasses.replace(cfg.bridge, protocol="ardupilot-extnav"), vehicle.skyfix_connection,
                                 nav.estimate_at, clock, cfg.sim.disturb.wind_m_s + cfg.sim.disturb.gust_m_s, progress,
                                 gnss_cfg=dataclasses.replace(cfg.gnss, watch=True))
    finally:
        event.close()
        vehicle.close()
    summary = summarise_sitl(vehicle, flown.pilot, flown.result, nav, flown.kinds, None, flown.bridge)
    return _finish(summary, pack, vehicle, flown, scenario, event, out_dir)


def _finish(summary: dict, pack, vehicle, flown, scenario: GnssScenario, event: "GnssEvent", out_dir) -> dict:
    """Either autopilot's summary with the telemetry's errors and the `gnss` block (the guard's
    summary, the scenario and its scores), written into out_dir."""
    summary["telemetry_error"] = flown.telemetry_errors
    summary["gnss"] = {**flown.guard.summary(vehicle.t0_mono_s), "scenario": dataclasses.asdict(scenario),
                       **gnss_scores(vehicle, flown, event.started_mono_s)}
    write_sitl_outputs(pack, vehicle, summary, Path(out_dir))
    return summary


def _check_scenario(autopilot: str, scenario: GnssScenario) -> None:
    if scenario.kind not in VEHICLE_SCENARIOS[autopilot]:
        raise SkyfixError(f"{autopilot} SITL cannot simulate a GNSS '{scenario.kind}': it can fly "
                          f"{', '.join(VEHICLE_SCENARIOS[autopilot])} (docs/gnss.md)")


def run_gnss_px4(pack_path: str | Path, embedder, cfg, scenario: GnssScenario, out_dir: str | Path = "out/px4-gnss",
                 progress: bool = True) -> dict:
    """PX4 SITL (SIH) on its simulated GNSS with skyfix's GLOBAL_POSITION_SENSOR fused beside it
    and the watch running; the scenario by failure injection. The climb, legs and landing are
    px4_flight's (the climb in Altitude mode: with a GNSS it could be Position mode; kept so the
    flights differ in the GNSS alone). Returns the summary with "gnss" as run_gnss_sitl's."""
    from skyfix.sim.px4 import ONBOARD_CONNECTION
    from skyfix.sim.px4_flight import Px4Pilot, Px4Vehicle, flight_params, summarise_px4
    _check_scenario("px4", scenario)
    pack, home_en, home_alt, cam, nav = mission_setup(pack_path, embedder, cfg)
    bridge_cfg = dataclasses.replace(cfg.bridge, protocol="px4", connection=ONBOARD_CONNECTION)
    clock = {"after_s": scenario.after_s}
    params = {**flight_params(cfg.sim), **PX4_GNSS_PARAMS, **cfg.sim.px4_params}
    with Px4Vehicle(pack.frame, home_alt, home_en, params) as vehicle:
        event = GnssEvent(vehicle, scenario, clock, px4=True).start()
        try:
            flown = fly_on_autopilot(pack, nav, cam, cfg, vehicle, Px4Pilot(vehicle, cfg.sim.speed_m_s), bridge_cfg,
                                     ONBOARD_CONNECTION, nav.estimate_at, clock, cfg.sim.disturb.wind_m_s, progress,
                                     gnss_cfg=dataclasses.replace(cfg.gnss, watch=True))
        finally:
            event.close()
    summary = summarise_px4(vehicle, flown.pilot, flown.result, nav, flown.kinds, flown.bridge)
    return _finish(summary, pack, vehicle, flown, scenario, event, out_dir)


def _autopilot_error_m(s) -> float:
    return math.hypot(s.est_east_m - s.true_east_m, s.est_north_m - s.true_north_m)


def gnss_scores(vehicle, flown, event_s: Optional[float]) -> dict:
    """The bench's figures for one flight: declared (a lost/contradicted verdict after the event),
    detection_s, the autopilot's error when declared (how far the GNSS had pulled it), its
    largest error from the event to the landing and after the switch, and false alarms
    (verdicts before the event, or any in a clean flight). event_s: when the event began
    (monotonic s; None for a clean flight)."""
    t0 = vehicle.t0_mono_s
    verdicts = [d for d in flown.guard.watch.declarations if d.state != "healthy"]
    after = [d for d in verdicts if event_s is not None and d.t_s >= event_s]
    false = [d for d in verdicts if event_s is None or d.t_s < event_s]
    end = flown.result.get("land_t_mono_s") or math.inf
    est = [s for s in vehicle.samples if s.est_east_m is not None]

    def worst(a: Optional[float]) -> Optional[float]:
        e = [_autopilot_error_m(s) for s in est if a is not None and a <= s.t_mono_s <= end]
        return round(max(e), 1) if e else None

    first = after[0] if after else None
    at_detection = None
    if first is not None:
        near = min(est, key=lambda s: abs(s.t_mono_s - first.t_s), default=None)
        at_detection = None if near is None else round(_autopilot_error_m(near), 1)
    switched = next((e["t_mono_s"] for e in flown.guard.events if e["what"].startswith("switched to skyfix")), None)
    return {"declared": first is not None, "declared_as": None if first is None else f"{first.state} ({first.kind})",
            "event_s": None if event_s is None else round(event_s - t0, 1),
            "detection_s": None if first is None else round(first.t_s - event_s, 2),
            "pulloff_at_detection_m": at_detection,
            "autopilot_max_error_m": worst(event_s),
            "autopilot_max_error_after_switch_m": worst(switched),
            "switched_s": None if switched is None else round(switched - t0, 1),
            "false_alarms": len(false)}


def format_gnss_summary(s: dict) -> str:
    g = s["gnss"]
    sc = g["scenario"]
    fmt = lambda v, unit="": "n/a" if v is None else f"{v}{unit}"  # noqa: E731
    return "\n".join([
        f"{'PX4' if s['vehicle'] == 'px4-sitl' else 'ArduCopter'} SITL on its GNSS, skyfix watching: scenario {sc['kind']} at {fmt(g['event_s'], ' s')}; "
        f"mission {'completed' if s['mission_completed'] else 'NOT completed'}",
        f"declared: {g['declared_as'] or 'nothing'} after {fmt(g['detection_s'], ' s')}, the autopilot "
        f"{fmt(g['pulloff_at_detection_m'], ' m')} off then; switched to skyfix at {fmt(g['switched_s'], ' s')}",
        f"autopilot's error from the event: max {fmt(g['autopilot_max_error_m'], ' m')}; after the switch "
        f"max {fmt(g['autopilot_max_error_after_switch_m'], ' m')}; false alarms {g['false_alarms']}",
        f"watch: {g['state']}, {g['checks']} checks; events: " + "; ".join(f"{e['t_s']} s {e['what']}" for e in g["events"][:8])])
