"""The track gate's state machine with hand-made measurements (no images)."""
import pytest

from skyfix.contracts import Reason
from skyfix.edge.gate import TrackGate


def _walk(gate, t0_s, n, east0_m=0.0, speed_m_s=10.0, dt_s=0.5, sigma_m=1.0):
    return [gate.offer(t0_s + i * dt_s, east0_m + speed_m_s * (t0_s + i * dt_s), 0.0, sigma_m)
            for i in range(n)]


def test_confirmation_then_publish():
    gate = TrackGate(confirm_measurements=3)
    v = _walk(gate, 0.0, 2)
    assert gate.estimate_at(0.5) is None  # a candidate track is not published
    v += _walk(gate, 1.0, 1)
    assert [x.kind for x in v] == [Reason.ACQUIRING, Reason.ACQUIRING, Reason.OK]
    assert v[0].state is None and v[2].state is not None
    state, age_s = gate.estimate_at(1.5)
    assert age_s == pytest.approx(0.5) and state.x[0] == pytest.approx(15.0, abs=1.5)


def test_outlier_suspends_publishing_until_the_track_agrees_again():
    gate = TrackGate(confirm_measurements=3)
    _walk(gate, 0.0, 4)
    jump = gate.offer(2.0, 500.0, 0.0, 1.0)  # 480 m off the track
    assert jump.kind is Reason.INCONSISTENT and jump.state is None
    assert gate.estimate_at(2.0) is None  # not published until the track agrees again
    back = _walk(gate, 2.5, 2)            # the old track resumes
    assert [x.kind for x in back] == [Reason.ACQUIRING, Reason.OK]
    assert gate.estimate_at(3.0)[0].x[0] == pytest.approx(30.0, abs=3.0)


def test_repeated_disagreement_resets_the_track():
    gate = TrackGate(confirm_measurements=3)
    _walk(gate, 0.0, 4)
    for t in (2.0, 2.5, 3.0):  # strong measurements far off, each far from the last too
        v = gate.offer(t, 500.0 + 200.0 * (t - 2.0) * 2, 0.0, 1.0)
        assert v.state is None
    assert v.kind is Reason.TRACK_RESET and gate.confirmations == 1
    assert gate.estimate_at(3.0) is None


def test_lost_track_starts_over_and_caps_accuracy():
    gate = TrackGate(confirm_measurements=3, lost_after_s=5.0, max_accuracy_m=15.0)
    _walk(gate, 0.0, 3)
    assert gate.prior(10.0) is None  # nothing accepted for more than lost_after_s
    assert gate.offer(10.0, 100.0, 0.0, 1.0).kind is Reason.ACQUIRING
    weak = TrackGate(confirm_measurements=1, max_accuracy_m=15.0)
    assert weak.offer(0.0, 0.0, 0.0, 30.0).kind is Reason.ACQUIRING
    assert weak.offer(0.5, 0.0, 0.0, 30.0).kind is Reason.INACCURATE
    assert weak.estimate_at(0.5) is None


def _turn_errors(model, noise_sigma, seed=0):
    """A 12 m/s flight into a steady 2.5 m/s^2 turn, position (1 m) and velocity (0.3 m/s) measured
    at 3 Hz; returns (velocity error, speed accuracy) at 10 Hz send times 0.1-0.3 s after each."""
    import numpy as np

    from skyfix.edge.filter import MotionFilter
    rng = np.random.default_rng(seed)
    omega = 2.5 / 12.0  # rad/s

    def truth(t):
        a = omega * max(t - 5.0, 0.0)  # straight for 5 s, then turning
        return np.array([12.0 * np.sin(a), 12.0 * np.cos(a)])

    f = MotionFilter(noise_sigma, model)
    f.reset(0.0, 0.0, 0.0, 1.0)
    errs, accs = [], []
    for k in range(1, 60):
        t = k / 3.0
        f.update_velocity(t, *(truth(t) + rng.normal(0, 0.3, 2)), 0.3)
        for age in (0.1, 0.2, 0.3):
            p = f.predict(t + age)
            if t > 2.0:
                errs.append(np.hypot(*(p.x[2:4] - truth(t + age))))
                accs.append(MotionFilter.speed_accuracy_m_s(p))
    return np.array(errs), np.array(accs)


def test_the_acceleration_model_follows_a_turn_with_an_honest_small_speed_accuracy():
    import numpy as np
    ca_err, ca_acc = _turn_errors("constant-acceleration", 1.0)
    assert np.mean(ca_err <= 3 * ca_acc) > 0.98 and np.mean(ca_err <= ca_acc) > 0.4  # honest in the turn
    assert ca_acc.max() < 1.0                                   # what ArduPilot's GPS check needs
    # Constant velocity claims as little only with a small process noise, and then lags the turn...
    cv_err, cv_acc = _turn_errors("constant-velocity", 1.0)
    assert np.mean(cv_err <= cv_acc) < 0.3 and np.median(cv_err) > 1.5 * np.median(ca_err)
    # ...or, honest with a larger one, claims twice as much.
    _, cv3_acc = _turn_errors("constant-velocity", 3.0)
    assert np.median(cv3_acc) > 2 * np.median(ca_acc)


def test_an_unknown_motion_model_is_refused():
    from skyfix.edge.filter import MotionFilter
    from skyfix.errors import SkyfixError
    with pytest.raises(SkyfixError, match="motion_model"):
        MotionFilter(1.0, "constant-jerk")


