"""PX4 SITL (its built-in SIH quadrotor, headless) as a test tool: started with EKF2 set to fuse
an auxiliary global position, GPS off, and watched over its ground-station link.

The build is not part of skyfix: it is found in `../shared/px4` (its README: ports, parameters)
or wherever `PX4_SITL_DIR` points. PX4 listens for an onboard computer on udp 14580 and sends to
127.0.0.1:14540 (skyfix's bridge: `udpin:127.0.0.1:14540`); its ground-station link sends to
127.0.0.1:14550, where this module reads the simulator's truth (HIL_STATE_QUATERNION) and the
estimator's position (GLOBAL_POSITION_INT).
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from skyfix.errors import SkyfixError, require

ONBOARD_CONNECTION = "udpin:127.0.0.1:14540"
GCS_CONNECTION = "udpin:127.0.0.1:14550"
# EKF2 on skyfix's GLOBAL_POSITION_SENSOR alone: aux global position 0 fuses horizontal position
# from sensor id 1 (bridge.px4_sensor_id); the simulated GPS off and none expected.
AGP_ONLY_PARAMS = {"EKF2_AGP0_ID": 1, "EKF2_AGP0_CTRL": 1, "SENS_EN_GPSSIM": 0, "SYS_HAS_GPS": 0,
                   "SENS_EN_AGPSIM": 0}


def px4_dir() -> Optional[Path]:
    """The PX4 SITL build: $PX4_SITL_DIR, else ../shared/px4 beside the repository; None if absent."""
    for d in (os.environ.get("PX4_SITL_DIR"), Path(__file__).resolve().parents[2] / "shared" / "px4"):
        if d and (Path(d) / "bin" / "px4").is_file():
            return Path(d)
    return None


def _runnable_bin(src: Path, dst: Path) -> Path:
    """PX4's bin folder as it runs: `px4` and its client commands (`px4-param`, ...), which are
    symlinks to `px4`. A copy that lost its links (files holding their target's name, as a
    snapshot may leave them) gets them back, in dst; dst is returned."""
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "px4").symlink_to(src / "px4")
    for f in src.iterdir():
        if f.name == "px4":
            continue
        target = f.readlink() if f.is_symlink() else (Path(f.read_text().strip()) if f.stat().st_size < 64 else None)
        if target is not None and target.name == "px4":
            (dst / f.name).symlink_to("px4")
        else:
            (dst / f.name).symlink_to(f)
    return dst


class Px4Sitl:
    """A running PX4 SITL instance (context manager): `truth()` and `estimate()` give the latest
    (lat_deg, lon_deg) of the simulator and of EKF2 (None before any), read on the GCS link."""

    def __init__(self, params: Optional[dict] = None, home: Optional[tuple] = None, boot_timeout_s: float = 60.0):
        self.params = {**AGP_ONLY_PARAMS, **(params or {})}
        self.home, self.boot_timeout_s = home, boot_timeout_s
        self.proc = None
        self.workdir = None
        self._truth = self._estimate = None
        self._stop = threading.Event()
        self._conn = None
        self._thread = None
        self.statustext: list[str] = []

    def __enter__(self) -> "Px4Sitl":
        mavutil = require("pymavlink.mavutil")
        root = px4_dir()
        if root is None:
            raise SkyfixError("PX4 SITL not found: set PX4_SITL_DIR or provide ../shared/px4")
        self.workdir = Path(tempfile.mkdtemp(prefix="skyfix-px4-"))
        bin_dir = _runnable_bin(root / "bin", self.workdir / "bin")
        env = {**os.environ, "PX4_SYS_AUTOSTART": "10040", "PX4_SIMULATOR": "sihsim", "PX4_SIM_MODEL": "sihsim_quadx"}
        env.update({f"PX4_PARAM_{k}": str(v) for k, v in self.params.items()})
        if self.home:
            env.update(PX4_HOME_LAT=str(self.home[0]), PX4_HOME_LON=str(self.home[1]), PX4_HOME_ALT=str(self.home[2]))
        self._conn = mavutil.mavlink_connection(GCS_CONNECTION, source_system=255, source_component=190,
                                                dialect="common")
        self.proc = subprocess.Popen([str(bin_dir / "px4"), "-d", str(root / "etc"), "-w", str(self.workdir)],
                                     cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=open(self.workdir / "px4.log", "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            if self._conn.wait_heartbeat(timeout=self.boot_timeout_s) is None:
                raise SkyfixError(f"PX4 SITL sent no HEARTBEAT within {self.boot_timeout_s:.0f} s "
                                  f"(its log: {self.workdir / 'px4.log'})")
            self.request_interval(mavutil.mavlink.MAVLINK_MSG_ID_HIL_STATE_QUATERNION, 10.0)
            self._thread = threading.Thread(target=self._read, daemon=True, name="px4-gcs")
            self._thread.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._conn.recv_match(blocking=True, timeout=0.2)
            except Exception:  # the process went away: whoever waits on it notices
                return
            if msg is not None:
                self._take(msg, time.monotonic())

    def _take(self, msg, now: float) -> None:
        """One message of the GCS link (subclasses read more of them)."""
        kind = msg.get_type()
        if kind == "HIL_STATE_QUATERNION":
            self._truth = (msg.lat * 1e-7, msg.lon * 1e-7, msg.alt * 1e-3, now)
        elif kind == "GLOBAL_POSITION_INT" and (msg.lat or msg.lon):
            self._estimate = (msg.lat * 1e-7, msg.lon * 1e-7, msg.alt * 1e-3, now)
        elif kind == "STATUSTEXT":
            self.statustext.append(msg.text)

    def request_interval(self, msg_id: int, rate_hz: float) -> None:
        """MAV_CMD_SET_MESSAGE_INTERVAL on the GCS link."""
        self._conn.mav.command_long_send(self._conn.target_system, self._conn.target_component,
                                         511, 0, msg_id, 1e6 / rate_hz, 0, 0, 0, 0, 0)

    def truth(self) -> Optional[tuple]:
        """(lat_deg, lon_deg, alt_msl_m, local monotonic s of reception) of SIH, or None."""
        return self._truth

    def estimate(self) -> Optional[tuple]:
        """(lat_deg, lon_deg, alt_msl_m, reception s) of EKF2's global position, or None while it
        has none (PX4 sends no GLOBAL_POSITION_INT without a valid global position)."""
        return self._estimate

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self._conn is not None:
            self._conn.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def north_offset_deg(metres: float) -> float:
    """Degrees of latitude for `metres` north (spherical Earth: enough for a test offset)."""
    return math.degrees(metres / 6378137.0)
