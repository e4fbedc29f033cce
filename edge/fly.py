"""`skyfix fly`: the onboard loop on real hardware (camera + flight controller over MAVLink)."""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Optional

from skyfix.contracts import Reason
from skyfix.edge.frame_loop import SourceFrame, run_frame_loop
from skyfix.errors import SkyfixError

log = logging.getLogger("skyfix.fly")


def startup(cfg):
    """Open and cross-check everything before flying; refuse with a message that says what was
    expected, what was found and how to fix it. Returns (pack, embedder, camera)."""
    from skyfix.edge.camera import PinholeCamera
    from skyfix.edge.models import model_for_pack, open_towers
    from skyfix.errors import ModelMismatch
    from skyfix.pack.tilepack import TilePack
    if not cfg.nav.pack:
        raise SkyfixError("nav.pack is not set: give the TilePack built for this region")
    pack = TilePack.open(cfg.nav.pack)
    model = model_for_pack(pack, cfg.nav.model or None)  # unset: the towers that built the pack
    embedder = open_towers(model, "drone")
    if embedder.model_id != pack.model_id:
        raise ModelMismatch(f"model {model} is {embedder.model_id} but pack {cfg.nav.pack} was "
                            f"built by {pack.model_id}: rebuild the pack with this model, or fly the model "
                            "that built it")
    # Said at every start: the limit is measured and it is the dangerous kind (confident fixes).
    terrain = pack.terrain if cfg.nav.use_terrain else None
    if terrain is not None:
        log.info("terrain from %s: heights above the ground under the camera and resection use it", terrain.source)
    else:
        log.warning("no terrain in the pack: flat ground at the take-off height assumed, and slopes up to "
                    "nav.ground_slope_deg (%.1f deg) allowed for in the accuracy; over steeper ground fixes can be "
                    "tens of metres off while claiming a few. Add a DEM: skyfix tiles terrain PACK --dem DEM "
                    "(docs/simulator.md, \"Relief\")", cfg.nav.ground_slope_deg)
    return pack, embedder, PinholeCamera.from_config(cfg.camera)


# A run whose every frame ended as one of these used no frame at all (wrong camera size, a
# source that is not a camera): an error, not a flight.
UNUSABLE = (Reason.BAD_FRAME.value, Reason.ERROR.value)


def no_frame_used(summary: dict) -> bool:
    """Whether a fly summary's frames were all unusable (and there was at least one)."""
    reasons = {k: v for k, v in summary["reasons"].items() if v}
    return bool(reasons) and all(k in UNUSABLE for k in reasons)


def source_frames(source, stop: Optional[threading.Event] = None):
    """A frame source's frames (edge/sources.py: camera, video, folder) for the frame loop, until
    it ends or `stop` is set."""
    while stop is None or not stop.is_set():
        sf = source.read()
        if sf is None:
            return
        yield SourceFrame(sf.image_rgb, sf.t_capture_mono_s, sf.source_id, sf.telemetry)


def run_fly(cfg, link_wait_s: float = 10.0, max_frames: int = 0, offline: bool = False) -> dict:
    """Fly until the source ends or SIGINT/SIGTERM; returns the reasons and timing summary.

    offline: replay an image folder without an autopilot (nothing is sent; the telemetry must
    come from the folder's CSV); every frame's result is written to fixes.csv beside the
    gallery."""
    if offline:
        return _replay_offline(cfg, max_frames)
    from skyfix.edge.navigator import Navigator
    from skyfix.edge.sources import open_source
    from skyfix.firmware_bridge.link import MavlinkBridge
    from skyfix.firmware_bridge.publisher import FixPublisher
    pack, embedder, cam = startup(cfg)
    nav = Navigator(pack, embedder, cam, cfg.nav)
    # The camera first: a missing camera is known before waiting for the autopilot.
    source = open_source(cfg.nav.source, cfg.nav.telemetry_csv or None, cfg.nav.replay_rate_hz)
    bridge = MavlinkBridge.from_config(cfg.bridge).start()
    publisher = guard = None
    stop = threading.Event()
    try:
        if not bridge.wait_for_heartbeat(link_wait_s):
            raise SkyfixError(f"no HEARTBEAT on '{cfg.bridge.connection}' within {link_wait_s:.0f} s: "
                              "check the cable/port, baud rate and the autopilot's SERIALn_PROTOCOL=2")
        publisher = FixPublisher.from_config(bridge, nav.estimate_at, cfg.bridge).start()
        guard = start_gnss_guard(cfg, bridge, nav, pack.frame)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        run_frame_loop(nav, source_frames(source, stop),
                       lambda t_s: bridge.telemetry.at(t_s, cfg.nav.telemetry_max_age_s), max_frames=max_frames)
    finally:
        if guard is not None:
            guard.close()
        if publisher is not None:
            publisher.close()
        if source is not None:
            source.close()
        bridge.close()
        log.info("link: %s", bridge.counters())
    Path(cfg.nav.gallery_out).parent.mkdir(parents=True, exist_ok=True)
    nav.gallery.save(cfg.nav.gallery_out)
    return {"frames": sum(nav.reasons.values()), "reasons": nav.reason_counts(), "integrity": nav.integrity_counts(), "accuracy_terms": nav.accuracy_terms(),
            "latency_ms": nav.timing_summary(), "published": publisher.sent if publisher else 0,
            "link": bridge.counters(), "too_slow": nav.too_slow, "gnss": guard.summary() if guard else None}