def test_odometry_is_taken_as_the_mean_velocity_over_its_interval():
    """Under a steady 3 m/s^2 acceleration, odometry's displacement over 1/3 s is the velocity
    of the interval's middle; taken as the velocity at its end, the filter lags by a dt / 2."""

    from skyfix.edge.filter import MotionFilter
    dt, acc = 1 / 3, 3.0
    lag = {}
    for interval in (0.0, dt):
        f = MotionFilter(1.0, "constant-acceleration")
        f.reset(0.0, 0.0, 0.0, 1.0)
        for k in range(1, 30):
            t = k * dt
            f.update(t, 0.0, 0.5 * acc * t * t, 0.5)
            f.update_velocity(t, 0.0, acc * (t - dt / 2), 0.1, interval_s=interval)
        lag[interval] = acc * t - f.state.x[3]
    assert abs(lag[dt]) < 0.1 and lag[0.0] > 0.3  # about a * dt / 2 = 0.5 m/s behind


def test_tilt_acceleration_points_where_the_thrust_pushes():
    import math

    import numpy as np

    from skyfix.edge.filter import GRAVITY_M_S2, tilt_acceleration_en
    nose_down = tilt_acceleration_en(0.0, math.radians(-10), 0.0)  # facing north
    assert nose_down == pytest.approx([0.0, GRAVITY_M_S2 * math.tan(math.radians(10))])
    right = tilt_acceleration_en(math.radians(10), 0.0, math.radians(90))  # facing east, rolled right
    assert right == pytest.approx([0.0, -GRAVITY_M_S2 * math.tan(math.radians(10))], abs=1e-9)
    assert np.allclose(tilt_acceleration_en(0.0, 0.0, 1.0), 0.0)


def _copter_flight(tilt_sigma, drag_per_s=0.55, wind_en=(2.0, -1.0), seed=0):
    """A multicopter with linear drag in a steady wind (v' = thrust - k (v - wind)), its tilt
    following the command within ~0.3 s: hovering 5 s, then 3 m/s^2 more thrust north for 13 s
    (towards its ~5.5 m/s terminal speed), braking 2 s, hovering. Measured: positions (1 m) at 1 Hz, odometry (0.3 m/s, mean over the
    interval) and attitude (0.3 deg) at 5 Hz. Returns (velocity errors, speed accuracies) at
    send times 0.05 and 0.15 s after each update, and the filter."""
    import math

    import numpy as np

    from skyfix.edge.filter import GRAVITY_M_S2, MotionFilter
    rng = np.random.default_rng(seed)
    wind, dt_sim = np.array(wind_en), 0.01
    pos, vel, thrust, truth = np.zeros(2), np.zeros(2), -drag_per_s * wind, []
    for i in range(3000):
        t = i * dt_sim
        command = -drag_per_s * wind + np.array([0.0, 3.0 if 5 <= t < 18 else (-3.0 if 18 <= t < 20 else 0.0)])
        thrust = thrust + (command - thrust) * dt_sim / 0.3
        truth.append((pos.copy(), vel.copy(), thrust.copy()))
        pos, vel = pos + vel * dt_sim, vel + (thrust - drag_per_s * (vel - wind)) * dt_sim
    f = MotionFilter(1.0, "constant-acceleration", tilt_sigma_m_s2=tilt_sigma)
    f.reset(0.0, 0.0, 0.0, 1.0)
    errs, accs = [], []
    for k in range(1, 149):
        t, i = k * 0.2, 20 * k
        p, _, thrust = truth[i]
        if k % 5 == 0:
            f.update(t, *(p + rng.normal(0, 1.0, 2)), 1.0)
        f.update_velocity(t, *((p - truth[i - 20][0]) / 0.2 + rng.normal(0, 0.3, 2)), 0.3, interval_s=0.2)
        if tilt_sigma is not None:  # the attitude giving that thrust, facing north
            pitch = -math.atan(thrust[1] / GRAVITY_M_S2)
            roll = math.atan(thrust[0] * math.cos(pitch) / GRAVITY_M_S2)
            f.update_tilt(t, roll + math.radians(rng.normal(0, 0.3)), pitch + math.radians(rng.normal(0, 0.3)), 0.0)
        for age in (0.05, 0.15):
            if t > 3.0:
                s = f.predict(t + age)
                errs.append(np.hypot(*(s.x[2:4] - truth[i + int(age * 100)][1])))
                accs.append(MotionFilter.speed_accuracy_m_s(s))
    return np.array(errs), np.array(accs), f


def test_the_attitude_as_acceleration_cuts_the_velocity_lag_and_learns_the_drag():
    import numpy as np
    plain_err, _, _ = _copter_flight(None)
    tilt_err, tilt_acc, f = _copter_flight(0.6)
    assert tilt_err.max() < 0.6 * plain_err.max()
    assert np.mean(tilt_err <= 3 * tilt_acc) > 0.98
    assert f.state.x[-1] == pytest.approx(0.55, abs=0.15)  # the drag, from a 0.4 prior
    assert f.state.x[-3:-1] == pytest.approx(-0.55 * np.array([2.0, -1.0]), abs=0.5)  # -k wind


def test_tilt_needs_the_acceleration_model():
    from skyfix.edge.filter import MotionFilter
    from skyfix.errors import SkyfixError
    with pytest.raises(SkyfixError, match="constant-acceleration"):
        MotionFilter(3.0, "constant-velocity", tilt_sigma_m_s2=0.6)
    with pytest.raises(SkyfixError, match="tilt"):
        f = MotionFilter(1.0, "constant-acceleration")
        f.reset(0.0, 0.0, 0.0, 1.0)
        f.update_tilt(0.1, 0.0, 0.0, 0.0)
