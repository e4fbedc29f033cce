"""The simulated autopilot: plays the flight controller over real MAVLink/UDP.

It streams what ArduPilot streams to a companion computer (HEARTBEAT, ATTITUDE,
GLOBAL_POSITION_INT with relative altitude and no GPS, ALTITUDE, SYSTEM_TIME; stamped with its
own boot clock) and scores every GPS_INPUT / GLOBAL_POSITION_SENSOR it receives against the
true position at reception.
"""
from __future__ import annotations

import math
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Optional

from skyfix.errors import require
from skyfix.firmware_bridge.messages import mavlink_module
from skyfix.geo import LocalFrame
from skyfix.sim.score import scored_fix
from skyfix.sim.vehicle import VehicleModel
from skyfix.render.views import ViewPose

BOOT_BEFORE_TAKEOFF_S = 60.0  # the FC booted a minute before take-off


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimAutopilot:
    """The `Vehicle` of the simulator: streams telemetry to skyfix, receives and scores its fixes.

    t0_mono_s is take-off on the local monotonic clock; flight time t_s = monotonic - t0_mono_s.
    """

    def __init__(self, vehicle: VehicleModel, t0_mono_s: float, frame: LocalFrame,
                 telemetry_hz: float = 20.0, tlog: Optional[Path] = None):
        """tlog: record what is sent, as a ground station's telemetry log, plus the true
        position as the log's GPS (GPS_RAW_INT, in the file only: skyfix is never sent it), for
        `skyfix replay`."""
        mavutil = require("pymavlink.mavutil")
        self.vehicle, self.t0, self.frame, self.hz = vehicle, t0_mono_s, frame, telemetry_hz
        port = free_udp_port()
        self.skyfix_connection = f"udpin:127.0.0.1:{port}"
        self.conn = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1,
                                               source_component=1, dialect="common")
        self._received: list[dict] = []
        self.silent_s = (math.inf, math.inf)  # fault injection: no traffic in [from, until) flight time
        self._stop = threading.Event()
        self._threads = []
        self.tlog = open(tlog, "wb") if tlog else None
        self._tlog_lock = threading.Lock()
        if self.tlog:
            send = self.conn.mav.send

            def send_and_log(msg, force_mavlink1=False):
                send(msg, force_mavlink1=force_mavlink1)
                self._log(msg)
            self.conn.mav.send = send_and_log

    # ---- the Vehicle interface ------------------------------------------------------------------
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
        if self.tlog:
            self.tlog.close()

    def _log(self, msg) -> None:
        """One record of a .tlog: the UNIX time in microseconds (big-endian) and the packet."""
        with self._tlog_lock:
            self.tlog.write(struct.pack(">Q", int(time.time() * 1e6)) + msg.get_msgbuf())

    def true_pose(self, t_s: float) -> ViewPose:
        return self.vehicle.pose(t_s)

    def received(self) -> list[dict]:
        return list(self._received)

    # ---- faults -------------------------------------------------------------------------------
    def drop_link(self, from_s: float, duration_s: float) -> None:
        """Both directions silent from flight time from_s for duration_s."""
        self.silent_s = (from_s, from_s + duration_s)

    def _silent(self, t_s: float) -> bool:
        return self.silent_s[0] <= t_s < self.silent_s[1]

    # ---- threads ------------------------------------------------------------------------------
    def _tx(self) -> None:
        k = 0
        while not self._stop.wait(1.0 / self.hz):
            t = time.monotonic() - self.t0
            if not self._silent(t):
                self._send_telemetry(t, with_slow=k % int(self.hz) == 0)
            k += 1

    def _send_telemetry(self, t_s: float, with_slow: bool) -> None:
        m, mav = mavlink_module(), self.conn.mav
        boot_s = t_s + BOOT_BEFORE_TAKEOFF_S
        boot_ms = int(boot_s * 1e3)
        roll, pitch, yaw, agl = self.vehicle.noisy(t_s)
        yaw_wrapped = (yaw + math.pi) % (2 * math.pi) - math.pi
        mav.attitude_send(boot_ms, roll, pitch, yaw_wrapped, 0.0, 0.0, 0.0)
        # No GPS: lat/lon are zero; relative_alt (mm) is the barometric height over home.
        msl = self.vehicle.cfg.ground_alt_msl_m + agl
        mav.global_position_int_send(boot_ms, 0, 0, int(msl * 1e3), int(agl * 1e3), 0, 0, 0, 65535)
        mav.altitude_send(int(boot_s * 1e6), msl, msl, msl, agl, float("nan"), float("nan"))
        if self.tlog:  # the log's GPS: the true position, for scoring a replay
            pose = self.vehicle.pose(t_s)
            lat, lon, _ = self.frame.to_lla(pose.east_m, pose.north_m)
            gps = mav.gps_raw_int_encode(int(time.time() * 1e6), 3, int(round(lat * 1e7)), int(round(lon * 1e7)),
                                         int(msl * 1e3), 80, 120, 0, 0, 12)
            gps.pack(mav)
            self._log(gps)
        if with_slow:  # 1 Hz
            mav.heartbeat_send(m.MAV_TYPE_QUADROTOR, m.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0,
                               m.MAV_STATE_ACTIVE)
            mav.system_time_send(int(time.time() * 1e6), boot_ms)

    def _rx(self) -> None:
        while not self._stop.is_set():
            msg = self.conn.recv_match(type=["GPS_INPUT", "GLOBAL_POSITION_SENSOR"], blocking=True, timeout=0.2)
            if msg is None:
                continue
            t = time.monotonic() - self.t0
            if not self._silent(t):
                self._received.append(self._scored(msg, t))

    def _scored(self, msg, t_s: float) -> dict:
        is_gps_input = msg.get_type() == "GPS_INPUT"
        acc = msg.horiz_accuracy if is_gps_input else msg.eph
        velocity = None
        if is_gps_input and not msg.ignore_flags & mavlink_module().GPS_INPUT_IGNORE_FLAG_VEL_HORIZ:
            velocity = (msg.ve, msg.vn, msg.speed_accuracy, *self.vehicle.velocity_en(t_s))
        return scored_fix(self.frame, t_s, msg.get_type(), msg.lat / 1e7, msg.lon / 1e7, acc,
                          self.vehicle.pose(t_s), velocity)
