"""The simulator's disturbances of real flight (sim/disturbances.py), each checked against what it
must do, and one flight through all of them together with skyfix in the loop."""
import math

import numpy as np
import pytest

from skyfix.config import DisturbConfig, SimConfig, load_config
from skyfix.edge.camera import PinholeCamera, Undistorter
from skyfix.sim.disturbances import Wind, motion_blur
from skyfix.sim.route import Trajectory
from skyfix.sim.vehicle import VehicleModel

NORTH = Trajectory(np.array([[0.0, 0.0], [0.0, 2000.0]]), 12.0)  # 12 m/s due north


def _vehicle(**disturb) -> VehicleModel:
    return VehicleModel(NORTH, SimConfig(tilt_deg=0.0, attitude_noise_deg=0.0, alt_noise_m=0.0,
                                         disturb=load_config(overrides={"sim": {"disturb": disturb}}).sim.disturb))


def test_a_multicopter_leans_into_the_wind_to_hold_its_track():
    """Flying north at 12 m/s: in calm air it pitches nose down against the drag and does not
    roll; a wind from the west (blowing east) makes it roll left, into the wind, and a tail wind
    lets it pitch less."""
    calm = _vehicle(tilt_from_drag=True).pose(10.0)
    assert calm.pitch_rad < math.radians(-10) and abs(calm.roll_rad) < 1e-6
    cross = _vehicle(wind_m_s=8.0, wind_from_deg=270.0).pose(10.0)
    assert cross.roll_rad < math.radians(-4) and cross.pitch_rad < 0
    tail = _vehicle(wind_m_s=8.0, wind_from_deg=180.0).pose(10.0)
    assert calm.pitch_rad < tail.pitch_rad < 0 and abs(tail.roll_rad) < 1e-6
    assert (cross.east_m, cross.north_m) == (calm.east_m, calm.north_m)  # the track is held


def test_gusts_have_the_configured_strength_and_are_the_same_from_every_thread():
    wind = Wind(5.0, 90.0, 2.0, seed=3)
    samples = np.array([wind.at(t) for t in np.arange(0, 2000, 0.5)])
    assert np.mean(samples, axis=0) == pytest.approx([-5.0, 0.0], abs=0.4)  # from the east: blows west
    assert np.std(samples, axis=0) == pytest.approx([2.0, 2.0], rel=0.3)
    assert np.array_equal(Wind(5.0, 90.0, 2.0, seed=3).at(17.3), wind.at(17.3))


def test_the_autopilot_attitude_errors_bias_drift_step_and_lag():
    v = _vehicle(attitude_bias={"yaw_deg": 5.0}, attitude_drift_per_s={"roll_deg": 0.1},
                 attitude_step={"pitch_deg": -3.0}, attitude_step_at_s=20.0)
    roll, pitch, yaw, _ = v.noisy(10.0)
    truth = v.pose(10.0)
    assert math.degrees(roll - truth.roll_rad) == pytest.approx(1.0)
    assert math.degrees(pitch - truth.pitch_rad) == pytest.approx(0.0, abs=1e-9)
    assert math.degrees(yaw - truth.yaw_rad) == pytest.approx(5.0)
    assert math.degrees(v.noisy(30.0)[1] - v.pose(30.0).pitch_rad) == pytest.approx(-3.0)
    lagged = VehicleModel(Trajectory(np.array([[0.0, 0.0], [0.0, 100.0], [100.0, 100.0]]), 12.0),
                          SimConfig(attitude_noise_deg=0.0, disturb=DisturbConfig(attitude_lag_s=0.5)))
    assert lagged.noisy(8.3)[:3] == pytest.approx((lagged.pose(7.8).roll_rad, lagged.pose(7.8).pitch_rad,
                                                   lagged.pose(7.8).yaw_rad % (2 * math.pi)))


def test_frames_are_stamped_with_the_configured_offset_and_jitter():
    from skyfix.sim.run import capture_stamp_error
    err = capture_stamp_error(SimConfig(disturb=DisturbConfig(time_offset_s=0.05, time_jitter_s=0.02)))
    samples = np.array([err() for _ in range(4000)])
    assert samples.mean() == pytest.approx(0.05, abs=0.002) and samples.std() == pytest.approx(0.02, rel=0.1)


