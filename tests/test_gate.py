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
