"""ArduPilot SITL as the vehicle: the real flight code, with skyfix as its only GPS.

The binary (`SKYFIX_SITL_BIN`, default ../shared/sitl/arducopter) runs in a temporary folder
with its home at the map's centre and the parameters of `SKYFIX_PARAMS` (GPS1_TYPE=14, the
simulated GPS off, ...). Two MAVLink links over TCP:
- the control link (SERIAL0, like a ground station): modes, arming, take-off, targets, and the
  truth (`SIM_STATE`), the autopilot's estimate (`GLOBAL_POSITION_INT`), `EKF_STATUS_REPORT`
  and `STATUSTEXT`, recorded as the flight goes;
- skyfix's own link (SERIAL1, like a companion computer's serial port): `skyfix_connection`,
  where the MavlinkBridge reads telemetry and the FixPublisher sends GPS_INPUT.
`close()` always stops the process (terminate, then kill) and removes the folder.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from skyfix.errors import SkyfixError, require
from skyfix.geo import LocalFrame
from skyfix.sim.score import scored_fix
from skyfix.render.views import ViewPose

log = logging.getLogger("skyfix.sitl")
DEFAULT_BIN = Path(__file__).resolve().parent / ".." / ".." / "shared" / "sitl" / "arducopter"
GCS_SYSTEM = 255          # the control link speaks as a ground station (SYSID_MYGCS default)
EKF_POS_HORIZ_ABS = 16    # EKF_STATUS_REPORT flag: absolute horizontal position is good
EKF_CONST_POS_MODE = 128  # EKF_STATUS_REPORT flag: no position aiding (holding a constant position)
EKF_GPS_GLITCHING = 32768

# Every parameter skyfix changes from ArduPilot's SITL defaults, with its reason (README).
SKYFIX_PARAMS = {
    "GPS1_TYPE": 14,          # MAVLink GPS: GPS_INPUT from skyfix is the only GPS
    "SIM_GPS1_ENABLE": 0,     # the simulated GPS receiver off
    "EK3_SRC1_VELXY": 0,      # skyfix sends no velocity by default (see README): do not fuse GPS velocity
    "EK3_SRC1_VELZ": 0,       # no vertical velocity from skyfix either
    "PILOT_SPEED_UP": 500,    # climb at 5 m/s in ALT_HOLD to the hand-over height (default 2.5)
}


def read_parm_file(path: str | Path) -> dict:
    """ArduPilot's parameter file format: one 'NAME VALUE' (or 'NAME,VALUE') per line, '#'
    comments. Raises SkyfixError naming the line that is not one."""
    params = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise SkyfixError(f"cannot read SITL parameter file {path}: {exc}") from exc
    for i, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].replace(",", " ").split()
        if not text:
            continue
        try:
            name, value = text
            params[name] = float(value)
        except ValueError:
            raise SkyfixError(f"{path}:{i}: expected 'NAME VALUE', got {line.strip()!r}") from None
    return params


def sim_params(sim_cfg) -> dict:
    """SITL parameters from the sim config: its wind (SIM_WIND_SPD / _DIR / _TURB) and
    sim.sitl_params (which win)."""
    d = sim_cfg.disturb
    wind = {"SIM_WIND_SPD": d.wind_m_s, "SIM_WIND_DIR": d.wind_from_deg % 360, "SIM_WIND_TURB": d.gust_m_s} \
        if d.wind_m_s or d.gust_m_s else {}
    return {**wind, **sim_cfg.sitl_params}


def _die_with_parent() -> None:
    """In the SITL child before exec: Linux sends it SIGTERM when skyfix dies, however it dies."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: close() still stops it on every normal exit


def sitl_binary(path: Optional[str] = None) -> Path:
    """The SITL binary: `path`, else $SKYFIX_SITL_BIN, else ../shared/sitl/arducopter."""
    p = Path(path or os.environ.get("SKYFIX_SITL_BIN") or DEFAULT_BIN).resolve()
    if not p.is_file() or not os.access(p, os.X_OK):
        raise SkyfixError(f"ArduPilot SITL binary not found or not executable: {p} (set SKYFIX_SITL_BIN, "
                          "or build one: ./waf configure --board sitl && ./waf copter)")
    return p


@dataclass(frozen=True)
class Sample:
    """One moment of the flight, from the control link (local monotonic time)."""

    t_mono_s: float
    true_east_m: float
    true_north_m: float
    est_east_m: Optional[float]
    est_north_m: Optional[float]
    ekf_flags: int