def test_a_distorted_lens_is_undistorted_onboard(textured_canvas):
    """The simulator records through the configured lens; the navigator's Undistorter gives back
    the pinhole frame every other stage assumes (without it, a corner is tens of pixels off)."""
    from skyfix.sim.disturbances import distort
    from skyfix.render.views import ViewPose, render_view
    cam = PinholeCamera(320, 240, 230.0, 230.0, 159.5, 119.5, (-0.25, 0.08, 0.0, 0.0))
    ideal = render_view(textured_canvas, cam, ViewPose(0.0, 0.0, 150.0, 0.0, 0.0, 0.3))[0]
    recorded = distort(ideal, cam)
    inner = (slice(20, -20), slice(20, -20))
    before = np.abs(recorded.astype(float) - ideal)[inner].mean()
    after = np.abs(Undistorter(cam)(recorded).astype(float) - ideal)[inner].mean()
    assert after < 0.2 * before
    assert Undistorter(PinholeCamera.from_hfov(320, 240, 70.0))(recorded) is recorded  # no lens: untouched


def test_motion_blur_smears_along_the_motion():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (120, 160, 3)).astype(np.uint8)
    blurred = motion_blur(img, 9.0, math.pi / 2).astype(float)  # along the image's vertical
    along = np.abs(np.diff(blurred, axis=0)).mean()
    across = np.abs(np.diff(blurred, axis=1)).mean()
    assert along < 0.5 * across


@pytest.mark.data
@pytest.mark.slow
def test_a_flight_through_wind_a_drifting_attitude_and_a_bad_camera_stays_honest(colorado_pack, tmp_path):
    """Wind 8 m/s with gusts, the autopilot's roll drifting 0.2 deg/s (6 deg by the end) and its
    yaw 8 deg off, 0.15 s of attitude lag, 40 ms of camera time offset, a distorted lens, blur and
    exposure changes, all at once: no message beyond 3x its accuracy, and fixes most of the time."""
    from skyfix.edge.embedders import open_embedder
    from skyfix.sim.run import run_sim
    from skyfix.pack.tilepack import TilePack
    cfg = load_config(overrides={
        "sim": {"duration_s": 30.0, "route": "straight", "seed": 4,
                "disturb": {"wind_m_s": 8.0, "wind_from_deg": 300.0, "gust_m_s": 3.0,
                            "attitude_drift_per_s": {"roll_deg": 0.2}, "attitude_bias": {"yaw_deg": 8.0},
                            "attitude_lag_s": 0.15, "time_offset_s": 0.04, "time_jitter_s": 0.01,
                            "exposure_ms": 5.0, "gain_jitter": 0.2}},
        "camera": {"fx_px": 457.0, "dist_coeffs": [-0.25, 0.08, 0.0, 0.0]}})
    model = TilePack.open(colorado_pack).manifest["model_source"]
    s = run_sim(colorado_pack, open_embedder(model, "drone"), cfg, out_dir=tmp_path, progress=False)
    assert s["n_published"] > 100, s["reasons"]
    assert s["calibration"]["within_3x"] == 1.0, (s["calibration"], s["integrity"])
    assert s["confident_wrong_fixes"] == 0 and s["availability"] > 0.7


def test_sitl_wind_and_parameter_file(tmp_path):
    """The wind reaches ArduPilot SITL as its SIM_WIND_* parameters, a parameter file adds any
    other (and wins), and a line that is not 'NAME VALUE' is refused with its line number."""
    from skyfix.errors import SkyfixError
    from skyfix.sim.sitl import read_parm_file, sim_params
    parm = tmp_path / "extra.parm"
    parm.write_text("# gusty afternoon\nSIM_WIND_TURB 2.5\nSIM_WIND_T,1\n")
    cfg = SimConfig(disturb=DisturbConfig(wind_m_s=8.0, wind_from_deg=-90.0), sitl_params=read_parm_file(parm))
    assert sim_params(cfg) == {"SIM_WIND_SPD": 8.0, "SIM_WIND_DIR": 270.0, "SIM_WIND_TURB": 2.5, "SIM_WIND_T": 1.0}
    assert sim_params(SimConfig()) == {}
    parm.write_text("SIM_WIND_SPD 5\nSIM_WIND_DIR\n")
    with pytest.raises(SkyfixError, match="extra.parm:2"):
        read_parm_file(parm)


def test_a_mission_leg_is_timed_from_where_the_vehicle_is():
    """A climb in wind drifts the vehicle: its first leg is as long as the way from there (617 m
    in the report that timed out), not a fixed 200 m."""
    from skyfix.sim.sitl_flight import leg_timeout_s
    assert leg_timeout_s((0.0, -617.0), None, (0.0, 0.0), 12.0) == pytest.approx(617 / 12 * 2.5 + 30)
    assert leg_timeout_s(None, (0.0, 100.0), (0.0, 0.0), 10.0) == pytest.approx(100 / 10 * 2.5 + 30)
    # Into a headwind the vehicle crawls: the wind is taken off the speed (at least 2 m/s left).
    assert leg_timeout_s((0.0, 600.0), None, (0.0, 0.0), 12.0, wind_m_s=8.0) == pytest.approx(600 / 4 * 2.5 + 30)
