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
