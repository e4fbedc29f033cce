"""Visual odometry: a known shift between two rendered frames, and a real flight against GPS."""
import math

import numpy as np
import pytest

from conftest import SHARED, need_shared
from skyfix.edge.camera import PinholeCamera
from skyfix.edge.features import OpenCvExtractor
from skyfix.edge.odometry import frame_shift
from skyfix.sim.views import ViewPose, render_view

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

    from skyfix.bench import odometry_errors
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
