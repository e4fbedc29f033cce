import numpy as np
import pytest

from skyfix.edge.camera import PinholeCamera, ground_of_pixel, image_from_ground, rectify
from skyfix.render.views import ViewPose, photometric, render_view

CAM = PinholeCamera.from_hfov(320, 240, 70.0)


def test_nadir_camera_sees_north_at_image_top():
    h = image_from_ground(CAM, 0.0, 0.0, 0.0, 0.0, 0.0, 100.0)
    u, v, w = h @ np.array([0.0, 10.0, 1.0])  # 10 m north of the camera
    assert u / w == pytest.approx(CAM.cx_px) and v / w < CAM.cy_px
    u, v, w = h @ np.array([10.0, 0.0, 1.0])  # 10 m east: image right
    assert u / w > CAM.cx_px and v / w == pytest.approx(CAM.cy_px)
    # Heading east (yaw 90 deg): north now appears on the image's left.
    h = image_from_ground(CAM, 0.0, 0.0, np.pi / 2, 0.0, 0.0, 100.0)
    u, v, w = h @ np.array([0.0, 10.0, 1.0])
    assert u / w < CAM.cx_px and v / w == pytest.approx(CAM.cy_px)


def test_tilt_moves_the_centre_ray():
    # Pitch up 10 deg (nose up) at 100 m: the optical axis hits the ground behind... forward is
    # north at yaw 0; a downward camera pitched nose-up looks forward by agl * tan(10 deg).
    h = image_from_ground(CAM, 0.0, np.radians(10), 0.0, 0.0, 0.0, 100.0)
    e, n = ground_of_pixel(h, CAM.cx_px, CAM.cy_px)
    assert n == pytest.approx(100 * np.tan(np.radians(10)), abs=1e-6) and e == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("yaw_deg", [0.0, 63.0, 211.0])
def test_rectify_inverts_render(textured_canvas, yaw_deg):
    pose = ViewPose(40.0, -30.0, 120.0, np.radians(4), np.radians(-6), np.radians(yaw_deg))
    frame, valid, (e, n) = render_view(textured_canvas, CAM, pose)
    assert valid == 1.0
    crop, inside, _ = rectify(frame, CAM, pose.roll_rad, pose.pitch_rad, pose.yaw_rad, pose.agl_m, 80.0, 96)
    ref, _ = textured_canvas.render(e, n, 80.0, 96)
    mask = crop.sum(axis=2) > 0
    err = np.abs(crop.astype(int) - ref)[mask].mean()
    shifted = np.abs(np.roll(ref, 4, axis=1).astype(int) - ref)[mask].mean()  # 3.3 m off
    assert inside > 0.9 and err < 0.35 * shifted


