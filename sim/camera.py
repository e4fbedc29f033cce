"""The simulated camera: the frame the drone sees at its true pose, rendered from the map."""
from __future__ import annotations

import numpy as np

from skyfix.config import SimConfig
from skyfix.edge.camera import PinholeCamera
from skyfix.sim.vehicle import VehicleModel
from skyfix.sim.views import photometric, render_view
from skyfix.tiles.canvas import MapCanvas


class SimCamera:
    """Renders the frame the drone's camera sees at a sim time (true pose), with photometric change."""

    def __init__(self, canvas: MapCanvas, cam: PinholeCamera, vehicle: VehicleModel, cfg: SimConfig):
        self.canvas, self.cam, self.vehicle, self.cfg = canvas, cam, vehicle, cfg
        self.rng = np.random.default_rng(cfg.seed)

    def render(self, t_s: float) -> np.ndarray:
        img, _, _ = render_view(self.canvas, self.cam, self.vehicle.pose(t_s))
        if self.cfg.photometric:
            img = photometric(img, self.rng, strength=0.7)
        return img
