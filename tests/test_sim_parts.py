import numpy as np
import pytest

from skyfix.config import SimConfig
from skyfix.sim.route import Trajectory, make_route, round_corners
from skyfix.sim.score import score


def test_lawnmower_route_has_the_asked_length_inside_bounds():
    wp = make_route(SimConfig(route="lawnmower", length_m=1500), (-600, -600, 600, 600), 100)
    assert np.hypot(*np.diff(wp, axis=0).T).sum() == pytest.approx(1500)
    assert np.all(np.abs(wp) <= 500 + 1e-9)


def test_a_long_lawnmower_never_reverses_in_place():
    """Past one pass, the route goes on (transit back to the first leg) instead of reversing on
    its last leg: rounded, the whole flight has no velocity flip a vehicle cannot fly."""
    wp = make_route(SimConfig(route="lawnmower", length_m=12000), (-600, -600, 600, 600), 100)
    traj = Trajectory(round_corners(wp, 12.0 ** 2 / 2.5), 12.0)
    t = np.arange(0, traj.duration_s - 0.5, 0.1)
    en = np.array([traj.at(x)[:2] for x in t])
    vel = np.diff(en, axis=0) / 0.1
    accel = np.hypot(*np.diff(vel, axis=0).T) / 0.1
    assert accel.max() < 10.0  # m/s^2: the turns' 2.5 (and polyline steps), not a 240 m/s^2 reversal


def test_rounded_corners_keep_heading_continuous():
    wp = np.array([[0.0, 0.0], [0.0, 200.0], [200.0, 200.0]])
    traj = Trajectory(round_corners(wp, 50.0), 10.0)
    yaws = np.unwrap([traj.at(t)[2] for t in np.arange(0, traj.duration_s, 0.1)])
    assert np.abs(np.diff(yaws)).max() < np.radians(5)  # no pivot at the corner
    assert yaws[0] == pytest.approx(0.0) and yaws[-1] == pytest.approx(np.pi / 2, abs=1e-6)
    e, n, _ = traj.at(traj.duration_s)
    assert (e, n) == pytest.approx((200.0, 200.0))


def test_score_availability_and_calibration():
    rec = [{"t_s": t, "error_m": 1.0, "horiz_accuracy_m": 2.0} for t in np.arange(5.0, 10.0, 0.1)]
    rec[-1]["error_m"] = 7.0
    s = score(rec, duration_s=10.0)
    assert s["availability"] == pytest.approx(0.5, abs=0.02)  # fixes only in the second half
    assert s["calibration"]["within_3x"] == pytest.approx(1 - 1 / len(rec))
    assert s["time_to_first_fix_s"] == pytest.approx(5.0)


def test_velocity_is_scored_only_where_sent():
    from skyfix.sim.score import scored_fix
    from skyfix.render.views import ViewPose
    from skyfix.geo import LocalFrame
    frame = LocalFrame(40.0, -105.0, 0.0)
    lat, lon, _ = frame.to_lla(3.0, 4.0)
    pose = ViewPose(0.0, 0.0, 120.0, 0.0, 0.0, 0.0)
    plain = scored_fix(frame, 1.0, "GPS_INPUT", lat, lon, 2.0, pose)
    assert plain["error_m"] == pytest.approx(5.0, abs=1e-3) and "vel_error_m_s" not in plain
    moving = [scored_fix(frame, t, "GPS_INPUT", lat, lon, 2.0, pose, (12.0 + dv, 0.0, 1.0, 12.0, 0.0))
              for t, dv in ((1.0, 0.5), (1.1, 0.5), (1.2, -2.0), (1.3, 4.0))]
    assert score([plain], 2.0)["velocity"] is None
    v = score(moving, 2.0)["velocity"]
    assert v["n"] == 4 and v["within_1x"] == 0.5 and v["within_3x"] == 0.75
    assert v["error_m_s"]["max"] == pytest.approx(4.0)


def test_flight_plot_colours_fixes_by_error(textured_canvas, tmp_path):
    import cv2

    from skyfix.sim.score import plot_track
    truth = np.array([[-200.0, -200.0], [200.0, 200.0]])
    fixes = [{"east_m": -100.0, "north_m": 150.0, "error_m": 1.0},
             {"east_m": 100.0, "north_m": -150.0, "error_m": 25.0}]
    path = plot_track(textured_canvas, truth, fixes, tmp_path / "t.png")
    img = cv2.imread(str(path))
    bar = img.shape[0] - textured_canvas.image_rgb.shape[0]  # the title bar above the map
    good, bad = img[bar + 149, 199], img[bar + 449, 399]     # canvas px of the two fixes
    assert good[1] > 150 and good[2] < 80                       # green
    assert bad[2] > 150 and bad[1] < 80                         # red
    assert img[:bar].mean() > 200                               # a light title bar with the summary


def test_the_soak_rss_floor_and_trend_see_a_leak_and_not_the_allocators_ups_and_downs():
    from skyfix.sim.score import rss_floors_mb, rss_trend_mb_per_h
    minutes = np.arange(5, 13, 0.25)
    wobble = [{"t_min": t, "rss_mb": 340.0 + (45.0 if 4 <= k % 12 < 8 else 0.0)} for k, t in enumerate(minutes)]
    leak = [{"t_min": t, "rss_mb": 340.0 + 0.5 * t} for t in minutes]  # 0.5 MB a minute
    assert abs(rss_trend_mb_per_h(leak) - 30.0) < 1e-6
    first, last = rss_floors_mb(leak)
    assert last - first > 2.0
    assert rss_floors_mb(wobble) == (340.0, 340.0)
    # The wobble ends on a high sample (385 MB): end minus start would say 348 MB/h of leak.
    assert abs(rss_trend_mb_per_h(wobble)) < 348.0 / 3
