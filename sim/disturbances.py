"""What real flight brings, for the simulator: wind and gusts (and the tilt a multicopter needs to
hold its track in them), an autopilot attitude estimate that is wrong (bias, drift, step, lag),
and a camera that is not ideal (lens distortion, motion blur, exposure changes).

Every function of time here is deterministic (seeded), so the camera thread, the telemetry thread
and the scoring see the same flight.
"""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from skyfix.edge.camera import PinholeCamera

G_M_S2 = 9.80665
GUST_PERIODS_S = (4.0, 60.0)  # the gusts' sinusoids have periods in this range
GUST_TERMS = 12


class Wind:
    """The wind over the flight: a steady part plus smooth gusts (a sum of seeded sinusoids, so
    it can be evaluated at any time from any thread)."""

    def __init__(self, speed_m_s: float, from_deg: float, gust_m_s: float, seed: int = 0):
        to = math.radians(from_deg) + math.pi  # the air moves away from where it comes from
        self.mean_en = np.array([speed_m_s * math.sin(to), speed_m_s * math.cos(to)])
        rng = np.random.default_rng(seed + 101)
        self.omega = 2 * math.pi / rng.uniform(*GUST_PERIODS_S, size=(2, GUST_TERMS))
        self.phase = rng.uniform(0, 2 * math.pi, size=(2, GUST_TERMS))
        self.amp = gust_m_s * math.sqrt(2.0 / GUST_TERMS)  # each axis' std is gust_m_s

    def at(self, t_s: float) -> np.ndarray:
        """(east, north) m/s: where the air moves, at flight time t_s."""
        gust = self.amp * np.cos(self.omega * t_s + self.phase).sum(axis=1) if self.amp else np.zeros(2)
        return self.mean_en + gust


def tilt_for_acceleration(accel_en_m_s2, yaw_rad: float) -> tuple:
    """(roll_rad, pitch_rad) a multicopter holds to accelerate horizontally by accel_en (its
    thrust tilted that way): nose down to speed up forward, right side down to go right."""
    fwd = accel_en_m_s2[0] * math.sin(yaw_rad) + accel_en_m_s2[1] * math.cos(yaw_rad)
    right = accel_en_m_s2[0] * math.cos(yaw_rad) - accel_en_m_s2[1] * math.sin(yaw_rad)
    pitch = -math.atan2(fwd, G_M_S2)
    roll = math.atan2(right * math.cos(pitch), G_M_S2)
    return roll, pitch


def drag_acceleration(ground_vel_en, wind_en, drag_per_m: float) -> np.ndarray:
    """(east, north) m/s^2 the thrust must supply against the air: drag * |v_air| * v_air."""
    air = np.asarray(ground_vel_en, float) - np.asarray(wind_en, float)
    return drag_per_m * float(np.hypot(*air)) * air


class AttitudeError:
    """What the autopilot's attitude estimate adds to the truth: bias + drift * t + a step,
    in radians (roll, pitch, yaw). Its lag is applied by the caller (the truth it reports is old)."""

    def __init__(self, cfg):
        def rad(a):
            return np.radians([a.roll_deg, a.pitch_deg, a.yaw_deg])
        self.bias, self.drift, self.step = rad(cfg.attitude_bias), rad(cfg.attitude_drift_per_s), rad(cfg.attitude_step)
        self.step_at_s, self.lag_s = cfg.attitude_step_at_s, cfg.attitude_lag_s

    def at(self, t_s: float) -> np.ndarray:
        return self.bias + self.drift * max(t_s, 0.0) + (self.step if t_s >= self.step_at_s and self.step.any() else 0.0)


# ---- the camera ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _distortion_maps(cam: PinholeCamera):
    """Remap tables: for each pixel of the distorted image, where it lies in the pinhole one."""
    u, v = np.meshgrid(np.arange(cam.width_px, dtype=np.float32), np.arange(cam.height_px, dtype=np.float32))
    pts = np.stack([u.ravel(), v.ravel()], axis=1).reshape(-1, 1, 2)
    ideal = cv2.undistortImagePoints(pts, cam.K(), np.array(cam.dist_coeffs, np.float64),
                                     criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-4))
    ideal = ideal.reshape(cam.height_px, cam.width_px, 2).astype(np.float32)
    return ideal[..., 0], ideal[..., 1]


def distort(image_rgb: np.ndarray, cam: PinholeCamera) -> np.ndarray:
    """The frame a lens with cam.dist_coeffs records of the pinhole view `image_rgb` (H x W x 3)."""
    if not any(cam.dist_coeffs):
        return image_rgb
    return cv2.remap(image_rgb, *_distortion_maps(cam), cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def motion_blur(image_rgb: np.ndarray, length_px: float, angle_rad: float) -> np.ndarray:
    """Blur along a line of length_px at angle_rad (image x right, y down) over the exposure."""
    if length_px < 1.0:
        return image_rgb
    k = int(math.ceil(length_px)) | 1
    kernel = np.zeros((k, k), np.float32)
    c = k // 2
    dx, dy = math.cos(angle_rad) * length_px / 2, math.sin(angle_rad) * length_px / 2
    cv2.line(kernel, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1)
    return cv2.filter2D(image_rgb, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def apply_gain(image_rgb: np.ndarray, gain: float) -> np.ndarray:
    """Exposure change: every pixel times gain, clipped (over-exposure saturates)."""
    if gain == 1.0:
        return image_rgb
    return np.clip(image_rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)
