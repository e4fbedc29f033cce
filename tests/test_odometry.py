"""Visual odometry: a known shift between two rendered frames, and a real flight against GPS."""
import math

import numpy as np
import pytest

from conftest import SHARED, need_shared
from skyfix.edge.camera import PinholeCamera
from skyfix.edge.features import OpenCvExtractor
from skyfix.edge.odometry import frame_shift
from skyfix.render.views import ViewPose, render_view

CAM = PinholeCamera.from_hfov(480, 360, 70.0)


def test_a_known_shift_between_two_frames_is_recovered(textured_canvas):
    """Two nadir frames 100 m up, the second 14 m further east and 9 m further north with the
    nose to the north-east: the shift comes back in the camera's axes, and the yaw change."""
    yaw = math.radians(45)
    a = render_view(textured_canvas, CAM, ViewPose(0.0, 0.0, 100.0, 0.0, 0.0, yaw))[0]
    b = render_view(textured_canvas, CAM, ViewPose(14.0, 9.0, 100.0, 0.0, 0.0, yaw + math.radians(6)))[0]
    s = frame_shift(a, b, OpenCvExtractor("sift"), CAM, 100.0)
    assert s is not None and s.inliers >= 30
    # Camera axes of frame a: forward = the nose (45 deg), right = 135 deg.
    fwd = 14.0 * math.sin(yaw) + 9.0 * math.cos(yaw)
    right = 14.0 * math.cos(yaw) - 9.0 * math.sin(yaw)
    assert s.forward_m == pytest.approx(fwd, abs=0.3) and s.right_m == pytest.approx(right, abs=0.3)
    assert abs(s.yaw_change_deg) == pytest.approx(6.0, abs=0.5)
    assert s.distance_m == pytest.approx(math.hypot(14.0, 9.0), abs=0.3)


def test_frames_of_different_places_give_no_shift(textured_canvas):
    a = render_view(textured_canvas, CAM, ViewPose(-150.0, 0.0, 100.0, 0.0, 0.0, 0.0))[0]
    b = render_view(textured_canvas, CAM, ViewPose(150.0, 0.0, 100.0, 0.0, 0.0, 0.0))[0]
    assert frame_shift(a, b, OpenCvExtractor("sift"), CAM, 100.0) is None


@pytest.mark.data
def test_real_flight_displacement_agrees_with_gps():
    """odm_toledo, first 8 photos (7 pairs, 10-18 m apart, 122 m up): image displacement vs the
    photos' GPS within 2 m median (the GPS itself is good to a metre or two)."""
    pytest.importorskip("PIL")
    import shutil
    import tempfile
    from pathlib import Path

    from skyfix.sim.score import odometry_errors
    src = need_shared(SHARED / "odm_toledo")
    with tempfile.TemporaryDirectory() as tmp:
        for p in sorted(src.glob("*.JPG"))[:8]:
            shutil.copy(p, Path(tmp) / p.name)
        r = odometry_errors(Path(tmp), "sift")
    ok = [x for x in r if x["vo_m"] is not None]
    assert len(ok) >= 6
    err = np.array([abs(x["vo_m"] - x["gps_m"]) for x in ok])
    assert np.median(err) < 2.0, err
    assert np.median([x["gps_m"] for x in ok]) > 10  # the test really moves


def test_camera_motion_recovers_a_displacement_with_the_attitude_changing():
    """Two tilted frames over flat ground: the homography's decomposition gives the camera's
    displacement in the world, whatever the roll/pitch/yaw change between the frames."""
    from skyfix.edge.camera import BODY_FROM_CAM, image_from_ground, world_from_body
    from skyfix.edge.odometry import camera_motion
    rng = np.random.default_rng(0)
    ground = np.column_stack([rng.uniform(-40, 40, 300), rng.uniform(-40, 40, 300), np.ones(300)])
    att1, att2 = np.radians([2.0, -1.0, 30.0]), np.radians([-1.0, 2.5, 34.0])

    def pixels(att, east_m, north_m):
        x = ground @ image_from_ground(CAM, *att, east_m, north_m, 120.0).T
        return x[:, :2] / x[:, 2:]
    noise = rng.normal(0, 0.3, (300, 2))
    m = camera_motion(pixels(att1, 0.0, 0.0), pixels(att2, 3.0, 2.0) + noise, CAM, 120.0,
                      world_from_body(*att1) @ BODY_FROM_CAM)
    assert m is not None and m[2] > 250
    assert m[0] == pytest.approx(2.0, abs=0.3) and m[1] == pytest.approx(3.0, abs=0.3)  # north, east


