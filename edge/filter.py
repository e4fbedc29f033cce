"""Kinematic Kalman filter in local east/north metres, with an innovation gate.

Two motion models share one implementation (the state is [e, n, ve, vn] or [e, n, ve, vn, ae,
an]): constant velocity driven by white acceleration, or constant acceleration driven by white
jerk. The second follows a turn's steady lateral acceleration instead of lagging it, so the
velocity it propagates to a send time stays honest with a small process noise (README, "Velocity
in GPS_INPUT")."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from skyfix.errors import SkyfixError

CHI2_2DOF_999 = 13.82  # 99.9 % gate for a 2-D innovation
MAX_INFLATION = 25.0   # covariance widening after a rejection: at most 5x the 1-sigma
MOTION_MODELS = ("constant-velocity", "constant-acceleration")


@dataclass
class FilterState:
    t_s: float
    x: np.ndarray  # [east_m, north_m, vel_east_m_s, vel_north_m_s(, acc_east_m_s2, acc_north_m_s2)]
    P: np.ndarray  # n x n covariance


class MotionFilter:
    """Position, velocity (and acceleration) in east/north; `noise_sigma` is the white
    acceleration (m/s^2, constant-velocity model) or white jerk (m/s^3, constant-acceleration).

    `update` returns (accepted, mahalanobis_d2): a measurement whose innovation is outside the
    gate is rejected and leaves the state untouched.
    """

    def __init__(self, noise_sigma: float = 2.0, model: str = "constant-velocity",
                 init_speed_sigma_m_s: float = 10.0, init_accel_sigma_m_s2: float = 3.0,
                 gate_d2: float = CHI2_2DOF_999):
        if model not in MOTION_MODELS:
            raise SkyfixError(f"nav.motion_model must be one of {', '.join(MOTION_MODELS)}, got '{model}'")
        self.order = MOTION_MODELS.index(model) + 1  # highest derivative in the state
        self.q, self.v0, self.a0, self.gate_d2 = noise_sigma, init_speed_sigma_m_s, init_accel_sigma_m_s2, gate_d2
        self.state: Optional[FilterState] = None

    def reset(self, t_s: float, east_m: float, north_m: float, sigma_m: float) -> None:
        sigmas = [sigma_m, self.v0, self.a0][:self.order + 1]
        P = np.diag(np.repeat(np.square(sigmas), 2))
        self.state = FilterState(t_s, np.zeros(2 * (self.order + 1)), P)
        self.state.x[:2] = east_m, north_m

    def _transition(self, dt: float):
        """F and Q for dt seconds: each axis a chain of integrators, the white noise entering
        the highest derivative."""
        k = self.order + 1
        F1 = np.array([[dt ** (j - i) / math.factorial(j - i) if j >= i else 0.0 for j in range(k)]
                       for i in range(k)])
        g1 = np.array([dt ** (k - i) / math.factorial(k - i) for i in range(k)])
        F, g = np.kron(F1, np.eye(2)), np.kron(g1[:, None], np.eye(2))  # the same chain on east and north
        return F, self.q ** 2 * g @ g.T

    def predict(self, t_s: float) -> FilterState:
        """State propagated to t_s (does not change the filter)."""
        s = self.state
        dt = max(t_s - s.t_s, 0.0)
        F, Q = self._transition(dt)
        return FilterState(t_s, F @ s.x, F @ s.P @ F.T + Q)

    def innovation_d2(self, t_s: float, east_m: float, north_m: float, sigma_m: float) -> float:
        p = self.predict(t_s)
        y = np.array([east_m, north_m]) - p.x[:2]
        S = p.P[:2, :2] + np.eye(2) * sigma_m ** 2
        return float(y @ np.linalg.solve(S, y))

    def update(self, t_s: float, east_m: float, north_m: float, sigma_m: float) -> tuple[bool, float]:
        """A measured position, 1-sigma per axis sigma_m. Returns (accepted, mahalanobis_d2)."""
        return self._update(t_s, np.array([east_m, north_m]), 0, sigma_m)

    def update_velocity(self, t_s: float, vel_east_m_s: float, vel_north_m_s: float,
                        sigma_m_s: float) -> tuple[bool, float]:
        """A measured velocity (visual odometry: displacement over the frame interval), 1-sigma
        per axis sigma_m_s; gated like a position. Returns (accepted, mahalanobis_d2)."""
        return self._update(t_s, np.array([vel_east_m_s, vel_north_m_s]), 2, sigma_m_s)

    def _update(self, t_s: float, z: np.ndarray, first: int, sigma: float) -> tuple[bool, float]:
        p = self.predict(t_s)
        H = np.zeros((2, len(p.x)))
        H[0, first] = H[1, first + 1] = 1.0  # measures east/north of the state's `first` quantity
        y = z - H @ p.x
        S = H @ p.P @ H.T + np.eye(2) * sigma ** 2
        d2 = float(y @ np.linalg.solve(S, y))
        if d2 > self.gate_d2:
            return False, d2
        K = p.P @ H.T @ np.linalg.inv(S)
        P = (np.eye(len(p.x)) - K @ H) @ p.P
        self.state = FilterState(t_s, p.x + K @ y, 0.5 * (P + P.T))
        return True, d2

    def add_position_variance(self, var_m2: float) -> None:
        """Widen the position uncertainty by var_m2 (split over east and north): error sources
        the white process noise cannot represent, such as odometry's scale error, which
        accumulates with distance instead of averaging out."""
        s = self.state
        P = s.P.copy()
        P[0, 0] += var_m2 / 2
        P[1, 1] += var_m2 / 2
        self.state = FilterState(s.t_s, s.x, P)

    def inflate_for_manoeuvre(self, t_s: float, d2: float) -> None:
        """After a rejected strong measurement: the motion model may be wrong (a turn the
        constant-velocity model did not foresee). Predict to t_s and widen the covariance so the
        next measurements can pull the track back, instead of trusting a stale velocity.

        The widening is capped (variance x MAX_INFLATION): scaled by d2 alone, one wild
        measurement would open the gate to anything, and a run of wrong ones could then walk
        the track away at an impossible speed."""
        p = self.predict(t_s)
        factor = min(max(d2 / self.gate_d2, 1.0) * 4.0, MAX_INFLATION)
        self.state = FilterState(t_s, p.x, p.P * factor)

    @staticmethod
    def horiz_accuracy_m(state: FilterState) -> float:
        """DRMS: sqrt(var_e + var_n), the radius holding ~63-68 % of the error."""
        return float(np.sqrt(state.P[0, 0] + state.P[1, 1]))

    @staticmethod
    def speed_accuracy_m_s(state: FilterState) -> float:
        return float(np.sqrt(state.P[2, 2] + state.P[3, 3]))
