"""The Navigator: one camera frame in, one FixResult out (a fix, or the reason there is none).

`Navigator.step` runs a frame through these stages, in order (`Navigator.measure` is all but the
last; `skyfix locate` uses it alone):

    check    the frame: an image of the camera's size, taken after the previous one
    crop     rectify the frame north-up with the (trimmed) attitude and the height at its capture
             time (edge/heights.py: the height above the ground under the camera)
    tiles    the pack's main tiles, a finer level, or at close range the track's window
    search   embed with the drone tower (ONNX / TensorRT) and search the tiles: a window around
             the track, or everywhere when lost (edge/search.py)
    refine   the crop's local features against the pack's map features near the candidates,
             one RANSAC similarity fit (edge/refine.py)
    place    the vehicle from the match, tilt and resection tested against each other
             (edge/placement.py)
    odometry the velocity since the previous frame (edge/odometry.py)
    accept   a weak match only where the track expects it; the heading and tilt trims
             (edge/trims.py)
    filter   the track gate (edge/gate.py): confirm, reject, reset, publish; every published
             accuracy includes the errors fixes share (edge/accuracy.py)

A frame never raises out of `step`; a fix is only produced when the track is confirmed, the
measurement is geometrically strong and unambiguous, and the filter agrees with it.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import Counter, defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import numpy as np

from skyfix.config import NavConfig
from skyfix.contracts import Fix, FixResult, Frame, Reason
from skyfix.edge.accuracy import AccuracyBudget
from skyfix.edge.camera import CropMap, PinholeCamera, Undistorter, rectify, rectify_mapped
from skyfix.edge.filter import MotionFilter, FilterState
from skyfix.edge.gallery import FrameGallery
from skyfix.edge.heights import CropPose, GroundHeights
from skyfix.edge.search import TileSearch
from skyfix.edge.trims import AttitudeTrim, HeadingCheck, TiltTrimCheck
from skyfix.edge.gate import TrackGate
from skyfix.edge.odometry import VisualOdometry
from skyfix.edge.placement import ATTITUDE_DOUBT_S, Placement, Placer
from skyfix.edge.features import open_extractor
from skyfix.edge.refine import Match, MapMatcher
from skyfix.errors import ModelMismatch
from skyfix.pack.tilepack import TilePack

log = logging.getLogger("skyfix.nav")
STAGES = ("crop", "embed", "search", "refine", "odometry", "filter")
TIMING_WINDOW = 2000  # frames kept per stage for the latency summary (bounded on long flights)
STALE_FRAMES_TO_RESTART = 5  # consecutive frames from before the last one: their clock went back



@dataclass
class Measurement:
    """One frame's position measurement, before the track gate: the vehicle at (east_m,
    north_m) with a 1-sigma per-axis error sigma_m, its heading, and the match behind it."""

    t_s: float
    east_m: float
    north_m: float
    sigma_m: float
    yaw_rad: float
    match: Match
    gallery_slot: int
    notes: list


class _RateLimitedLog:
    """At most one log line per reason kind every period_s."""

    def __init__(self, period_s: float = 2.0):
        self.period_s, self.last = period_s, {}

    def __call__(self, kind: Reason, detail: str) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -1e9) >= self.period_s:
            self.last[kind] = now
            log.info("no fix: %s%s", kind.value, f": {detail}" if detail else "")


POSITION_MEMORY_S = 60.0   # how long the last measured position says where the terrain is looked up


@dataclass
class View:
    """A frame rectified for the search: its pose, the undistorted image, the crop of a tile's
    size (and the share of it the frame covers, its centre's offset from the nadir), and where it
    is searched: the tiles (the pack's main ones or a finer level), or at close range the track's
    window."""

    pose: CropPose
    image: np.ndarray
    crop: np.ndarray
    inside: float
    offset_en: tuple
    tiles: object
    close_range: bool = False
    window: Optional[tuple] = None


@dataclass
class Seen:
    """What the refinement found: the crop's features (described), the refinement crop and how it
    was made, the best match and the runner-up, and the frame's gallery slot."""

    trust_heading: bool
    described: object
    wide: np.ndarray
    wide_map: CropMap
    best: Optional[Match]
    runner_up: Optional[Match]
    gallery_slot: Optional[int] = None


def open_matcher(pack: TilePack, cfg: NavConfig, name: Optional[str] = None) -> MapMatcher:
    """The refinement matcher for `name` (default cfg.keypoints) over the pack's stored map
    features. Raises PackError at start, with the command that adds them, when the pack lacks
    those features or they were computed by another extractor (another XFeat model, OpenCV)."""
    name = name or cfg.keypoints
    recorded = ((pack.manifest.get("features") or {}).get(name) or {}).get("source")
    extractor = open_extractor(name, cfg.features_model or recorded or None)
    return MapMatcher(pack.map_features(extractor.name, extractor.identity), extractor, pack.map_gsd_m,
                      cfg.crop_features)


@contextmanager
def _timed(timings: dict, stage: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = (time.perf_counter() - t0) * 1e3


class FrameCheck:
    """The check stage: is the frame usable (an image of the camera's size with texture, taken
    after the last one used), and can this computer keep up (said once when it cannot)."""

    def __init__(self, camera: PinholeCamera, cfg: NavConfig):
        self.camera, self.cfg = camera, cfg
        self.last_capture_s: Optional[float] = None
        self.stale_run = 0
        self.too_slow = False  # set once when frames take too long for a track to be confirmed

    def speed(self, frame_s: float, totals_ms) -> None:
        """Say once, clearly, when this machine cannot confirm a track: confirming needs
        confirm_measurements frames within lost_after_s. totals_ms: recent frames' times, ms."""
        budget_s = self.cfg.lost_after_s / self.cfg.confirm_measurements
        if frame_s > budget_s and not self.too_slow and len(totals_ms) >= 3 \
                and float(np.median(totals_ms)) / 1e3 > budget_s:
            self.too_slow = True
            log.error("this computer takes %.1f s per frame; confirming a track needs %d frames within "
                      "%.1f s (nav.lost_after_s), i.e. at most %.1f s each: no fix can be published. Use a "
                      "faster computer or the GPU build, or fewer candidates (nav.top_k, "
                      "nav.global_max_candidates)", frame_s, self.cfg.confirm_measurements,
                      self.cfg.lost_after_s, budget_s)

    def frame(self, frame: Frame) -> tuple:
        """((Reason, detail) or None, whether the track must restart: the frames' clock went back)."""
        t_s = getattr(frame, "t_capture_us", 0) / 1e6
        if self.last_capture_s is not None and t_s < self.last_capture_s:
            # A frame from before one already used (a clock jump, a replay glitch) must not move
            # the filter back in time: refused, and the track is left as it was. If the frames
            # keep coming from the earlier time, their clock really went back: start over.
            self.stale_run += 1
            if self.stale_run < STALE_FRAMES_TO_RESTART:
                late_s = self.last_capture_s - t_s
                return (Reason.STALE_FRAME, f"captured {late_s:.2f} s before the previous frame"), False
            log.warning("frame clock went back %.1f s for %d frames: track restarted",
                        self.last_capture_s - t_s, self.stale_run)
            self.stale_run = 0
            return self._image(frame), True
        self.stale_run = 0
        return self._image(frame), False

    def _image(self, frame: Frame) -> Optional[tuple]:
        """(Reason, detail) when the frame's image cannot be used, else None."""
        img = getattr(frame, "image_rgb", None)
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            return Reason.BAD_FRAME, (f"expected uint8 H x W x 3, got {getattr(img, 'dtype', type(img))} "
                                      f"{getattr(img, 'shape', '')}")
        if img.shape[:2] != (self.camera.height_px, self.camera.width_px):
            return Reason.BAD_FRAME, (f"size {img.shape[1]} x {img.shape[0]}, camera model says "
                                      f"{self.camera.width_px} x {self.camera.height_px}: set camera.width_px, "
                                      "height_px and the intrinsics for the frames' size")
        if float(img[::8, ::8].std()) < 2.0:
            return Reason.BLANK_FRAME, "no texture"
        return None


class Navigator:
    def __init__(self, pack: TilePack, embedder, camera: PinholeCamera, cfg: NavConfig,
                 matcher: Optional[MapMatcher] = None):
        if embedder.model_id != pack.model_id:
            raise ModelMismatch(f"drone model {embedder.model_id} does not match pack {pack.path} "
                                f"(model {pack.model_id}); use the model that built the pack")
        self.pack, self.embedder, self.camera, self.cfg = pack, embedder, camera, cfg
        self.undistort = Undistorter(camera)
        self.gsd_m = pack.map_gsd_m
        self.matcher = matcher or open_matcher(pack, cfg)
        # Without a trustworthy heading, a rotation-invariant matcher (SIFT, when the pack has
        # its features): describing XFeat at 8 turns multiplies the chance matches and the time.
        self.rotation_matcher = self.matcher
        if matcher is None and not self.matcher.extractor.rotation_invariant and "sift" in (pack.manifest.get("features") or {}):
            self.rotation_matcher = open_matcher(pack, cfg, "sift")
        self.gate = self._new_gate()
        self.attitude_trim = AttitudeTrim(cfg.attitude_trim_gain)
        self.heading = HeadingCheck(cfg.max_rotation_deg, misses_to_search=cfg.heading_search_after or 10 ** 9,
                                    trim_gain=cfg.heading_trim_gain)
        self.integrity: Counter = Counter()   # image-against-telemetry events (integrity_counts)
        self.gallery = FrameGallery(cfg.gallery_size, embedder.dim, embedder.model_id)
        # Terrain (tiles build --dem): ground heights under the camera and for resection.
        self.terrain = pack.terrain if cfg.use_terrain else None
        self.heights = GroundHeights(cfg, self.terrain)
        self.last_position: Optional[tuple] = None  # (t_s, east_m, north_m) of the last measurement
        self.last_tile_id: Optional[int] = None
        # False: the map is not matched (the SIL's stretches of unmatchable ground); odometry runs.
        self.map_matching = True
        self.reasons: Counter = Counter()      # Reason -> frames
        self.timings_ms: dict = defaultdict(lambda: deque(maxlen=TIMING_WINDOW))
        self._log_reason = _RateLimitedLog()
        self.crop_px = int(round(pack.tile_size_m / self.gsd_m))
        self.frames = FrameCheck(camera, cfg)
        self.heading_overrides = 0  # photos (locate) placed with the image's heading, not the recorded one
        self.retrieval = TileSearch(pack, embedder, camera, cfg)
        # Refinement sees more ground than the embedding: matches grow with the area, and the
        # frame's footprint at flying height is larger than a tile (masked where it is not).
        self.refine_size_m = pack.tile_size_m * cfg.refine_crop_scale
        self.refine_px = int(round(self.refine_size_m / self.gsd_m))
        # The errors consecutive fixes share (edge/accuracy.py), added to every published accuracy.
        self.accuracy = AccuracyBudget(cfg, pack.map_accuracy_m, self.terrain, self.refine_size_m, ATTITUDE_DOUBT_S)
        self.odometry = VisualOdometry(cfg, camera, self.matcher.extractor, self.heights, self.accuracy,
                                       self.refine_size_m)
        self.tilt_check = TiltTrimCheck(self.attitude_trim, self.matcher, camera, self.gsd_m, self.refine_size_m,
                                        self.refine_px, self.heights, self.integrity)
        self.placer = Placer(cfg, camera, self.gsd_m, self.terrain, self.heights, self.accuracy, self.refine_size_m,
                             self.integrity)
        log.info("%s", self.describe_accuracy())  # said once at start: what the accuracy allows for

    @property
    def too_slow(self) -> bool:
        """Whether this computer was found too slow to confirm a track (said once in the log)."""
        return self.frames.too_slow

    def _new_gate(self) -> TrackGate:
        c = self.cfg
        return TrackGate(c.confirm_measurements, c.lost_after_s, c.max_accuracy_m, c.accel_sigma_m_s2,
                         odometry_scale_sigma=c.odometry_scale_sigma, motion_model=c.motion_model,
                         jerk_sigma_m_s3=c.jerk_sigma_m_s3,
                         tilt_sigma_m_s2=c.tilt_accel_sigma_m_s2 if c.tilt_acceleration else None)

    # ---- public -------------------------------------------------------------------------------
    def step(self, frame: Frame) -> FixResult:
        """Process one frame. Never raises: failures become FixResult(None, kind, detail)."""
        timings: dict = {}
        try:
            fix, kind, detail = self._step(frame, timings)
        except Exception as exc:  # the loop must survive any single bad frame
            log.exception("frame %s failed", getattr(frame, "source_id", "?"))
            fix, kind, detail = None, Reason.ERROR, f"{type(exc).__name__}: {exc}"
        for stage, ms in timings.items():
            self.timings_ms[stage].append(ms)
        if "refine" in timings:  # a frame that went through every stage
            total_ms = sum(timings.values())
            self.timings_ms["frame_total"].append(total_ms)
            self.frames.speed(total_ms / 1e3, self.timings_ms["frame_total"])
        self.reasons[kind] += 1
        if fix is None:
            self._log_reason(kind, detail)
        return FixResult(fix, kind, detail, timings)

    def estimate_at(self, now_s: float) -> Optional[tuple]:
        """(Fix propagated to now_s, age of the newest accepted measurement in s), or None when
        the track is not confirmed or not accurate enough. Used by the publisher at its rate."""
        est = self.gate.estimate_at(now_s)
        if est is None:
            return None
        state, age_s = est
        fix = self._fix_from_state(state, int(now_s * 1e6), None)
        manoeuvre_m = 0.5 * self.cfg.max_accel_m_s2 * max(age_s, 0.0) ** 2
        if manoeuvre_m > 0:
            fix = dataclasses.replace(fix, horiz_accuracy_m=fix.horiz_accuracy_m + manoeuvre_m)
        if fix.horiz_accuracy_m > self.cfg.max_accuracy_m:  # the shared biases included
            return None
        return fix, age_s

    def accuracy_terms(self) -> dict:
        """What every published accuracy includes beside the fit and the filter (AccuracyBudget.terms)."""
        return self.accuracy.terms()

    def describe_accuracy(self) -> str:
        """One line saying what the published accuracy allows for (said at start and in summaries)."""
        return self.accuracy.describe()

    def reason_counts(self) -> dict:
        """{reason kind: frames} with plain-string keys (for JSON)."""
        return {k.value: v for k, v in self.reasons.items()}

    def timing_summary(self) -> dict:
        """{stage: {'p50', 'p95', 'n'}} in milliseconds over the last TIMING_WINDOW frames."""
        return {k: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "n": len(v)}
                for k, v in self.timings_ms.items() if v}

    # ---- the step: a short list of timed stages -----------------------------------------------
    def _step(self, frame: Frame, timings: dict):
        m = self.measure(frame, timings)
        t_s = frame.t_capture_us / 1e6
        if not isinstance(m, Measurement):
            return None, m[0], self.retrieval.with_coarse(m[1], t_s)
        with _timed(timings, "filter"):
            verdict = self.gate.offer(m.t_s, m.east_m, m.north_m, m.sigma_m)
        notes = "; ".join(m.notes)
        if verdict.state is None:
            return None, verdict.kind, self.retrieval.with_coarse("; ".join(x for x in (verdict.detail, notes) if x), t_s)
        fix = self._fix_from_state(verdict.state, frame.t_capture_us, m.yaw_rad)
        if m.gallery_slot is not None:
            self.gallery.attach_fix(m.gallery_slot, fix.lat_deg, fix.lon_deg)
        return fix, Reason.OK, notes

    def measure(self, frame: Frame, timings: dict):
        """One frame to a position measurement (Measurement), or (Reason, detail): every stage
        but the track gate (what `skyfix locate` uses alone, edge/locate.py), in order: check, crop, choose the tiles, embed and search, refine,
        place, accept."""
        bad, restart = self.frames.frame(frame)
        if restart:
            self.gate = self._new_gate()
        if bad:
            return bad
        t_s = frame.t_capture_us / 1e6
        self.frames.last_capture_s = t_s
        with _timed(timings, "crop"):
            view = self._crop(frame, t_s)
        if not isinstance(view, View):
            return view
        refused = self.retrieval.choose_tiles(view, lambda: self._prior_window(t_s))
        if refused:
            return refused
        seen = self._search_and_refine(view, frame, t_s, timings)
        rejected = self.placer.reject(seen.best, seen.runner_up, view.pose)
        placed = None if rejected else self.placer.place(seen.best, view.pose, view.offset_en, t_s, seen.wide_map)
        # The telemetry's attitude is used below only where the image did not contradict it.
        attitude_trusted = not isinstance(placed, Placement) or placed.attitude_agrees
        with _timed(timings, "odometry"):
            self._odometry_stage(view, seen, placed, t_s, attitude_trusted)
        if rejected:
            return rejected[0], "; ".join([rejected[1]] + view.pose.notes)
        if not isinstance(placed, Placement):
            return placed[0], "; ".join([placed[1]] + view.pose.notes)
        return self._accept(view, seen, placed, t_s, attitude_trusted)

    def _crop(self, frame: Frame, t_s: float):
        """The frame rectified north-up with the trimmed attitude and the height (a View), or
        (Reason, detail) without a height."""
        pose = self.heights.crop_pose(frame.telemetry, t_s, lambda: self._where(t_s))
        if pose.heading_known and self.heading.offset_rad:
            pose.yaw_rad += self.heading.offset_rad
            if abs(math.degrees(self.heading.offset_rad)) >= 0.5:  # not every trim of a tenth
                pose.notes.append(f"heading corrected by {math.degrees(self.heading.offset_rad):.1f} deg (image)")
        if pose.attitude_known:
            pose.roll_rad += self.attitude_trim.offset_rad[0]
            pose.pitch_rad += self.attitude_trim.offset_rad[1]
        if pose.agl_m is None:
            return Reason.HEIGHT_MISSING, "; ".join(pose.notes)
        image = self.undistort(frame.image_rgb)
        crop, inside, offset_en = rectify(image, self.camera, pose.roll_rad, pose.pitch_rad,
                                          pose.yaw_rad, pose.agl_m, self.pack.tile_size_m, self.crop_px)
        return View(pose, image, crop, inside, offset_en, self.pack)

    def _search_and_refine(self, view: "View", frame: Frame, t_s: float, timings: dict) -> "Seen":
        """Embed and search (not at close range: the track's window is the candidate), then
        refine the candidates on the wider refinement crop; what the frame taught (the gallery,
        counters, the height's error as the map sees it, the heading check) is recorded."""
        pose = view.pose
        # Heading in doubt (HeadingCheck): embed and refine as if it were unknown.
        trust_heading = pose.heading_known and not self.heading.search
        with _timed(timings, "embed"):
            vectors = None if view.close_range else self.retrieval.embed(view.crop, trust_heading)
        with _timed(timings, "search"):
            candidates = ([view.window] if view.close_range
                          else self.retrieval.candidates(vectors, t_s, self.retrieval.window(t_s, self._prior_window(t_s)),
                                                    view.tiles))
        with _timed(timings, "refine"):
            wide, _, _, wide_map = rectify_mapped(view.image, self.camera, pose.roll_rad, pose.pitch_rad, pose.yaw_rad,
                                                  pose.agl_m, self.refine_size_m, self.refine_px,
                                                  self.heights.ground_depth(pose.ground, pose.agl_m, pose.agl_on_terrain))
            matcher = self.matcher if trust_heading else self.rotation_matcher
            described = matcher.describe(wide, trust_heading)
            best, runner_up = (self.retrieval.refine(matcher, described, wide.shape, candidates)
                               if self.map_matching else (None, None))
        seen = Seen(trust_heading, described, wide, wide_map, best, runner_up)
        if view.tiles is self.pack and not view.close_range:  # the gallery holds frames of the main tiles' size
            seen.gallery_slot = self.gallery.add(vectors[0], frame.t_capture_us, frame.source_id, None)
        if view.tiles is not self.pack:
            self.integrity[f"searched the {view.tiles.tile_size_m:g} m tiles (below the main tiles' height)"] += 1
        if view.close_range:
            self.integrity["close range: tracked without retrieval"] += 1
            pose.notes.append(f"close range: tracked without retrieval ({view.inside:.0%} of a tile in view)")
        if best is not None and pose.height_known:  # how far the map says the height is off
            self.accuracy.observe_scale(t_s, best.scale)
        if pose.heading_known:
            note = self.heading.observe(best, self.cfg.min_inliers, self.gate.confirmed(t_s))
            if note:
                pose.notes.append(note)
        return seen

    def _odometry_stage(self, view: "View", seen: "Seen", placed, t_s: float, attitude_trusted: bool) -> None:
        """Frame-to-frame motion for the filter, and the attitude as the multicopter's
        acceleration (nav.tilt_acceleration), where the heading and attitude can be trusted."""
        pose = view.pose
        turn_rad = placed.turn_rad if isinstance(placed, Placement) else None
        self.odometry.offer(self.gate, seen.described, seen.wide, seen.wide_map, pose, t_s,
                            seen.trust_heading and attitude_trusted, turn_rad)
        if self.cfg.tilt_acceleration and seen.trust_heading and pose.attitude_known and attitude_trusted:
            self.gate.offer_attitude(t_s, pose.roll_rad, pose.pitch_rad, pose.yaw_rad)

    def _accept(self, view: "View", seen: "Seen", placed: Placement, t_s: float, attitude_trusted: bool):
        """The placement as a Measurement, or (Reason, detail) for a weak match the track does
        not expect; a match the track agrees with trims the heading and the tilt."""
        pose, best = view.pose, seen.best
        pose.notes.extend(placed.notes)
        east, north, sigma_m = placed.east_m, placed.north_m, placed.sigma_m
        agrees = self.gate.agrees(t_s, east, north, sigma_m)
        if best.inliers < self.cfg.min_inliers and not agrees:
            return Reason.WEAK_MATCH, (f"{best.inliers} inliers: enough only where a confirmed "
                                       "track expects the vehicle, and it does not")
        confirmed = self.gate.confirmed(t_s)
        if pose.heading_known and agrees and attitude_trusted and confirmed:
            # Only a match the track agrees with trims the heading: one in doubt must not turn it.
            self.heading.trim(best.rotation_deg)
        if pose.attitude_known and placed.resected_tilt_rad and placed.on_terrain \
                and best.inliers >= self.cfg.min_inliers and (agrees or not confirmed):
            # The refinement crop's features serve as the untrimmed side of the trim's check
            # where they were described as it describes (heading trusted: the main matcher).
            note = self.tilt_check.offer(view.image, pose, best, placed.resected_tilt_rad,
                                         seen.described if seen.trust_heading else None)
            if note:
                pose.notes.append(note)
        self.last_tile_id = self.pack.nearest_tile_id(best.east_m, best.north_m)
        self.last_position = (t_s, east, north)
        return Measurement(t_s, east, north, sigma_m, pose.yaw_rad + placed.turn_rad, best, seen.gallery_slot,
                           pose.notes)

    # ---- stages -------------------------------------------------------------------------------
    def _where(self, t_s: float) -> Optional[tuple]:
        """(east_m, north_m) the vehicle is believed at: the track's prediction, else the last
        measured position within POSITION_MEMORY_S, else None."""
        prior = self.gate.prior(t_s)
        if prior is not None:
            return prior[0], prior[1]
        if self.last_position and 0 <= t_s - self.last_position[0] <= POSITION_MEMORY_S:
            return self.last_position[1], self.last_position[2]
        return None

    def datum_offset_m(self) -> Optional[float]:
        """The take-off point's height above the terrain's datum (m), or None (GroundHeights)."""
        return self.heights.datum_offset_m()

    def _prior_window(self, t_s: float) -> Optional[tuple]:
        """(east_m, north_m, radius_m) around the track's prediction, None without a track: the
        radius is 3 sigma of the prediction plus 20 m, within nav.window_min_m..window_max_m."""
        prior = self.gate.prior(t_s)
        if prior is None:
            return None
        e, n, acc = prior
        return e, n, float(np.clip(3 * acc + 20, self.cfg.window_min_m, self.cfg.window_max_m))

    def integrity_counts(self) -> dict:
        """{event: frames} of the integrity checks (image against telemetry), for the JSON; the
        heading corrections the image voted for and the recorded headings `locate` overruled."""
        events = {"telemetry heading corrected by the image": self.heading.corrections,
                  "recorded heading overruled by the image (locate)": self.heading_overrides}
        return {**self.integrity, **{k: v for k, v in events.items() if v}}

    def accuracy_with_map_bias_m(self, drms_m: float, speed_m_s: float = 0.0) -> float:
        """A published horizontal accuracy (DRMS, m): `drms_m` with the errors consecutive map
        fixes share added (AccuracyBudget.published_m)."""
        return self.accuracy.published_m(drms_m, speed_m_s)

    def _fix_from_state(self, state: FilterState, t_capture_us: int, yaw_rad: Optional[float]) -> Fix:
        lat, lon, _ = self.pack.frame.to_lla(state.x[0], state.x[1])
        return Fix(t_capture_us=int(t_capture_us), lat_deg=float(lat), lon_deg=float(lon),
                   alt_msl_m=float(self.heights.last_alt_msl_m),
                   horiz_accuracy_m=self.accuracy_with_map_bias_m(MotionFilter.horiz_accuracy_m(state),
                                                                  float(np.hypot(state.x[2], state.x[3]))),
                   vel_north_m_s=float(state.x[3]), vel_east_m_s=float(state.x[2]),
                   speed_accuracy_m_s=MotionFilter.speed_accuracy_m_s(state),
                   yaw_rad=None if yaw_rad is None else float(yaw_rad % (2 * math.pi)),
                   tile_id=self.last_tile_id)