def test_camera_motion_says_the_vertical_motion_that_leaks_into_the_horizontal():
    """A descent of 1.5 m between two frames 120 m up, 0.1 m sideways, 0.5 px of noise: the
    decomposition's horizontal error grows with the descent (why VisualOdometry widens its sigma
    by VERTICAL_LEAK per metre of it), and it reports the descent itself."""
    from skyfix.edge.camera import BODY_FROM_CAM, image_from_ground, world_from_body
    from skyfix.edge.odometry import VERTICAL_LEAK, camera_motion
    rng = np.random.default_rng(1)

    def errors(descent_m):
        out, downs = [], []
        for _ in range(30):
            ground = np.column_stack([rng.uniform(-70, 70, 200), rng.uniform(-55, 55, 200), np.ones(200)])
            att1 = np.radians([rng.normal(0, 1), rng.normal(0, 1), 30.0])
            att2 = att1 + np.radians([rng.normal(0, 0.3), rng.normal(0, 0.3), 0.2])

            def pixels(att, e, n, h):
                x = ground @ image_from_ground(CAM, *att, e, n, h).T
                return x[:, :2] / x[:, 2:]
            m = camera_motion(pixels(att1, 0, 0, 120.0), pixels(att2, 0.1, 0.05, 120.0 - descent_m)
                              + rng.normal(0, 0.5, (200, 2)), CAM, 120.0, world_from_body(*att1) @ BODY_FROM_CAM)
            out.append(np.hypot(m[0] - 0.05, m[1] - 0.1))
            downs.append(m[4])
        return np.array(out), np.array(downs)
    level, level_down = errors(0.0)
    down, down_down = errors(1.5)
    assert np.median(down) > np.median(level) + 0.05
    assert np.median(down_down) == pytest.approx(1.5, abs=0.3) and abs(np.median(level_down)) < 0.3
    # the leak allowed for covers what was measured: within 3 sigma of the combined sigma
    assert np.percentile(down, 95) < 3 * np.hypot(np.percentile(level, 68), VERTICAL_LEAK * 1.5)


def test_odometry_carries_a_confirmed_track_and_says_how_it_drifts():
    from skyfix.contracts import Reason
    from skyfix.edge.filter import MotionFilter
    from skyfix.edge.gate import TrackGate
    gate = TrackGate(confirm_measurements=3, lost_after_s=2.0, max_accuracy_m=15.0, odometry_scale_sigma=0.05)
    assert not gate.offer_velocity(0.0, 10.0, 0.0, 0.5, 3.3)  # odometry never starts a track
    for i in range(4):
        gate.offer(i * 0.5, 10.0 * i * 0.5, 0.0, 1.0)
    acc = []
    for k in range(1, 31):  # 10 s without a map fix, odometry every 1/3 s at 10 m/s east
        t = 1.5 + k / 3
        assert gate.offer_velocity(t, 10.0, 0.0, 0.5, 10.0 / 3)
        state, age_s = gate.estimate_at(t)
        acc.append(MotionFilter.horiz_accuracy_m(state))
        assert age_s == pytest.approx(0.0, abs=1e-9)
    assert gate.tracking(11.5) and state.x[0] == pytest.approx(115.0, abs=3.0)
    # The accuracy grows with the distance carried: at least the scale term (5 % of 100 m).
    assert acc[-1] > acc[0] and acc[-1] >= 0.05 * 100.0
    # A map fix where odometry put the track is taken as part of the same track.
    assert gate.offer(11.6, 116.0, 0.0, 1.0).kind is Reason.OK
    assert gate.odometry_err_m == 0.0
    # Odometry stops: after lost_after_s without anything the track is lost.
    assert not gate.tracking(11.6 + 2.5)


def test_odometry_alone_never_publishes_beyond_the_accuracy_cap():
    from skyfix.edge.gate import TrackGate
    gate = TrackGate(confirm_measurements=3, lost_after_s=2.0, max_accuracy_m=15.0, odometry_scale_sigma=0.05)
    for i in range(4):
        gate.offer(i * 0.5, 10.0 * i * 0.5, 0.0, 1.0)
    t, published = 1.5, []
    while t < 60.0:
        t += 1 / 3
        gate.offer_velocity(t, 10.0, 0.0, 0.5, 10.0 / 3)
        published.append(gate.estimate_at(t) is not None)
    # 5 % of the distance reaches 15 m after 300 m (30 s at 10 m/s): publishing stops by then
    # and the track is no longer alive, so the next map fix starts a new candidate.
    assert published[0] and not published[-1] and sum(published) < 30 * 3
    assert not gate.tracking(t)


def test_grid_locked_matches_are_refined_to_the_sub_pixel_shift(textured_canvas):
    """Keypoints on whole pixels whose matched shift is rounded (what a learned extractor's grid
    gives) are moved to the true fractional shift by refine_shifts."""
    import cv2

    from skyfix.edge.odometry import refine_shifts
    prev = cv2.cvtColor(np.ascontiguousarray(textured_canvas.image_rgb[100:300, 100:300]), cv2.COLOR_RGB2GRAY)
    shift = np.array([2.3, -1.6])
    cur = cv2.warpAffine(prev, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (200, 200),
                         flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    rng = np.random.default_rng(0)
    prev_px = rng.integers(20, 180, (60, 2)).astype(np.float64)
    locked = prev_px + np.round(shift)  # 2, -2: off by 0.3 and 0.4 px
    refined = refine_shifts(prev, cur, prev_px, locked)
    signed = refined - (prev_px + shift)
    assert np.median(np.abs(locked - (prev_px + shift))) > 0.25
    # What odometry integrates is the mean shift: its bias goes from 0.3-0.4 px to a few hundredths.
    assert np.all(np.abs(signed.mean(axis=0)) < 0.05)
    assert np.median(np.abs(signed)) < 0.1 and np.percentile(np.abs(signed), 90) < 0.3
    # A match to the wrong place keeps its position (no strong peak near it).
    wrong = refine_shifts(prev, np.zeros_like(cur), prev_px[:5], locked[:5])
    np.testing.assert_array_equal(wrong, locked[:5])
