"""The few types every part of skyfix shares. Units and frames are in the field names."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class GeoTile:
    """One satellite tile of a TilePack: a north-up square of the map, in the pack's local frame."""

    tile_id: int
    lat_deg: float
    lon_deg: float
    east_m: float
    north_m: float
    size_m: float

    def contains_en(self, east_m, north_m):
        """True where local point(s) (east_m, north_m) lie inside the tile (edges included)."""
        half = self.size_m / 2
        return (np.abs(np.asarray(east_m) - self.east_m) <= half) & (
            np.abs(np.asarray(north_m) - self.north_m) <= half)


@dataclass(frozen=True)
class Telemetry:
    """Latest vehicle state used to crop a frame. Angles in radians, NED convention, yaw from north."""

    t_boot_us: int
    roll_rad: Optional[float] = None
    pitch_rad: Optional[float] = None
    yaw_rad: Optional[float] = None
    alt_agl_m: Optional[float] = None
    alt_msl_m: Optional[float] = None
    # True when alt_agl_m was measured to the ground (a rangefinder); False: the height over the
    # take-off point (barometric), which over relief is not the height over the ground below.
    agl_rangefinder: bool = False


@dataclass(frozen=True)
class Frame:
    """A camera frame: uint8 RGB H x W x 3, with its capture time (monotonic or FC boot time)."""

    image_rgb: np.ndarray
    t_capture_us: int
    telemetry: Optional[Telemetry] = None
    source_id: str = ""


@dataclass(frozen=True)
class Fix:
    """A position fix to publish. `horiz_accuracy_m` is a 1-sigma radius the system stands behind."""

    t_capture_us: int
    lat_deg: float
    lon_deg: float
    alt_msl_m: float
    horiz_accuracy_m: float
    vel_north_m_s: Optional[float] = None
    vel_east_m_s: Optional[float] = None
    speed_accuracy_m_s: Optional[float] = None
    yaw_rad: Optional[float] = None
    tile_id: Optional[int] = None


class Reason(str, Enum):
    """Why a frame got the answer it got. Counters, logs and tests match on the kind; the
    FixResult's `detail` carries the numbers."""

    OK = "ok"
    BAD_FRAME = "bad frame"                  # not a uint8 H x W x 3 image of the camera's size
    STALE_FRAME = "stale frame"              # captured before a frame already used (clock jump, replay)
    BLANK_FRAME = "blank frame"              # no texture (lens cap, cloud, water)
    HEIGHT_MISSING = "height missing"        # no usable height above ground
    CROP_OUTSIDE = "crop outside frame"      # the map-sized crop does not fit in the frame
    NO_MATCH = "no match"                    # refinement found nothing near the candidates
    WEAK_MATCH = "weak match"                # too few or too scattered inliers
    AMBIGUOUS = "ambiguous"                  # a second place matches almost as well
    IMPLAUSIBLE = "implausible match"        # rotation/scale contradict the telemetry
    ACQUIRING = "acquiring"                  # a candidate track, not yet confirmed
    INCONSISTENT = "inconsistent with track" # the filter's innovation gate rejected it
    TRACK_RESET = "track reset"              # repeated disagreement: the track starts over
    INACCURATE = "inaccurate"                # the filter's accuracy is above the publish cap
    ERROR = "error"                          # an exception inside the step (logged)


@dataclass(frozen=True)
class FixResult:
    """Every frame gets one: a fix, or `fix=None` with the reason (a bad frame never raises)."""

    fix: Optional[Fix]
    kind: Reason = Reason.OK
    detail: str = ""
    timings_ms: dict = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """One line for people: 'weak match: 4 inliers of 30 matches'."""
        return f"{self.kind.value}: {self.detail}" if self.detail else self.kind.value


@runtime_checkable
class Embedder(Protocol):
    """uint8 RGB batch N x H x W x 3 in, float32 N x D unit vectors out.

    Images of another size than `input_px` are resized by the embedder.
    """

    model_id: str
    dim: int
    input_px: int
    tower: str

    def embed(self, images_rgb: np.ndarray) -> np.ndarray: ...


@dataclass
class Features:
    """Keypoints of one image. xy_px: float32 N x 2 (col, row) pixel centres; desc: N x D
    (float32 unit vectors, or uint8 packed bits for binary descriptors); scores: float32 N,
    higher is stronger."""

    xy_px: np.ndarray
    desc: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.xy_px)

    def take(self, keep) -> "Features":
        return Features(self.xy_px[keep], self.desc[keep], self.scores[keep])


class Extractor(Protocol):
    """A local-feature extractor (edge/features.py): uint8 RGB image in, Features out."""

    name: str        # one of config.EXTRACTORS
    identity: str    # what must match between the pack's map features and the onboard extractor
    binary: bool     # Hamming descriptors (ORB) vs float (SIFT, XFeat)
    dim: int         # descriptor length (bytes for binary)
    rotation_invariant: bool  # False: an unknown heading needs `extract_any_rotation`
    source: str      # the model folder, recorded in packs so sim/fly find it ("" for OpenCV)

    def extract(self, image_rgb: np.ndarray, max_features: int,
                mask: Optional[np.ndarray] = None) -> Features: ...