def test_photometric_changes_but_keeps_shape():
    img = np.full((50, 60, 3), 120, np.uint8)
    out = photometric(img, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8 and np.abs(out.astype(int) - img).mean() > 1


def test_resection_places_the_camera_despite_a_wrong_attitude(textured_canvas):
    """The pose from the image: rectified with 3-4 deg of attitude error and 4 % of height
    error, the matched points still put the camera where it is (the tilt-based offset would be
    agl * tan(error), about 7 m here)."""
    from skyfix.edge.camera import image_from_crop
    from skyfix.edge.pose import image_px_of_crop_px, resect
    from skyfix.edge.features import open_extractor
    from skyfix.edge.refine import MapMatcher
    from skyfix.tiles.features import features_in_memory
    pose = ViewPose(20.0, -15.0, 100.0, np.radians(3), np.radians(-5), np.radians(40))
    frame, _, _ = render_view(textured_canvas, CAM, pose)
    roll, pitch, yaw, agl = pose.roll_rad + np.radians(3), pose.pitch_rad - np.radians(3), pose.yaw_rad + 0.05, 104.0
    crop, _, _ = rectify(frame, CAM, roll, pitch, yaw, agl, 100.0, 200)
    sift = open_extractor("sift")
    matcher = MapMatcher(features_in_memory(textured_canvas, sift, 8000), sift, textured_canvas.gsd_m)
    m = matcher.match(crop, 0.5, (pose.east_m, pose.north_m), 60.0)
    assert m is not None and m.inliers >= 15
    h, _ = image_from_crop(CAM, roll, pitch, yaw, agl, 100.0, 200)
    cp = resect(CAM, image_px_of_crop_px(m.crop_px, h), m.ground_en_m)
    assert np.hypot(cp.east_m - pose.east_m, cp.north_m - pose.north_m) < 1.0
    assert cp.up_m == pytest.approx(100.0, abs=1.5)
    assert resect(CAM, image_px_of_crop_px(m.crop_px[:5], h), m.ground_en_m[:5]) is None  # too few


def _project(cam, pose, points_enu):
    """Pixels (N x 2) of ENU points (N x 3) seen by a camera at pose (east, north, up_m)."""
    from skyfix.edge.camera import BODY_FROM_CAM, world_from_body
    world_from_cam = world_from_body(pose.roll_rad, pose.pitch_rad, pose.yaw_rad) @ BODY_FROM_CAM
    rel = points_enu - np.array([pose.east_m, pose.north_m, pose.agl_m])
    ned = np.column_stack([rel[:, 1], rel[:, 0], -rel[:, 2]])
    cam_xyz = ned @ world_from_cam  # (world_from_cam.T @ ned.T).T
    uvw = cam_xyz @ cam.K().T
    return uvw[:, :2] / uvw[:, 2:]


def test_resection_on_terrain_points_recovers_a_known_3d_pose_and_flat_resection_slides_down_the_slope():
    """Ground points on a 12 deg slope with bumps, seen from a known pose 2,720 m above the
    datum: PnP with their heights gives the pose to centimetres; the same points taken as flat
    ground give the camera displaced along the slope by about height x sin(slope)."""
    from skyfix.edge.pose import resect
    rng = np.random.default_rng(3)
    pose = ViewPose(40.0, -25.0, 2720.0, np.radians(2), np.radians(-3), np.radians(30))
    e = pose.east_m + rng.uniform(-70, 70, 80)
    n = pose.north_m + rng.uniform(-55, 55, 80)
    up = 2600.0 + np.tan(np.radians(12)) * (e - pose.east_m) + 3 * np.sin(n / 9.0)
    px = _project(CAM, pose, np.column_stack([e, n, up]))
    inside = (px[:, 0] > 0) & (px[:, 0] < CAM.width_px) & (px[:, 1] > 0) & (px[:, 1] < CAM.height_px)
    assert inside.sum() >= 30
    px = px[inside] + rng.normal(0, 0.2, (inside.sum(), 2))
    en = np.column_stack([e, n])[inside]
    cp = resect(CAM, px, en, up[inside])
    assert np.hypot(cp.east_m - pose.east_m, cp.north_m - pose.north_m) < 0.5
    assert cp.up_m == pytest.approx(2720.0, abs=0.5)
    roll, pitch, yaw = cp.attitude_rad()
    assert np.degrees([roll, pitch]) == pytest.approx([2.0, -3.0], abs=0.3)
    flat = resect(CAM, px, en)
    height_m = 2720.0 - 2600.0
    off_m = np.hypot(flat.east_m - pose.east_m, flat.north_m - pose.north_m)
    assert off_m > 0.5 * height_m * np.sin(np.radians(12))
    # The fit's own covariance does not see it (a confident wrong position): that is why, without
    # terrain, the navigator adds the slope it allows for (nav.ground_slope_deg) to it.
    assert off_m > 3 * np.sqrt(np.linalg.eigvalsh(flat.cov_en_m2).max())


def test_a_view_over_relief_is_the_flat_view_where_the_relief_is_flat_and_bends_where_it_is_not(textured_canvas):
    """Zero relief renders the flat view; a plateau h m high renders as the flat view from h m
    lower; a slope moves the ground point under the image centre along it."""
    from skyfix.render.views import synthetic_terrain
    cam = PinholeCamera.from_hfov(320, 240, 70.0)
    pose = ViewPose(5.0, -10.0, 120.0, 0.05, -0.03, 0.7)
    flat, _, centre = render_view(textured_canvas, cam, pose)
    zero, _, centre0 = render_view(textured_canvas, cam, pose, terrain=lambda e, n: np.zeros(np.shape(e)))
    assert np.abs(flat.astype(int) - zero.astype(int)).mean() < 0.5 and np.allclose(centre, centre0, atol=0.05)
    plateau, _, on_plateau = render_view(textured_canvas, cam, pose, terrain=lambda e, n: np.full(np.shape(e), 30.0))
    lower, _, _ = render_view(textured_canvas, cam, ViewPose(5.0, -10.0, 90.0, 0.05, -0.03, 0.7))
    assert np.abs(plateau.astype(int) - lower.astype(int)).mean() < 1.0
    assert np.abs(plateau.astype(int) - flat.astype(int)).mean() > 10  # and it is not the flat view
    # The tilted centre ray meets the plateau sooner: its offset from the nadir shrinks by 90/120.
    nadir = np.array([5.0, -10.0])
    assert np.allclose(np.array(on_plateau) - nadir, (np.array(centre) - nadir) * 90.0 / 120.0, atol=0.01)
    hills = synthetic_terrain(50.0, seed=1)
    assert hills(0.0, 0.0) == 0.0 and 30.0 < np.ptp(hills(*np.meshgrid(np.arange(-600, 600, 10.0),
                                                                      np.arange(-600, 600, 10.0)))) < 60.0
