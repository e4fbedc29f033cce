"""The one frame loop: every driver (camera, video, photos, the simulator, SITL, replay) feeds its
frames and telemetry to `run_frame_loop`; the drivers differ only in where frames and telemetry
come from (and what they do with each result).

A driver gives an iterable of `SourceFrame` (paced as it needs: a live camera as it comes, the
simulator at its camera rate, a replay as fast as it goes) and, where a frame carries no
telemetry of its own, `telemetry_at(t_capture_s)`: the autopilot's telemetry interpolated at the
frame's capture time (a live link's `TelemetryStore.at`, a log's `telemetry_at`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import numpy as np

from skyfix.contracts import FixResult, Frame, Telemetry


@dataclass
class SourceFrame:
    """One frame from a driver: uint8 H x W x 3 RGB, its capture time (s, on the telemetry's
    clock), an id, its own telemetry when the source has it, and what the driver keeps with it."""

    image_rgb: np.ndarray
    t_capture_s: float
    source_id: str
    telemetry: Optional[Telemetry] = None
    meta: Any = None


def run_frame_loop(nav, frames: Iterable[SourceFrame],
                   telemetry_at: Optional[Callable[[float], Optional[Telemetry]]] = None,
                   on_result: Optional[Callable[[SourceFrame, Optional[Telemetry], Optional[FixResult]], None]] = None,
                   max_frames: int = 0, skip_without_telemetry: bool = False) -> int:
    """Step `nav` (a Navigator) through `frames`; returns the frames stepped. on_result(frame,
    telemetry, result) after each; with skip_without_telemetry a frame nobody has telemetry for
    is not stepped (a replay's frame outside the log) and on_result gets result None.
    max_frames: stop after that many (0: until the frames end)."""
    n = 0
    for sf in frames:
        tel = sf.telemetry or (telemetry_at(sf.t_capture_s) if telemetry_at is not None else None)
        if tel is None and skip_without_telemetry:
            if on_result is not None:
                on_result(sf, None, None)
            continue
        res = nav.step(Frame(sf.image_rgb, int(sf.t_capture_s * 1e6), tel, sf.source_id))
        if on_result is not None:
            on_result(sf, tel, res)
        n += 1
        if max_frames and n >= max_frames:
            break
    return n
