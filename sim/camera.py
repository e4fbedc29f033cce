"""The simulated camera: the frame the drone sees at its true pose, rendered from the map, as a
real sensor records it (lens distortion, motion blur, exposure and photometric change)."""
from __future__ import annotations

import math

import numpy as np

from skyfix.config import SimConfig
from skyfix.edge.camera import PinholeCamera
from skyfix.sim.disturbances import apply_gain, distort, motion_blur
from skyfix.sim.vehicle import VehicleModel
from skyfix.render.views import ViewPose, photometric, render_view, synthetic_terrain
from skyfix.pack.canvas import MapCanvas


def sensor_frame(canvas, cam: PinholeCamera, pose: ViewPose, vel_en_m_s: tuple, cfg: SimConfig,
                 rng: np.random.Generator, terrain=None) -> np.ndarray:
    """The frame (H x W x 3 uint8) a camera with cam's lens records at `pose` moving at
    vel_en_m_s: the pinhole view, distorted by the lens, blurred over cfg.disturb.exposure_ms,
    its gain jittered, then the photometric change of another date when cfg.photometric.
    terrain: the relief the map is draped on (render_view), None for flat ground."""
    img, _, _ = render_view(canvas, cam, pose, terrain)
    img = distort(img, cam)
    d = cfg.disturb
    if d.exposure_ms > 0:
        # The ground slides through the image opposite to the motion: forward flight smears along
        # the image's vertical (image x = body right, image y = body backward).
        fwd = vel_en_m_s[0] * math.sin(pose.yaw_rad) + vel_en_m_s[1] * math.cos(pose.yaw_rad)
        right = vel_en_m_s[0] * math.cos(pose.yaw_rad) - vel_en_m_s[1] * math.sin(pose.yaw_rad)
        length_px = math.hypot(fwd, right) * d.exposure_ms / 1e3 * cam.fx_px / pose.agl_m
        img = motion_blur(img, length_px, math.atan2(-fwd, right))
    if d.gain_jitter > 0:
        img = apply_gain(img, float(np.exp(d.gain_jitter * rng.standard_normal())))
    if cfg.photometric:
        img = photometric(img, rng, strength=0.7)
    return img


class SimCamera:
    """Renders the frame the drone's camera records at a sim time (true pose)."""

    def __init__(self, canvas: MapCanvas, cam: PinholeCamera, vehicle: VehicleModel, cfg: SimConfig,
                 ground=None):
        """ground: the pack's terrain (pack/terrain.Terrain), rendered under the flight when
        sim.relief_m is 0; synthetic hills (sim.relief_m > 0) take its place; neither: flat."""
        self.canvas, self.cam, self.vehicle, self.cfg = canvas, cam, vehicle, cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.terrain = None
        heights = synthetic_terrain(cfg.relief_m, cfg.relief_wavelength_m, cfg.seed) if cfg.relief_m > 0 else None
        if heights is None and ground is not None:
            heights = ground.height_m
        if heights is not None:
            home_e, home_n, _ = vehicle.traj.at(0.0)
            home_m = float(heights(home_e, home_n))  # heights from the take-off point's ground
            if not np.isfinite(home_m):
                raise ValueError("the terrain has no height at the take-off point")
            self.terrain = lambda e, n: np.nan_to_num(heights(e, n) - home_m)

    def render(self, t_s: float) -> np.ndarray:
        return sensor_frame(self.canvas, self.cam, self.vehicle.pose(t_s), self.vehicle.velocity_en(t_s),
                            self.cfg, self.rng, self.terrain)
