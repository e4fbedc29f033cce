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
from skyfix.sim.disturbances import AttitudeError, Wind, drag_acceleration, tilt_for_acceleration
from skyfix.sim.route import Trajectory
from skyfix.render.views import ViewPose


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
    """True pose and noisy telemetry of the simulated drone.

    The true attitude is a gentle wobble, plus, with `disturb.tilt_from_drag` or any wind, the
    tilt that holds the track: the thrust supplies the route's acceleration and the drag of the
    air the vehicle flies through (sim/disturbances.py). The telemetry is the truth `lag` old,
    plus noise and the configured attitude error (bias, drift, step)."""

    def __init__(self, traj: Trajectory, cfg: SimConfig):
        self.traj, self.cfg = traj, cfg
        self.rng = np.random.default_rng(cfg.seed + 1)
        self._lock = threading.Lock()
        d = cfg.disturb
        self.wind = Wind(d.wind_m_s, d.wind_from_deg, d.gust_m_s, cfg.seed)
        self.tilt_from_drag = bool(d.tilt_from_drag or d.wind_m_s or d.gust_m_s)
        self.attitude_error = AttitudeError(d)

    def pose(self, t_s: float) -> ViewPose:
        """True pose at flight time t_s: on the route, heading along it, the wobble and the tilt."""
        e, n, yaw = self.traj.at(t_s)
        tilt = math.radians(self.cfg.tilt_deg)
        roll, pitch = tilt * math.sin(0.9 * t_s), tilt * math.cos(0.7 * t_s)
        if self.tilt_from_drag:
            accel = self._route_accel_en(t_s) + drag_acceleration(self._route_vel_en(t_s), self.wind.at(t_s),
                                                                  self.cfg.disturb.drag_per_m)
            r, p = tilt_for_acceleration(accel, yaw)
            roll, pitch = roll + r, pitch + p
        return ViewPose(e, n, self.agl_m(t_s), roll, pitch, yaw)

    def agl_m(self, t_s: float) -> float:
        """True height above the (flat) ground at t_s: sim.alt_agl_m, or from sim.start_agl_m
        down to it at sim.descent_m_s."""
        start = self.cfg.start_agl_m
        if start is None or start <= self.cfg.alt_agl_m:
            return self.cfg.alt_agl_m
        return max(self.cfg.alt_agl_m, start - self.cfg.descent_m_s * max(t_s, 0.0))

    def _route_vel_en(self, t_s: float, dt_s: float = 0.05) -> np.ndarray:
        a, b = self.traj.at(t_s - dt_s), self.traj.at(t_s + dt_s)
        return np.array([b[0] - a[0], b[1] - a[1]]) / (2 * dt_s)

    def _route_accel_en(self, t_s: float, dt_s: float = 0.25) -> np.ndarray:
        return (self._route_vel_en(t_s + dt_s) - self._route_vel_en(t_s - dt_s)) / (2 * dt_s)

    def velocity_en(self, t_s: float, dt_s: float = 0.05) -> tuple:
        """True (vel_east_m_s, vel_north_m_s) at flight time t_s (central difference over dt_s)."""
        a, b = self.pose(t_s - dt_s), self.pose(t_s + dt_s)
        return (b.east_m - a.east_m) / (2 * dt_s), (b.north_m - a.north_m) / (2 * dt_s)

    def noisy(self, t_s: float):
        """(roll_rad, pitch_rad, yaw_rad in 0..2pi, agl_m) as the autopilot reports them."""
        p = self.pose(t_s - self.attitude_error.lag_s)
        err = self.attitude_error.at(t_s)
        with self._lock:  # the generator is shared by the MAVLink thread and tests
            a = np.radians(self.cfg.attitude_noise_deg) * self.rng.standard_normal(3) + err
            dh = self.cfg.alt_noise_m * self.rng.standard_normal()
        return p.roll_rad + a[0], p.pitch_rad + a[1], (p.yaw_rad + a[2]) % (2 * math.pi), p.agl_m + dh