def start_gnss_guard(cfg, bridge, nav, frame):
    """With `gnss.watch`: the GNSS watch and take-over beside the autopilot's GNSS
    (edge/gnss_guard.py), started; else None. ArduPilot needs skyfix as ExternalNav
    (`bridge.protocol: ardupilot-extnav`): as its GPS (`ardupilot`) there would be no GNSS to watch."""
    if not cfg.gnss.watch:
        return None
    from skyfix.edge.gnss_guard import GnssGuard
    if cfg.bridge.protocol == "ardupilot":
        raise SkyfixError("gnss.watch with ArduPilot needs bridge.protocol: ardupilot-extnav (skyfix as "
                          "ExternalNav in EKF source set 2, the GNSS in set 1; README, 'Beside a GNSS')")
    autopilot = "px4" if cfg.bridge.protocol == "px4" else "ardupilot"
    log.info("watching the autopilot's GNSS (%s); take-over %s", cfg.gnss.receiver,
             "on" if cfg.gnss.take_over else "off")
    return GnssGuard(bridge, nav.estimate_at, frame, cfg.gnss, autopilot, cfg.nav.max_accuracy_m,
                     hint=nav.retrieval.hint_position).start()


def _replay_offline(cfg, max_frames: int = 0) -> dict:
    """An image folder through the navigator with no link: one row per frame (capture time,
    the fix and its accuracy, or the reason there is none) in fixes.csv beside the gallery."""
    import csv

    from skyfix.edge.navigator import Navigator
    from skyfix.edge.sources import FolderSource, open_source
    pack, embedder, cam = startup(cfg)
    nav = Navigator(pack, embedder, cam, cfg.nav)
    source = open_source(cfg.nav.source, cfg.nav.telemetry_csv or None, cfg.nav.replay_rate_hz)
    if not isinstance(source, FolderSource):
        source.close()
        raise SkyfixError(f"offline replay needs an image folder as nav.source, got '{cfg.nav.source}'")
    out = Path(cfg.nav.gallery_out).parent
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "fixes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "t_capture_s", "lat_deg", "lon_deg", "horiz_accuracy_m", "reason", "detail"])

        def row(sf, _tel, res) -> None:
            fix = res.fix
            w.writerow([sf.source_id, f"{sf.t_capture_s:.3f}", *(("", "", "") if fix is None else
                        (f"{fix.lat_deg:.8f}", f"{fix.lon_deg:.8f}", f"{fix.horiz_accuracy_m:.2f}")),
                        res.kind.value, res.detail])

        run_frame_loop(nav, source_frames(source), on_result=row, max_frames=max_frames)
    source.close()
    nav.gallery.save(cfg.nav.gallery_out)
    return {"frames": sum(nav.reasons.values()), "reasons": nav.reason_counts(), "integrity": nav.integrity_counts(),
            "latency_ms": nav.timing_summary(), "published": 0, "fixes_csv": str(out / "fixes.csv"), "too_slow": nav.too_slow}