class SitlVehicle:
    """The `Vehicle` interface for an ArduCopter SITL process (see the module docstring)."""

    def __init__(self, frame: LocalFrame, home_alt_msl_m: float, binary: Optional[str] = None,
                 instance: int = 0, params: Optional[dict] = None, speedup: float = 1.0,
                 home_en: tuple = (0.0, 0.0)):
        self.frame, self.home_alt_msl_m, self.home_en = frame, home_alt_msl_m, home_en
        self.binary, self.instance, self.speedup = sitl_binary(binary), instance, speedup
        self.params = {**SKYFIX_PARAMS, **(params or {})}
        self.skyfix_connection = f"tcp:127.0.0.1:{5762 + 10 * instance}"
        self.t0_mono_s = time.monotonic()
        self.samples: deque = deque(maxlen=20_000)
        self.statustexts: list[tuple] = []    # (t_mono_s, severity, text)
        self.modes: list[tuple] = []          # (t_mono_s, mode name) at each change
        self.sent_fixes: list[dict] = []      # what skyfix sent, scored at sending
        self._state: dict = {}
        self._proc: Optional[subprocess.Popen] = None
        self._dir: Optional[Path] = None
        self.conn = None
        self._stop = threading.Event()
        self._rx: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> "SitlVehicle":
        try:
            self._launch()
            self._connect(timeout_s)
        except BaseException:
            self.close()
            raise
        self._rx = threading.Thread(target=self._rx_loop, daemon=True, name="sitl-rx")
        self._rx.start()
        self._request_streams()
        return self

    def _launch(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="skyfix-sitl-"))
        (self._dir / "skyfix.parm").write_text("".join(f"{k} {v}\n" for k, v in self.params.items()))
        lat, lon, _ = self.frame.to_lla(*self.home_en)
        defaults = f"{self.binary.parent / 'copter.parm'},{self._dir / 'skyfix.parm'}"
        cmd = [str(self.binary), "--model", "+", "--speedup", str(self.speedup), f"-I{self.instance}", "-w",
               "--defaults", defaults, "--home", f"{lat:.8f},{lon:.8f},{self.home_alt_msl_m:.1f},0"]
        self._log = open(self._dir / "sitl.log", "w")
        self._proc = subprocess.Popen(cmd, cwd=self._dir, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True, preexec_fn=_die_with_parent)
        log.info("started SITL pid %d in %s", self._proc.pid, self._dir)

    def _connect(self, timeout_s: float) -> None:
        mavutil = require("pymavlink.mavutil")
        end = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise SkyfixError(f"SITL exited with code {self._proc.returncode}: {self._tail_log()}")
            try:
                self.conn = mavutil.mavlink_connection(f"tcp:127.0.0.1:{5760 + 10 * self.instance}",
                                                       source_system=GCS_SYSTEM, dialect="ardupilotmega")
                break
            except OSError:
                if time.monotonic() > end:
                    raise SkyfixError(f"SITL did not open its MAVLink port within {timeout_s:.0f} s")
                time.sleep(0.5)
        if self.conn.wait_heartbeat(timeout=max(end - time.monotonic(), 1.0)) is None:
            raise SkyfixError(f"no HEARTBEAT from SITL within {timeout_s:.0f} s: {self._tail_log()}")

    def _tail_log(self) -> str:
        try:
            return (self._dir / "sitl.log").read_text()[-500:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        self._stop.set()
        if self._rx is not None:
            self._rx.join(timeout=2.0)
        if self.conn is not None:
            self.conn.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5.0)
        if getattr(self, "_log", None) is not None:
            self._log.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    # ---- the Vehicle interface ----------------------------------------------------------------
    def true_pose(self, t_s: float = None) -> Optional[ViewPose]:
        """The latest true pose from SIM_STATE (the flight's 'now'; t_s is not used: SITL runs
        in real time and its truth is streamed), or None before the first one."""
        with self._lock:
            st = self._state.get("SIM_STATE")
        if st is None:
            return None
        e, n, _ = self.frame.to_enu(st["lat_deg"], st["lon_deg"])
        return ViewPose(float(e), float(n), st["alt_msl_m"] - self.home_alt_msl_m, st["roll"], st["pitch"], st["yaw"])

    def received(self) -> list[dict]:
        return list(self.sent_fixes)

    def record_fix(self, fix, t_mono_s: float) -> None:
        """Called by the publisher for every GPS_INPUT sent: scored against the truth now."""
        pose = self.true_pose()
        if pose is None:
            return
        velocity = None
        if fix.vel_east_m_s is not None and fix.vel_north_m_s is not None:
            with self._lock:
                st = self._state["SIM_STATE"]
            velocity = (fix.vel_east_m_s, fix.vel_north_m_s, fix.speed_accuracy_m_s, st["ve_m_s"], st["vn_m_s"])
        self.sent_fixes.append(scored_fix(self.frame, t_mono_s - self.t0_mono_s, "GPS_INPUT",
                                          fix.lat_deg, fix.lon_deg, fix.horiz_accuracy_m, pose, velocity))

    # ---- control link -------------------------------------------------------------------------
    def _request_streams(self) -> None:
        m = self.conn.mav
        for name, hz in (("SIM_STATE", 50), ("GLOBAL_POSITION_INT", 10), ("EKF_STATUS_REPORT", 5),
                         ("HEARTBEAT", 1), ("SYS_STATUS", 1)):
            msg_id = getattr(require("pymavlink.dialects.v20.ardupilotmega"), f"MAVLINK_MSG_ID_{name}")
            m.command_long_send(1, 1, 511, 0, msg_id, 1e6 / hz, 0, 0, 0, 0, 0)

    def _rx_loop(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.conn.recv_match(blocking=True, timeout=0.2)
            except Exception as exc:  # the process went away: the flight loop notices
                log.warning("SITL control link failed: %s", exc)
                return
            if msg is not None:
                self._take(msg, time.monotonic())

    def _take(self, msg, now: float) -> None:
        kind = msg.get_type()
        with self._lock:
            if kind == "SIM_STATE":
                lat = msg.lat_int / 1e7 if getattr(msg, "lat_int", 0) else msg.lat
                lon = msg.lon_int / 1e7 if getattr(msg, "lon_int", 0) else msg.lon
                self._state[kind] = {"lat_deg": lat, "lon_deg": lon, "alt_msl_m": msg.alt,
                                     "roll": msg.roll, "pitch": msg.pitch, "yaw": msg.yaw,
                                     "vn_m_s": msg.vn, "ve_m_s": msg.ve}
                self._sample(now)
            elif kind == "HEARTBEAT":
                # Only the autopilot's own: the SITL also routes skyfix's heartbeats to this link.
                if msg.get_srcComponent() == 1 and msg.autopilot == 3:  # MAV_AUTOPILOT_ARDUPILOTMEGA
                    self._state[kind] = msg
                    names = {v: k for k, v in (self.conn.mode_mapping() or {}).items()}
                    mode = names.get(msg.custom_mode, str(msg.custom_mode))
                    if not self.modes or self.modes[-1][1] != mode:
                        self.modes.append((now, mode))
            elif kind in ("GLOBAL_POSITION_INT", "EKF_STATUS_REPORT"):
                self._state[kind] = msg
            elif kind == "STATUSTEXT":
                self.statustexts.append((now, msg.severity, msg.text))
                log.info("SITL: %s", msg.text)

    def _sample(self, now: float) -> None:
        st, gpi = self._state["SIM_STATE"], self._state.get("GLOBAL_POSITION_INT")
        te, tn, _ = self.frame.to_enu(st["lat_deg"], st["lon_deg"])
        ee = en = None
        if gpi is not None and (gpi.lat or gpi.lon):
            ee, en, _ = self.frame.to_enu(gpi.lat / 1e7, gpi.lon / 1e7)
        ekf = self._state.get("EKF_STATUS_REPORT")
        self.samples.append(Sample(now, float(te), float(tn),
                                   None if ee is None else float(ee), None if en is None else float(en),
                                   ekf.flags if ekf is not None else 0))

    def latest(self, kind: str):
        with self._lock:
            return self._state.get(kind)


# ---- flying the SITL: what a ground station or a mission script does ---------------------------------
class Pilot:
    """What a ground station does over an autopilot's control link, the part both autopilots
    share: the log of steps, modes (each autopilot says how to request one: `request_mode`),
    arming, the autopilot's own state. Subclasses (SitlPilot, sim.px4_flight.Px4Pilot) add the
    climb, the position wait, the legs and the landing in their autopilot's terms. Each step
    waits for its result with a timeout and says what happened."""

    ARM_TIMEOUT_S = 120.0

    def __init__(self, vehicle):
        self.v = vehicle
        self.events: list[tuple] = []  # (t_mono_s, text)

    def note(self, text: str) -> None:
        self.events.append((time.monotonic(), text))
        log.info("pilot: %s", text)

    def close(self) -> None:
        """Stop what the pilot runs in the background (PX4's sticks); nothing by default."""

    def request_mode(self, mode: str) -> None:
        raise NotImplementedError

    def mode(self) -> Optional[str]:
        return self.v.modes[-1][1] if self.v.modes else None

    def set_mode(self, mode: str, timeout_s: float = 10.0) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.request_mode(mode)
            time.sleep(0.5)
            if self.mode() == mode:
                self.note(f"mode {mode}")
                return True
        self.note(f"mode {mode} refused: {self._last_texts()}")
        return False

    def _last_texts(self, n: int = 3) -> str:
        return "; ".join(t for _, _, t in self.v.statustexts[-n:])

    def armed(self) -> bool:
        hb = self.v.latest("HEARTBEAT")
        return bool(hb is not None and hb.base_mode & 128)  # MAV_MODE_FLAG_SAFETY_ARMED

    def arm(self, mode: str, timeout_s: Optional[float] = None) -> bool:
        """Arm in `mode` (set again if something else changed it meanwhile)."""
        end = time.monotonic() + (timeout_s or self.ARM_TIMEOUT_S)
        while time.monotonic() < end:
            if self.mode() != mode:
                self.set_mode(mode)
            self.v.conn.mav.command_long_send(1, 1, 400, 0, 1, 0, 0, 0, 0, 0, 0)  # ARM_DISARM
            time.sleep(1.0)
            if self.armed():
                self.note("armed")
                return True
        self.note(f"arming refused: {self._last_texts()}")
        return False


class SitlPilot(Pilot):
    """ArduCopter's pilot: the EKF origin, the non-GPS climb in ALT_HOLD on the RC throttle,
    GUIDED targets, the ALT_HOLD descent."""

    CLIMB_MODE, MISSION_MODE = "ALT_HOLD", "GUIDED"

    def prepare(self) -> bool:
        return self.set_origin()

    def after_handover(self) -> None:
        self.throttle(0)  # hand the throttle back; GUIDED flies the targets

    def abort(self) -> None:
        self.land()

    def request_mode(self, mode: str) -> None:
        """MAV_CMD_DO_SET_MODE (custom mode); the HEARTBEAT says whether it was taken."""
        self.v.conn.mav.command_long_send(1, 1, 176, 0, 1, self.v.conn.mode_mapping()[mode], 0, 0, 0, 0, 0)

    def set_origin(self, timeout_s: float = 30.0) -> bool:
        """Tell the EKF where it is before take-off (SET_GPS_GLOBAL_ORIGIN at the launch point,
        as a ground station does for non-GPS navigation). Without an origin the autopilot cannot
        look up the magnetic declination, so its heading is magnetic, not true (8.7 deg off over
        the Colorado map), until skyfix's first fix sets one in flight and the heading jumps."""
        lat, lon, _ = self.v.frame.to_lla(*self.v.home_en)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.v.conn.mav.set_gps_global_origin_send(1, int(lat * 1e7), int(lon * 1e7),
                                                      int(self.v.home_alt_msl_m * 1e3))
            time.sleep(1.0)
            if any("origin set" in text for _, _, text in self.v.statustexts):
                self.note("EKF origin set at the launch point")
                return True
        self.note("EKF origin refused")
        return False

    def throttle(self, pwm: int) -> None:
        """RC override of channel 3 (0 releases it)."""
        self.v.conn.mav.rc_channels_override_send(1, 1, 0, 0, pwm, 0, 0, 0, 0, 0)

    def estimated_agl_m(self) -> Optional[float]:
        gpi = self.v.latest("GLOBAL_POSITION_INT")
        return None if gpi is None else gpi.relative_alt / 1e3

    def estimated_en(self) -> Optional[tuple]:
        """(east_m, north_m) of the autopilot's own position estimate, or None before it has one."""
        gpi = self.v.latest("GLOBAL_POSITION_INT")
        if gpi is None or not (gpi.lat or gpi.lon):
            return None
        e, n, _ = self.v.frame.to_enu(gpi.lat / 1e7, gpi.lon / 1e7)
        return float(e), float(n)

    def climb_to(self, agl_m: float, timeout_s: float = 120.0) -> bool:
        """ALT_HOLD climb (no position needed) to agl_m by the autopilot's own height."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.throttle(1900)
            time.sleep(0.2)
            if (self.estimated_agl_m() or 0.0) >= agl_m - 3.0:
                self.throttle(1500)
                self.note(f"at {self.estimated_agl_m():.0f} m: holding")
                return True
        self.throttle(1500)
        self.note("climb timed out")
        return False

    def wait_for_position(self, timeout_s: float) -> bool:
        """Until the EKF reports an absolute horizontal position (it took skyfix's fixes)."""
        def has_position() -> bool:
            self.throttle(1500)  # keep holding the climb's altitude in ALT_HOLD
            ekf, gpi = self.v.latest("EKF_STATUS_REPORT"), self.v.latest("GLOBAL_POSITION_INT")
            return bool(ekf is not None and ekf.flags & EKF_POS_HORIZ_ABS and not ekf.flags & EKF_CONST_POS_MODE
                        and gpi is not None and (gpi.lat or gpi.lon))
        return wait_until(self, has_position, timeout_s, "EKF has an absolute position from skyfix",
                          "EKF never took skyfix's position")

    def goto(self, east_m: float, north_m: float, agl_m: float, timeout_s: float, within_m: float = 5.0,
             stall_s: float = 60.0) -> bool:
        """GUIDED target (`fly_leg`)."""
        lat, lon, _ = self.v.frame.to_lla(east_m, north_m)

        def step() -> bool:
            if self.v.modes and self.v.modes[-1][1] != "GUIDED":
                # A failsafe took over (e.g. LAND on lost position). An operator resumes the
                # mission once the autopilot accepts GUIDED again (its position is back).
                self.request_mode("GUIDED")
                time.sleep(1.0)
                if self.v.modes[-1][1] == "GUIDED":
                    self.note("GUIDED again after the failsafe")
                return False
            self.v.conn.mav.set_position_target_global_int_send(
                0, 1, 1, 6, 0b110111111000, int(lat * 1e7), int(lon * 1e7), agl_m, 0, 0, 0, 0, 0, 0, 0, 0)
            time.sleep(0.5)
            return True
        return fly_leg(self, east_m, north_m, step, timeout_s, within_m, stall_s)

    def descend_and_land(self, timeout_s: float = 180.0) -> bool:
        """The way down mirrors the way up: below the hand-over height skyfix has no fix (the
        map-sized crop no longer fits in the frame), so descend in ALT_HOLD, which needs no
        position, and let the land detector disarm on the ground."""
        if not self.set_mode("ALT_HOLD"):
            return self.land(timeout_s)
        end = time.monotonic() + timeout_s
        history: deque = deque(maxlen=15)  # (t, agl) over the last 3 s
        while time.monotonic() < end:
            if not self.armed():
                self.throttle(0)
                self.note("landed (ALT_HOLD descent) and disarmed")
                return True
            agl = self.estimated_agl_m() or 0.0
            history.append((time.monotonic(), agl))
            stalled = len(history) == history.maxlen and history[0][1] - agl < 0.3
            if agl < 2.0 or (stalled and agl < 10.0):  # on the ground (the baro height may not read 0): throttle off
                self.throttle(1000)
                self.v.conn.mav.command_long_send(1, 1, 400, 0, 0, 0, 0, 0, 0, 0, 0)  # disarm
            else:
                self.throttle(1200 if agl > 15.0 else 1350)
            time.sleep(0.2)
        self.note("descent timed out")
        return False

    def land(self, timeout_s: float = 180.0) -> bool:
        self.set_mode("LAND")
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if not self.armed():
                self.note("landed and disarmed")
                return True
            time.sleep(0.5)
        self.note("landing timed out")
        return False


def fly_leg(pilot, east_m: float, north_m: float, step, timeout_s: float, within_m: float = 5.0,
            stall_s: float = 60.0) -> bool:
    """A leg to (east_m, north_m), for either autopilot's pilot: `step()` commands the target
    and waits a moment; it returns False while something else (a failsafe) has the vehicle,
    which is not counted as a stall. True once the truth is within within_m of the target;
    False at timeout_s, when disarmed, or when the vehicle came no closer by 5 m for stall_s."""
    end = time.monotonic() + timeout_s
    best_m, best_t = math.inf, time.monotonic()
    while time.monotonic() < end:
        if time.monotonic() - best_t > stall_s:
            pilot.note(f"no progress towards ({east_m:.0f}, {north_m:.0f}) for {stall_s:.0f} s")
            return False
        if not pilot.armed():
            pilot.note("disarmed during the mission")
            return False
        if not step():
            best_t = time.monotonic()
            continue
        pose = pilot.v.true_pose()
        dist_m = math.inf if pose is None else math.hypot(pose.east_m - east_m, pose.north_m - north_m)
        if dist_m <= within_m:
            pilot.note(f"reached ({east_m:.0f}, {north_m:.0f})")
            return True
        if dist_m < best_m - 5.0:
            best_m, best_t = dist_m, time.monotonic()
    pilot.note(f"did not reach ({east_m:.0f}, {north_m:.0f})")
    return False


def wait_until(pilot, condition, timeout_s: float, reached: str, failed: str, period_s: float = 0.5) -> bool:
    """Poll condition() every period_s until it holds (True, noted `reached`) or timeout_s passes
    (False, noted `failed`)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            pilot.note(reached)
            return True
        time.sleep(period_s)
    pilot.note(failed)
    return False
