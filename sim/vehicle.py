"""The vehicle the simulator flies, behind one interface.

`Vehicle` is what the flight loop (sim/run.py) needs from an autopilot: where skyfix's bridge
connects to it, the true pose at a flight time, and the fixes it received. The simulated
autopilot (sim/autopilot.py) is one; a real ArduPilot SITL plugs in beside it.
`VehicleModel` is the simulated drone's motion: true pose along the route and noisy telemetry.
"""
from __future__ import annotations

import math
import threading
from typing import Protocol, runtime_checkable

import numpy as np

from skyfix.config import SimConfig
from skyfix.sim.route import Trajectory
from skyfix.sim.views import ViewPose


@runtime_checkable
class Vehicle(Protocol):
    """An autopilot in the loop. Times are seconds of flight (0 at take-off)."""

    skyfix_connection: str  # pymavlink connection string skyfix's MavlinkBridge opens

    def start(self) -> "Vehicle": ...

    def close(self) -> None: ...

    def true_pose(self, t_s: float) -> ViewPose: ...

    def received(self) -> list[dict]:
        """Every fix the autopilot received, scored: t_s, east_m, north_m, true_east_m,
        true_north_m, horiz_accuracy_m, error_m (local metres)."""
        ...


class VehicleModel:
    """True pose and noisy telemetry of the simulated drone."""

    def __init__(self, traj: Trajectory, cfg: SimConfig):
        self.traj, self.cfg = traj, cfg
        self.rng = np.random.default_rng(cfg.seed + 1)
        self._lock = threading.Lock()

    def pose(self, t_s: float) -> ViewPose:
        """True pose at flight time t_s: on the route, heading along it, a gentle attitude wobble."""
        e, n, yaw = self.traj.at(t_s)
        tilt = math.radians(self.cfg.tilt_deg)
        return ViewPose(e, n, self.cfg.alt_agl_m, tilt * math.sin(0.9 * t_s), tilt * math.cos(0.7 * t_s), yaw)

    def velocity_en(self, t_s: float, dt_s: float = 0.05) -> tuple:
        """True (vel_east_m_s, vel_north_m_s) at flight time t_s (central difference over dt_s)."""
        a, b = self.pose(t_s - dt_s), self.pose(t_s + dt_s)
        return (b.east_m - a.east_m) / (2 * dt_s), (b.north_m - a.north_m) / (2 * dt_s)

    def noisy(self, t_s: float):
        """(roll_rad, pitch_rad, yaw_rad in 0..2pi, agl_m) as the autopilot's sensors report them."""
        p = self.pose(t_s)
        with self._lock:  # the generator is shared by the MAVLink thread and tests
            a = np.radians(self.cfg.attitude_noise_deg) * self.rng.standard_normal(3)
            dh = self.cfg.alt_noise_m * self.rng.standard_normal()
        return p.roll_rad + a[0], p.pitch_rad + a[1], (p.yaw_rad + a[2]) % (2 * math.pi), p.agl_m + dh
