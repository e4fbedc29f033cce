"""The Navigator: one camera frame in, one FixResult out (a fix, or the reason there is none).

crop (telemetry) -> embed -> search (prior window, or global when lost) -> refine (keypoints +
RANSAC homography on candidate tiles) -> filter (constant velocity, innovation gate) -> gate.
A frame never raises out of `step`; a fix is only produced when the track is confirmed, the
measurement is geometrically strong and unambiguous, and the filter agrees with it.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, defaultdict
from typing import Optional

import numpy as np

from skyfix.config import NavConfig
from skyfix.contracts import Fix, FixResult, Frame
from skyfix.edge.camera import PinholeCamera, rectify
from skyfix.edge.filter import ConstantVelocityFilter
from skyfix.edge.gallery import FrameGallery
from skyfix.edge.refine import Match, MapMatcher
from skyfix.errors import ModelMismatch
from skyfix.tiles.pack import TilePack

log = logging.getLogger("skyfix.nav")
STAGES = ("crop", "embed", "search", "refine", "filter")


def reason_key(reason: str) -> str:
    """The kind of a FixResult reason, without its details: 'weak match: 4 inliers' -> 'weak match'."""
    return reason.split(":")[0].split(" (")[0]


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


class _RateLimitedLog:
    def __init__(self, period_s: float = 2.0):
        self.period_s, self.last = period_s, {}

    def __call__(self, reason: str) -> None:
        key = reason_key(reason)
        now = time.monotonic()
        if now - self.last.get(key, -1e9) >= self.period_s:
            self.last[key] = now
            log.info("no fix: %s", reason)


class Navigator:
    def __init__(self, pack: TilePack, embedder, camera: PinholeCamera, cfg: NavConfig,
                 matcher: Optional[MapMatcher] = None):
        if embedder.model_id != pack.model_id:
            raise ModelMismatch(f"drone model {embedder.model_id} does not match pack {pack.path} "
                                f"(model {pack.model_id}); use the model that built the pack")
        self.pack, self.embedder, self.camera, self.cfg = pack, embedder, camera, cfg
        self.canvas = pack.canvas()
        self.matcher = matcher or MapMatcher(self.canvas, cfg.keypoints)
        self.filter = ConstantVelocityFilter(cfg.accel_sigma_m_s2)
        self.gallery = FrameGallery(cfg.gallery_size, embedder.dim, embedder.model_id)
        self.confirmations = 0
        self.disagreements = 0
        self.last_accept_s: Optional[float] = None
        self.last_agl: Optional[tuple] = None  # (t_s, agl_m)
        self.last_alt_msl_m = 0.0
        self.reasons: Counter = Counter()
        self.timings_ms: dict = defaultdict(list)
        self._lock = threading.Lock()
        self._log_reason = _RateLimitedLog()
        self.crop_px = int(round(pack.tile_size_m / self.canvas.gsd_m))

    # ---- public -------------------------------------------------------------------------------
    def step(self, frame: Frame) -> FixResult:
        """Process one frame. Never raises: failures become FixResult(fix=None, reason=...)."""
        timings: dict = {}
        try:
            fix, reason = self._step(frame, timings)
        except Exception as exc:  # the loop must survive any single bad frame
            log.exception("frame %s failed", frame.source_id if frame is not None else "?")
            fix, reason = None, f"error: {type(exc).__name__}: {exc}"
        for k, v in timings.items():
            self.timings_ms[k].append(v)
        if "refine" in timings:  # a frame that went through every stage
            self.timings_ms["frame_total"].append(sum(timings.values()))
        self.reasons[reason_key(reason)] += 1
        if fix is None:
            self._log_reason(reason)
        return FixResult(fix, reason, timings)

    def estimate_at(self, now_s: float) -> Optional[tuple]:
        """(Fix propagated to now_s, age of the newest accepted measurement in s), or None when
        the track is not confirmed. Used by the publisher at its own rate."""
        with self._lock:
            if self.filter.state is None or self.confirmations < self.cfg.confirm_measurements:
                return None
            state = self.filter.predict(now_s)
            age = now_s - self.last_accept_s
            fix = self._fix_from_state(state, int(now_s * 1e6), None, None)
        if fix.horiz_accuracy_m > self.cfg.max_accuracy_m:
            return None
        return fix, age

    # ---- the step -----------------------------------------------------------------------------
    def _step(self, frame: Frame, timings: dict):
        t0 = time.perf_counter()
        bad = self._check_frame(frame)
        if bad:
            return None, bad
        t_s = frame.t_capture_us / 1e6
        tel = frame.telemetry
        notes = []
        roll, pitch = (tel.roll_rad, tel.pitch_rad) if tel else (None, None)
        attitude_known = _finite(roll) and _finite(pitch)
        if not attitude_known:
            roll = pitch = 0.0
            notes.append("attitude missing: assumed level")
        yaw = tel.yaw_rad if tel else None
        heading_known = _finite(yaw)
        if not heading_known:
            yaw = 0.0
            notes.append("heading missing: rotation searched")
        agl, agl_note = self._height(tel, t_s)
        if agl is None:
            return None, agl_note
        if agl_note:
            notes.append(agl_note)
        if tel is not None and _finite(tel.alt_msl_m):
            self.last_alt_msl_m = tel.alt_msl_m
        crop, inside, offset_ne = rectify(frame.image_rgb, self.camera, roll, pitch, yaw, agl,
                                          self.pack.tile_size_m, self.crop_px)
        timings["crop"] = (time.perf_counter() - t0) * 1e3
        if inside < 0.5:
            return None, f"crop outside frame: the frame covers {inside:.0%} of it (height {agl:.0f} m?)"

        t1 = time.perf_counter()
        crops = [crop] if heading_known else [np.ascontiguousarray(np.rot90(crop, r)) for r in range(4)]
        vectors = self.embedder.embed(np.stack(crops))
        timings["embed"] = (time.perf_counter() - t1) * 1e3

        t2 = time.perf_counter()
        tracking = self._tracking(t_s)
        candidates = self._candidates(vectors, t_s, tracking)
        timings["search"] = (time.perf_counter() - t2) * 1e3

        t3 = time.perf_counter()
        best, runner_up = self._refine(crop, candidates)
        timings["refine"] = (time.perf_counter() - t3) * 1e3
        slot = self.gallery.add(vectors[0], frame.t_capture_us, frame.source_id, None)
        reason = self._reject_match(best, runner_up, heading_known, agl_note)
        if reason:
            return None, reason

        # The match locates the crop centre; the vehicle is offset from it by the tilt.
        corr = -math.radians(best.rotation_deg)  # the crop turns on the map by minus the yaw error
        on, oe = offset_ne
        c, s = math.cos(-corr), math.sin(-corr)
        east = best.east_m - (on * s + oe * c)
        north = best.north_m - (on * c - oe * s)
        sigma = self._measurement_sigma_m(best, agl, attitude_known)

        t4 = time.perf_counter()
        with self._lock:
            fix, reason = self._fuse(t_s, east, north, sigma, best, frame.t_capture_us, yaw - corr)
        timings["filter"] = (time.perf_counter() - t4) * 1e3
        if fix is not None:
            self.gallery.attach_fix(slot, fix.lat_deg, fix.lon_deg)
        if fix is not None and notes:
            reason = "ok (" + "; ".join(notes) + ")"
        return fix, reason

    # ---- pieces -------------------------------------------------------------------------------
    def _check_frame(self, frame: Frame) -> Optional[str]:
        img = getattr(frame, "image_rgb", None)
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            return f"bad frame: expected uint8 H x W x 3, got {getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}"
        if img.shape[:2] != (self.camera.height_px, self.camera.width_px):
            return (f"bad frame: size {img.shape[1]} x {img.shape[0]}, camera model says "
                    f"{self.camera.width_px} x {self.camera.height_px}")
        if float(img[::8, ::8].std()) < 2.0:
            return "blank frame: no texture"
        return None

    def _height(self, tel, t_s: float):
        agl = tel.alt_agl_m if tel else None
        if _finite(agl) and 5.0 <= agl <= 5000.0:
            self.last_agl = (t_s, agl)
            return agl, ""
        if self.last_agl and t_s - self.last_agl[0] <= 5.0:
            return self.last_agl[1], f"height missing: last value {self.last_agl[1]:.0f} m used"
        if self.cfg.fallback_agl_m > 0:
            return self.cfg.fallback_agl_m, f"height missing: assumed {self.cfg.fallback_agl_m:.0f} m"
        return None, "height missing or implausible: cannot scale the frame"

    def _tracking(self, t_s: float) -> bool:
        return (self.filter.state is not None and self.last_accept_s is not None
                and t_s - self.last_accept_s <= self.cfg.lost_after_s)

    def _candidates(self, vectors: np.ndarray, t_s: float, tracking: bool) -> list[tuple]:
        """[(east_m, north_m, match_radius_m)], most promising first."""
        half = self.pack.tile_size_m / 2
        if tracking:
            pred = self.filter.predict(t_s)
            acc = ConstantVelocityFilter.horiz_accuracy_m(pred)
            radius = float(np.clip(3 * acc + 20, self.cfg.window_min_m, self.cfg.window_max_m))
            e, n = float(pred.x[0]), float(pred.x[1])
            _, ids = self.pack.search(vectors, self.cfg.top_k, near=(e, n, radius))
            cands = [(e, n, radius)]
        else:
            scores, ids = self.pack.search(vectors, self.cfg.global_max_candidates)
            order = np.argsort(-scores.ravel(), kind="stable")
            ids = ids.ravel()[order][None]
            cands = []
        for tid in dict.fromkeys(int(i) for i in ids.ravel() if i >= 0):
            te, tn = float(self.pack.east_m[tid]), float(self.pack.north_m[tid])
            if all(math.hypot(te - ce, tn - cn) > half for ce, cn, _ in cands):
                cands.append((te, tn, half + 10.0))
        limit = self.cfg.top_k + 1 if tracking else self.cfg.global_max_candidates
        return cands[:limit]

    def _refine(self, crop: np.ndarray, candidates: list[tuple]):
        matches = [m for m in (self.matcher.match(crop, self.canvas.gsd_m, (e, n), r)
                               for e, n, r in candidates) if m is not None]
        if not matches:
            return None, None
        matches.sort(key=lambda m: -m.inliers)
        best = matches[0]
        # The strongest match elsewhere (not the same place found twice).
        far = [m for m in matches[1:] if math.hypot(m.east_m - best.east_m, m.north_m - best.north_m)
               > self.pack.tile_size_m / 4]
        return best, (far[0] if far else None)

    def _reject_match(self, best: Optional[Match], runner_up: Optional[Match], heading_known: bool,
                      agl_note: str) -> Optional[str]:
        cfg = self.cfg
        if best is None:
            return "no match: refinement found no consistent keypoints near the candidates"
        if best.inliers < cfg.min_inliers or best.inliers < cfg.min_inlier_ratio * best.matches:
            return f"weak match: {best.inliers} inliers of {best.matches} matches"
        if runner_up is not None and runner_up.inliers >= cfg.ambiguity_ratio * best.inliers:
            return (f"ambiguous: {best.inliers} inliers here, {runner_up.inliers} at another place "
                    f"{math.hypot(runner_up.east_m - best.east_m, runner_up.north_m - best.north_m):.0f} m away")
        if heading_known and abs(best.rotation_deg) > cfg.max_rotation_deg:
            return f"implausible match: rotated {best.rotation_deg:.0f} deg against the known heading"
        if not agl_note and abs(best.scale - 1) > cfg.max_scale_error:
            return f"implausible match: scale {best.scale:.2f} against the known height"
        return None

    def _measurement_sigma_m(self, m: Match, agl_m: float, attitude_known: bool = True) -> float:
        """1-sigma per axis: keypoint fit, attitude error projected to the ground, map floor.

        Without attitude the crop is taken as level: the unknown tilt moves the image centre by
        up to agl * tan(tilt) from the vehicle, so it enters as a (much larger) error."""
        fit = 2.0 * m.rms_px * self.canvas.gsd_m / math.sqrt(max(m.inliers, 1))
        tilt_deg = self.cfg.attitude_sigma_deg if attitude_known else self.cfg.unknown_tilt_deg
        attitude = agl_m * math.tan(math.radians(tilt_deg))
        return math.sqrt(fit ** 2 + attitude ** 2 + (2 * self.canvas.gsd_m) ** 2)

    def _fuse(self, t_s, east, north, sigma, match, t_capture_us, yaw_rad):
        cfg = self.cfg
        if not self._tracking(t_s):
            # Start (or restart) a candidate track; it is published only once confirmed.
            self.filter.reset(t_s, east, north, sigma)
            self.confirmations, self.disagreements, self.last_accept_s = 1, 0, t_s
            return None, f"acquiring: candidate track 1/{cfg.confirm_measurements}"
        accepted, d2 = self.filter.update(t_s, east, north, sigma)
        if not accepted:
            self.disagreements += 1
            if self.disagreements >= cfg.confirm_measurements:
                # Strong measurements keep disagreeing: the track itself may be wrong. Stop
                # publishing and start over from the new evidence.
                self.filter.reset(t_s, east, north, sigma)
                self.confirmations, self.disagreements, self.last_accept_s = 1, 0, t_s
                return None, "track reset: measurements disagree with the track"
            # Until the track agrees again it is not published (estimate_at needs confirmations).
            self.filter.inflate_for_manoeuvre(t_s, d2)
            self.confirmations = min(self.confirmations, cfg.confirm_measurements - 2)
            return None, f"inconsistent with track: innovation d2 {d2:.1f}"
        self.disagreements = 0
        self.confirmations += 1
        self.last_accept_s = t_s
        if self.confirmations < cfg.confirm_measurements:
            return None, f"acquiring: candidate track {self.confirmations}/{cfg.confirm_measurements}"
        fix = self._fix_from_state(self.filter.state, t_capture_us, yaw_rad, None)
        if fix.horiz_accuracy_m > cfg.max_accuracy_m:
            return None, f"inaccurate: filter accuracy {fix.horiz_accuracy_m:.1f} m"
        return fix, "ok"

    def _fix_from_state(self, state, t_capture_us, yaw_rad, tile_id) -> Fix:
        lat, lon, _ = self.pack.frame.to_lla(state.x[0], state.x[1])
        return Fix(t_capture_us=int(t_capture_us), lat_deg=float(lat), lon_deg=float(lon),
                   alt_msl_m=float(self.last_alt_msl_m),
                   horiz_accuracy_m=ConstantVelocityFilter.horiz_accuracy_m(state),
                   vel_north_m_s=float(state.x[3]), vel_east_m_s=float(state.x[2]),
                   speed_accuracy_m_s=ConstantVelocityFilter.speed_accuracy_m_s(state),
                   yaw_rad=None if yaw_rad is None else float(yaw_rad % (2 * math.pi)), tile_id=tile_id)

    def timing_summary(self) -> dict:
        """{stage: {'p50', 'p95', 'n'}} in milliseconds."""
        return {k: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "n": len(v)}
                for k, v in self.timings_ms.items() if v}
