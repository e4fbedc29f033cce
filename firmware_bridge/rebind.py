"""Re-binding a UDP link after a silence: to the same autopilot only.

Without MAVLink signing anyone on the network can send datagrams with the autopilot's system and
component id. While the autopilot talks, its endpoint (address and port) is pinned and every other
sender is dropped. When it falls silent (a radio fade), the endpoint it spoke from stays preferred
and wins back the link the moment it speaks again; a new endpoint (a radio or router restarted on
another port) is taken only once it has shown, for REBIND_DWELL_S, that it is plausibly the same
autopilot: its boot clock continues where the autopilot's left off, and its attitude and height
continue from the last ones heard. A sender that waits for a fade with its own clock or its own
attitude is refused and counted.

What this cannot stop: a sender that hears the autopilot's own traffic can imitate its clock and
attitude. Only signing (`bridge.signing_key_file`) closes that.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

REBIND_DWELL_S = 1.0        # a new endpoint must stay plausible this long before it is taken
BOOT_TOLERANCE_S = 1.0      # its boot clock within this of where the autopilot's should be now
TILT_JUMP_DEG, TILT_RATE_DEG_S = 15.0, 5.0     # roll/pitch may have moved this much + rate * gap
YAW_JUMP_DEG, YAW_RATE_DEG_S = 20.0, 10.0      # yaw likewise
HEIGHT_JUMP_M, CLIMB_M_S = 5.0, 5.0            # relative altitude likewise
MAX_CANDIDATES = 8          # endpoints remembered at once (a flood cannot grow it)
BOOT_TYPES = ("ATTITUDE", "GLOBAL_POSITION_INT", "SYSTEM_TIME")


@dataclass
class _Candidate:
    first_s: float
    seen: set = field(default_factory=set)


def _angle_deg(a_rad: float, b_rad: float) -> float:
    return abs(math.degrees((a_rad - b_rad + math.pi) % (2 * math.pi) - math.pi))


class RebindCheck:
    """Decides whether a new endpoint is the autopilot that fell silent (see module docstring).

    `telemetry` is the bridge's TelemetryStore: the autopilot's last attitude and height and its
    boot clock, which a continuation must match."""

    def __init__(self, telemetry):
        self.telemetry = telemetry
        self.candidates: OrderedDict = OrderedDict()  # endpoint -> _Candidate
        self.refused: dict = {}                       # why candidates were refused -> count

    def reset(self) -> None:
        """The autopilot spoke again from its own endpoint: forget every candidate."""
        self.candidates.clear()

    def offer(self, msg, endpoint: tuple, now_mono_s: float) -> bool:
        """One message (already from the bound system/component) from a new endpoint during a
        silence; True once that endpoint has proven itself and should become the autopilot's."""
        why = self._implausible(msg, now_mono_s)
        if why:
            self.candidates.pop(endpoint, None)
            self.refused[why] = self.refused.get(why, 0) + 1
            return False
        cand = self.candidates.get(endpoint)
        if cand is None:
            while len(self.candidates) >= MAX_CANDIDATES:
                self.candidates.popitem(last=False)
            cand = self.candidates[endpoint] = _Candidate(now_mono_s)
        cand.seen.add(msg.get_type())
        proven = (now_mono_s - cand.first_s >= REBIND_DWELL_S and "ATTITUDE" in cand.seen
                  and "GLOBAL_POSITION_INT" in cand.seen and "HEARTBEAT" in cand.seen)
        if proven:
            self.candidates.clear()
        return proven

    def _implausible(self, msg, now_mono_s: float) -> Optional[str]:
        """Why this message cannot be the silent autopilot's continuation (None if it can be)."""
        kind = msg.get_type()
        last_rx = self.telemetry.last_receive_s()
        gap_s = 0.0 if last_rx is None else max(now_mono_s - last_rx, 0.0)
        if kind in BOOT_TYPES:
            expected_s = self.telemetry.boot_s(now_mono_s)
            if expected_s is None or abs(msg.time_boot_ms / 1e3 - expected_s) > BOOT_TOLERANCE_S:
                return "boot clock does not continue"
        if kind == "ATTITUDE":
            last = self.telemetry.get("ATTITUDE", math.inf, now_mono_s)
            if last is None:
                return "no attitude to continue from"
            tilt_limit = TILT_JUMP_DEG + TILT_RATE_DEG_S * gap_s
            if _angle_deg(msg.roll, last.roll) > tilt_limit or _angle_deg(msg.pitch, last.pitch) > tilt_limit:
                return "attitude does not continue"
            if _angle_deg(msg.yaw, last.yaw) > YAW_JUMP_DEG + YAW_RATE_DEG_S * gap_s:
                return "heading does not continue"
        if kind == "GLOBAL_POSITION_INT":
            last = self.telemetry.get("GLOBAL_POSITION_INT", math.inf, now_mono_s)
            if last is None or abs(msg.relative_alt - last.relative_alt) / 1e3 > HEIGHT_JUMP_M + CLIMB_M_S * gap_s:
                return "height does not continue"
        return None
