"""The track gate: which measurements become a track the autopilot may be given.

A new track starts as a candidate from one strong measurement and is published only after
`confirm_measurements` consistent measurements. A measurement the filter's innovation gate
rejects suspends publishing and widens the covariance (a manoeuvre the constant-velocity model
did not foresee, so the next measurements can pull the track back); `confirm_measurements`
rejections in a row mean the track itself may be wrong, and it restarts from the new evidence.
No accepted measurement for `lost_after_s`: the track is lost and the search goes global.

Thread-safe: the navigator offers measurements from the camera thread while the publisher asks
`estimate_at` from its own. Times are seconds on one monotonic clock (the frames' capture time).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

from skyfix.contracts import Reason
from skyfix.edge.filter import MotionFilter, FilterState


@dataclass(frozen=True)
class GateVerdict:
    """What the gate made of one measurement: `state` is set only when the track is confirmed
    and accurate enough to publish."""

    kind: Reason
    detail: str = ""
    state: Optional[FilterState] = None


class TrackGate:
    """Confirmation, disagreement, reset and covariance widening around one filter."""

    def __init__(self, confirm_measurements: int = 3, lost_after_s: float = 5.0,
                 max_accuracy_m: float = 15.0, accel_sigma_m_s2: float = 3.0,
                 odometry_scale_sigma: float = 0.05, odometry_gap_s: float = 1.0,
                 motion_model: str = "constant-velocity", jerk_sigma_m_s3: float = 1.0,
                 tilt_sigma_m_s2: Optional[float] = None):
        self.confirm = confirm_measurements
        self.lost_after_s, self.max_accuracy_m = lost_after_s, max_accuracy_m
        noise = jerk_sigma_m_s3 if motion_model == "constant-acceleration" else accel_sigma_m_s2
        # tilt_sigma_m_s2: the attitude counts as a measured acceleration (multicopters; filter.py).
        self.filter = MotionFilter(noise, motion_model, tilt_sigma_m_s2=tilt_sigma_m_s2)
        self.confirmations = 0
        self.disagreements = 0
        self.last_accept_s: Optional[float] = None
        # Odometry since the last position measurement: the scale error it carried the track
        # with (m: each step's distance x its scale's uncertainty, added up) and when it last did.
        self.odometry_scale_sigma, self.odometry_gap_s = odometry_scale_sigma, odometry_gap_s
        self.odometry_err_m = 0.0
        self.last_odometry_s: Optional[float] = None
        self._lock = threading.Lock()

    # ---- questions ----------------------------------------------------------------------------
    def tracking(self, t_s: float) -> bool:
        """True while a track (confirmed or candidate) has had a position measurement within
        lost_after_s, or while odometry carries a confirmed track with an accuracy under the cap."""
        if self.filter.state is None or self.last_accept_s is None:
            return False
        return t_s - self.last_accept_s <= self.lost_after_s or self._coasting(t_s)

    def _coasting(self, t_s: float) -> bool:
        return (self.confirmations >= self.confirm and self.last_odometry_s is not None
                and self.last_odometry_s > self.last_accept_s and t_s - self.last_odometry_s <= self.odometry_gap_s
                and MotionFilter.horiz_accuracy_m(self.filter.predict(t_s)) <= self.max_accuracy_m)

    def prior(self, t_s: float) -> Optional[tuple]:
        """(east_m, north_m, horiz_accuracy_m) predicted at t_s while tracking, else None: the
        centre and size of the search window."""
        with self._lock:
            if not self.tracking(t_s):
                return None
            pred = self.filter.predict(t_s)
        return float(pred.x[0]), float(pred.x[1]), MotionFilter.horiz_accuracy_m(pred)

    def confirmed(self, t_s: float) -> bool:
        """True while a confirmed track is tracking."""
        with self._lock:
            return self.tracking(t_s) and self.confirmations >= self.confirm

    def agrees(self, t_s: float, east_m: float, north_m: float, sigma_m: float) -> bool:
        """True when a confirmed track is tracking and this measurement falls inside its gate
        (without offering it). Lets a weaker match count only where the track expects it."""
        with self._lock:
            if not self.tracking(t_s) or self.confirmations < self.confirm:
                return False
            return self.filter.innovation_d2(t_s, east_m, north_m, sigma_m) <= self.filter.gate_d2

    def estimate_at(self, now_s: float) -> Optional[tuple]:
        """(FilterState propagated to now_s, age in s of the newest accepted measurement), or
        None when the track is not confirmed or its accuracy is above the publish cap."""
        with self._lock:
            if self.filter.state is None or self.confirmations < self.confirm:
                return None
            state = self.filter.predict(now_s)
            # Age of the newest measurement of either kind: odometry keeps the velocity current.
            age_s = now_s - max(self.last_accept_s, self.last_odometry_s or self.last_accept_s)
        if MotionFilter.horiz_accuracy_m(state) > self.max_accuracy_m:
            return None
        return state, age_s

    # ---- the one way in -----------------------------------------------------------------------
    def offer(self, t_s: float, east_m: float, north_m: float, sigma_m: float) -> GateVerdict:
        """Offer one position measurement (local metres, 1-sigma per axis) taken at t_s."""
        with self._lock:
            if not self.tracking(t_s):
                self._restart(t_s, east_m, north_m, sigma_m)
                return GateVerdict(Reason.ACQUIRING, f"candidate track 1/{self.confirm}")
            accepted, d2 = self.filter.update(t_s, east_m, north_m, sigma_m)
            if not accepted:
                return self._disagree(t_s, east_m, north_m, sigma_m, d2)
            self.disagreements = 0
            self.confirmations += 1
            self.last_accept_s, self.odometry_err_m = t_s, 0.0
            if self.confirmations < self.confirm:
                return GateVerdict(Reason.ACQUIRING, f"candidate track {self.confirmations}/{self.confirm}")
            state = self.filter.state
        accuracy_m = MotionFilter.horiz_accuracy_m(state)
        if accuracy_m > self.max_accuracy_m:
            return GateVerdict(Reason.INACCURATE, f"filter accuracy {accuracy_m:.1f} m")
        return GateVerdict(Reason.OK, state=state)

    def offer_velocity(self, t_s: float, vel_east_m_s: float, vel_north_m_s: float, sigma_m_s: float,
                       distance_m: float, interval_s: float = 0.0, scale_sigma: Optional[float] = None) -> bool:
        """Offer one odometry velocity (frame-to-frame displacement over the interval_s seconds
        that end at t_s).
        Only a confirmed, live track takes it: odometry never starts or confirms a track. Its
        scale error (odometry_scale_sigma of the distance carried since the last position
        measurement; `scale_sigma` where the caller knows the scale worse, e.g. a height the image
        contradicts) is added to the position variance as it accumulates. Returns accepted."""
        with self._lock:
            if self.confirmations < self.confirm or not self.tracking(t_s):
                return False
            accepted, _ = self.filter.update_velocity(t_s, vel_east_m_s, vel_north_m_s, sigma_m_s, interval_s)
            if accepted:
                before = self.odometry_err_m ** 2
                self.odometry_err_m += (self.odometry_scale_sigma if scale_sigma is None else scale_sigma) * distance_m
                self.filter.add_position_variance(self.odometry_err_m ** 2 - before)
                self.last_odometry_s = t_s
            return accepted

    def offer_attitude(self, t_s: float, roll_rad: float, pitch_rad: float, yaw_rad: float) -> bool:
        """Offer the vehicle's attitude at t_s as its thrust's acceleration (a multicopter's tilt;
        `MotionFilter.update_tilt`). Only a confirmed, live track of a filter with tilt states
        takes it: like odometry, it never starts or confirms a track. Returns accepted."""
        with self._lock:
            if (self.filter.tilt_sigma is None or self.confirmations < self.confirm
                    or not self.tracking(t_s)):
                return False
            return self.filter.update_tilt(t_s, roll_rad, pitch_rad, yaw_rad)[0]

    def _restart(self, t_s: float, east_m: float, north_m: float, sigma_m: float) -> None:
        self.filter.reset(t_s, east_m, north_m, sigma_m)
        self.confirmations, self.disagreements, self.last_accept_s = 1, 0, t_s
        self.odometry_err_m, self.last_odometry_s = 0.0, None

    def _disagree(self, t_s, east_m, north_m, sigma_m, d2: float) -> GateVerdict:
        self.disagreements += 1
        if self.disagreements >= self.confirm:
            # Strong measurements keep disagreeing: the track itself may be wrong. Stop
            # publishing and start over from the new evidence.
            self._restart(t_s, east_m, north_m, sigma_m)
            return GateVerdict(Reason.TRACK_RESET, "measurements disagree with the track")
        # Not published until the track agrees again (estimate_at needs the confirmations back).
        self.filter.inflate_for_manoeuvre(t_s, d2)
        self.confirmations = min(self.confirmations, self.confirm - 2)
        return GateVerdict(Reason.INCONSISTENT, f"innovation d2 {d2:.1f}")
