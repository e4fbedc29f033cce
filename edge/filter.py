"""Kinematic Kalman filter in local east/north metres, with an innovation gate.

Two motion models share one implementation (the state is [e, n, ve, vn] or [e, n, ve, vn, ae,
an]): constant velocity driven by white acceleration, or constant acceleration driven by white
jerk. The second follows a turn's steady lateral acceleration instead of lagging it, so the
velocity it propagates to a send time stays honest with a small process noise (docs/odometry.md, "Velocity
in GPS_INPUT").

A multicopter's attitude is its acceleration command: holding its height, its thrust pushes it
horizontally by g tan(pitch) forward and g tan(roll) / cos(pitch) to the right, and the air
pulls back by a linear drag k (v - wind). With `tilt_sigma_m_s2` set (constant acceleration
only), three more states carry what that relation needs and no vehicle datasheet gives:
[..., bias_e, bias_n, k], the bias being -k wind (m/s^2) and k the drag (1/s), and
`update_tilt` takes the attitude as the measurement a + k v + bias (an extended Kalman update,
k v being a product of states). In ArduCopter SITL that relation fits the true acceleration to
0.17 m/s^2 rms (docs/odometry.md, "Velocity in GPS_INPUT"), and it leads an acceleration instead of
following the velocity it has already changed."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from skyfix.errors import SkyfixError

CHI2_2DOF_999 = 13.82  # 99.9 % gate for a 2-D innovation
MAX_INFLATION = 25.0   # covariance widening after a rejection: at most 5x the 1-sigma
MOTION_MODELS = ("constant-velocity", "constant-acceleration")
GRAVITY_M_S2 = 9.80665
# Tilt states' priors and random walks: a drag of 0.1-0.7 /s covers multicopters (ArduCopter
# SITL's default frame: 0.47), a bias of up to ~3 m/s^2 a wind of 6 m/s at that drag; both
# change slowly (a wind shifts in minutes, the drag only with the payload).
DRAG_PRIOR_PER_S, DRAG_SIGMA_PER_S, DRAG_WALK_PER_S = 0.4, 0.3, 0.002
DRAG_RANGE_PER_S = (0.02, 2.0)  # a drag outside this is no multicopter's: the estimate is held inside
BIAS_SIGMA_M_S2, BIAS_WALK_M_S2 = 3.0, 0.05


def tilt_acceleration_en(roll_rad: float, pitch_rad: float, yaw_rad: float) -> np.ndarray:
    """Horizontal acceleration (east, north) in m/s^2 that a multicopter's thrust gives at this
    attitude when it holds its height (yaw clockwise from north, nose-down pitch negative)."""
    forward = -GRAVITY_M_S2 * math.tan(pitch_rad)
    right = GRAVITY_M_S2 * math.tan(roll_rad) / math.cos(pitch_rad)
    s, c = math.sin(yaw_rad), math.cos(yaw_rad)
    return np.array([forward * s + right * c, forward * c - right * s])


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
                 gate_d2: float = CHI2_2DOF_999, tilt_sigma_m_s2: Optional[float] = None):
        if model not in MOTION_MODELS:
            raise SkyfixError(f"nav.motion_model must be one of {', '.join(MOTION_MODELS)}, got '{model}'")
        self.order = MOTION_MODELS.index(model) + 1  # highest derivative in the state
        if tilt_sigma_m_s2 is not None and self.order < 2:
            raise SkyfixError("the attitude's acceleration (nav.tilt_acceleration) needs nav.motion_model: "
                              "constant-acceleration")
        self.q, self.v0, self.a0, self.gate_d2 = noise_sigma, init_speed_sigma_m_s, init_accel_sigma_m_s2, gate_d2
        self.tilt_sigma = tilt_sigma_m_s2
        self.chain = 2 * (self.order + 1)  # position, velocity(, acceleration) states
        self.state: Optional[FilterState] = None

    def reset(self, t_s: float, east_m: float, north_m: float, sigma_m: float) -> None:
        sigmas = np.repeat([sigma_m, self.v0, self.a0][:self.order + 1], 2)
        x = np.zeros(self.chain)
        x[:2] = east_m, north_m
        if self.tilt_sigma is not None:
            sigmas = np.concatenate([sigmas, [BIAS_SIGMA_M_S2, BIAS_SIGMA_M_S2, DRAG_SIGMA_PER_S]])
            x = np.concatenate([x, [0.0, 0.0, DRAG_PRIOR_PER_S]])
        self.state = FilterState(t_s, x, np.diag(np.square(sigmas)))

    def _transition(self, dt: float):
        """F and Q for dt seconds: each axis a chain of integrators, the white noise entering
        the highest derivative."""
        k = self.order + 1
        F1 = np.array([[dt ** (j - i) / math.factorial(j - i) if j >= i else 0.0 for j in range(k)]
                       for i in range(k)])
        g1 = np.array([dt ** (k - i) / math.factorial(k - i) for i in range(k)])
        F, g = np.kron(F1, np.eye(2)), np.kron(g1[:, None], np.eye(2))  # the same chain on east and north
        Q = self.q ** 2 * g @ g.T
        if self.tilt_sigma is None:
            return F, Q
        walk = np.array([BIAS_WALK_M_S2, BIAS_WALK_M_S2, DRAG_WALK_PER_S]) ** 2 * dt
        return np.block([[F, np.zeros((self.chain, 3))], [np.zeros((3, self.chain)), np.eye(3)]]), \
            np.block([[Q, np.zeros((self.chain, 3))], [np.zeros((3, self.chain)), np.diag(walk)]])

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
        return self._update(t_s, np.array([east_m, north_m]), self._rows(0), sigma_m)

    def update_velocity(self, t_s: float, vel_east_m_s: float, vel_north_m_s: float,
                        sigma_m_s: float, interval_s: float = 0.0) -> tuple[bool, float]:
        """A measured velocity, 1-sigma per axis sigma_m_s; gated like a position. Visual
        odometry measures the mean velocity over the interval_s seconds that end at t_s (the
        displacement between two frames over their interval): with an acceleration in the
        state, that is v(t_s) - a * interval_s / 2, not v(t_s), which would lag every
        acceleration by half a frame interval. Returns (accepted, mahalanobis_d2)."""
        H = self._rows(2)
        if self.order >= 2:
            H[0, 4] = H[1, 5] = -interval_s / 2  # mean of v over [t - interval, t] = v(t) - a interval / 2
        return self._update(t_s, np.array([vel_east_m_s, vel_north_m_s]), H, sigma_m_s)

    def update_tilt(self, t_s: float, roll_rad: float, pitch_rad: float, yaw_rad: float) -> tuple[bool, float]:
        """The vehicle's attitude at t_s as a measurement of a + k v + bias
        (`tilt_acceleration_en`, 1-sigma tilt_sigma_m_s2 per axis). Outside the gate it widens
        the acceleration's uncertainty first (a manoeuvre's onset). Returns (accepted,
        mahalanobis_d2 before any widening)."""
        if self.tilt_sigma is None:
            raise SkyfixError("this filter was made without tilt states (tilt_sigma_m_s2)")
        p = self.predict(t_s)
        c = self.chain
        k, v = p.x[c + 2], p.x[2:4]
        H = self._rows(4)
        H[0, 2] = H[1, 3] = k
        H[0, c] = H[1, c + 1] = 1.0
        H[:, c + 2] = v  # d(k v)/dk
        z = tilt_acceleration_en(roll_rad, pitch_rad, yaw_rad)
        predicted = p.x[4:6] + k * v + p.x[c:c + 2]
        accepted, d2 = self._update(t_s, z, H, self.tilt_sigma, predicted=predicted)
        if not accepted:
            # The attitude (from the autopilot's own link, not from the radio) changed faster
            # than the white-jerk model allows: the vehicle began a manoeuvre. Widen the
            # acceleration by the surprise and take it: rejecting it would keep the old
            # acceleration exactly when the velocity is changing fastest.
            y = z - predicted
            P = p.P.copy()
            P[4, 4] += y[0] ** 2
            P[5, 5] += y[1] ** 2
            self.state = FilterState(t_s, p.x, P)
            accepted = self._update(t_s, z, H, self.tilt_sigma, predicted=predicted)[0]
        self.state.x[c + 2] = min(max(self.state.x[c + 2], DRAG_RANGE_PER_S[0]), DRAG_RANGE_PER_S[1])
        return accepted, d2

    def _rows(self, first: int) -> np.ndarray:
        """H (2 x n) measuring east/north of the state's `first` quantity."""
        H = np.zeros((2, len(self.state.x)))
        H[0, first] = H[1, first + 1] = 1.0
        return H

    def _update(self, t_s: float, z: np.ndarray, H: np.ndarray, sigma: float,
                predicted: Optional[np.ndarray] = None) -> tuple[bool, float]:
        """Kalman update with z (2,), H (2 x n), per-axis sigma; `predicted` = h(x) where the
        measurement is not linear in the state (extended update), else H x."""
        p = self.predict(t_s)
        y = z - (H @ p.x if predicted is None else predicted)
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
        scale = np.ones(len(p.x))
        scale[:self.chain] = math.sqrt(factor)  # the motion, not the drag and wind, may be wrong
        self.state = FilterState(t_s, p.x, p.P * np.outer(scale, scale))

    @staticmethod
    def horiz_accuracy_m(state: FilterState) -> float:
        """DRMS: sqrt(var_e + var_n), the radius holding ~63-68 % of the error."""
        return float(np.sqrt(state.P[0, 0] + state.P[1, 1]))

    @staticmethod
    def speed_accuracy_m_s(state: FilterState) -> float:
        return float(np.sqrt(state.P[2, 2] + state.P[3, 3]))
