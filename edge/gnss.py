"""The GNSS watch: the autopilot's GNSS tested against skyfix's own fixes.

A drone takes off on its GNSS; in flight the GNSS may be lost (jamming: no fix, few satellites,
an accuracy that balloons) or, worse, keep reporting a plausible position pulled away from the
truth (spoofing), which the autopilot's EKF follows. skyfix's map fixes are an independent
witness. The watch declares the GNSS

    healthy       it agrees with skyfix (or skyfix has no confident track to say otherwise)
    lost          the receiver itself says it has no usable fix, or has gone silent; a fix that
                  returns is trusted again only after agreeing with skyfix for `agree_s`
    contradicted  it disagrees with skyfix's confident track beyond both stated accuracies,
                  consistently: a jump (the disagreement appeared between two samples) or a
                  drift (it grew over the window, the usual spoof at 0.5-3 m/s)

never on one sample: `lost` needs the receiver's own word for `lost_after_s`, `contradicted`
needs `min_checks` disagreeing checks in a row over at least `window_s` of skyfix's
confident track; without such a track nothing is ever contradicted.

The tests, with r the GNSS position minus skyfix's estimate at the same time (east, north, m):

    gate_m = max(k_sigma * sqrt(gnss_acc_m**2 + skyfix_acc_m**2), min_offset_m)

with both accuracies as the horizontal radius each source states (the receiver's h_acc, skyfix's
DRMS). A check disagrees when |r| > gate_m. Why a floor: GNSS multipath and the map's own
offset move r by a few metres for seconds at a time in clean flight; the floor (8 m by default)
keeps those quiet while a 1 m/s pull-off is declared about 10 s after it starts.

Times are the local monotonic clock (s), positions the pack's local frame (east_m, north_m).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

HEALTHY, LOST, CONTRADICTED = "healthy", "lost", "contradicted"
FIX_3D = 3  # GPS_FIX_TYPE_3D_FIX: below it the receiver has no usable horizontal fix


@dataclass(frozen=True)
class GnssSample:
    """One receiver report (GPS_RAW_INT / GPS2_RAW): position in the pack's frame (None without
    a fix), its stated horizontal accuracy (m, None if unknown), fix type and satellites."""

    t_s: float
    east_m: Optional[float]
    north_m: Optional[float]
    h_acc_m: Optional[float]
    fix_type: int
    satellites: int = 255  # 255: unknown (MAVLink)


@dataclass(frozen=True)
class WatchConfig:
    """The watch's thresholds (GnssConfig carries them from the YAML)."""

    k_sigma: float = 3.0          # disagreement gate in combined stated accuracies
    min_offset_m: float = 8.0     # ... and never below this (multipath, map offset)
    window_s: float = 3.0         # disagreement must persist this long ...
    min_checks: int = 4           # ... over at least this many checks
    jump_window_s: float = 1.0    # ... or this long, when it appeared at once and is twice the gate
    lost_after_s: float = 1.0     # the receiver's own "no fix" must persist this long
    lost_h_acc_m: float = 15.0    # a stated accuracy above this is no usable fix (jamming)
    min_satellites: int = 4       # fewer (when reported) is no usable fix
    silence_s: float = 2.0        # no receiver report for this long: lost
    agree_s: float = 10.0         # after a declaration, agreeing this long makes it healthy again
    default_h_acc_m: float = 5.0  # a receiver that states no accuracy is taken as this


@dataclass
class Declaration:
    """A change of the watch's verdict, with its evidence (for the log, STATUSTEXT and JSON)."""

    t_s: float
    state: str
    kind: str          # "jump", "drift", "no fix", "silent", "accuracy", "agrees again"
    evidence: str
    offset_m: Optional[float] = None
    rate_m_s: Optional[float] = None

    def as_dict(self, t0_s: float = 0.0) -> dict:
        return {"t_s": round(self.t_s - t0_s, 2), "state": self.state, "kind": self.kind,
                "evidence": self.evidence, "offset_m": None if self.offset_m is None else round(self.offset_m, 1),
                "rate_m_s": None if self.rate_m_s is None else round(self.rate_m_s, 2)}


@dataclass
class _Check:
    t_s: float
    r_east_m: float
    r_north_m: float
    gate_m: float

    @property
    def offset_m(self) -> float:
        return math.hypot(self.r_east_m, self.r_north_m)

    @property
    def disagrees(self) -> bool:
        return self.offset_m > self.gate_m


@dataclass
class GnssWatch:
    """Feed it receiver samples (`offer_gnss`) and skyfix's estimates (`check`); read `state`
    and `declarations`. Pure logic: no clock, no link."""

    cfg: WatchConfig = field(default_factory=WatchConfig)
    state: str = HEALTHY
    declarations: list = field(default_factory=list)
    checks_made: int = 0
    last_check: Optional[_Check] = None

    def __post_init__(self):
        self._checks: deque = deque()           # recent checks, the window's and a little more
        self._bad_since: Optional[float] = None  # first sample of the receiver's current "no fix"
        self._bad_kind = ""
        self._last_sample: Optional[GnssSample] = None
        self._agree_since: Optional[float] = None
        self.had_fix = False  # a receiver still acquiring after power-on is not "lost"

    # ---- the receiver's own word --------------------------------------------------------------
    def offer_gnss(self, sample: GnssSample) -> Optional[Declaration]:
        """One receiver report. Returns the declaration it caused, if any."""
        self._last_sample = sample
        why = self.unusable(sample)
        if not why:
            # A receiver back from jamming stays "lost" until skyfix's checks decide (check()).
            self.had_fix, self._bad_since = True, None
            return None
        if not self.had_fix:
            return None
        if self._bad_since is None:
            self._bad_since, self._bad_kind = sample.t_s, why
        if self.state != LOST and sample.t_s - self._bad_since >= self.cfg.lost_after_s:
            return self._declare(sample.t_s, LOST, self._bad_kind,
                                 f"{self._bad_kind} for {sample.t_s - self._bad_since:.1f} s")
        return None

    def unusable(self, s: GnssSample) -> str:
        """Why the receiver's own report is no usable fix (empty when it is)."""
        if s.fix_type < FIX_3D or s.east_m is None:
            return "no fix"
        if s.satellites != 255 and s.satellites < self.cfg.min_satellites:
            return "few satellites"
        if s.h_acc_m is not None and s.h_acc_m > self.cfg.lost_h_acc_m:
            return "accuracy"
        return ""

    def silence(self, now_s: float) -> Optional[Declaration]:
        """Called at the watch's rate: a receiver that stopped reporting is lost."""
        last = self._last_sample
        if self.state == LOST or not self.had_fix or now_s - last.t_s < self.cfg.silence_s:
            return None
        return self._declare(now_s, LOST, "silent", f"no receiver report for {now_s - last.t_s:.1f} s")

    # ---- against skyfix -----------------------------------------------------------------------
    def check(self, t_s: float, east_m: float, north_m: float, accuracy_m: float) -> Optional[Declaration]:
        """skyfix's confident estimate at t_s (DRMS accuracy, m) against the latest receiver
        sample (which must be within 0.5 s of t_s and usable). Returns a declaration, if any."""
        s = self._last_sample
        if s is None or abs(t_s - s.t_s) > 0.5 or self.unusable(s):
            return None
        h_acc = s.h_acc_m if s.h_acc_m is not None else self.cfg.default_h_acc_m
        gate = max(self.cfg.k_sigma * math.hypot(h_acc, accuracy_m), self.cfg.min_offset_m)
        c = _Check(t_s, s.east_m - east_m, s.north_m - north_m, gate)
        self.checks_made += 1
        self.last_check = c
        self._checks.append(c)
        while self._checks and t_s - self._checks[0].t_s > 4 * self.cfg.window_s:
            self._checks.popleft()
        if self.state == HEALTHY:
            return self._maybe_contradicted(t_s)
        if self.state == CONTRADICTED:
            return self._maybe_agrees_again(t_s, c)
        # LOST, with a fix again: trusted after agreeing for agree_s, contradicted as any other
        return self._maybe_contradicted(t_s) or self._maybe_agrees_again(t_s, c)

    def _run(self) -> list:
        """The checks at the end of the window that all disagree (oldest first)."""
        run = []
        for c in reversed(self._checks):
            if not c.disagrees:
                break
            run.append(c)
        return run[::-1]

    def _maybe_contradicted(self, t_s: float) -> Optional[Declaration]:
        run = self._run()
        if len(run) < self.cfg.min_checks:
            return None
        first, last = run[0], run[-1]
        before = self._checks[len(self._checks) - len(run) - 1] if len(self._checks) > len(run) else None
        # A jump: the disagreement appeared between two checks (from inside the gate to beyond
        # it by more than the gate again); otherwise it grew: a drift. A jump to twice the gate
        # is declared sooner: multipath does not do that, a spoofer's step does.
        jumped = before is not None and math.hypot(first.r_east_m - before.r_east_m,
                                                   first.r_north_m - before.r_north_m) > first.gate_m
        far = all(c.offset_m > 2 * c.gate_m for c in run)
        needed_s = self.cfg.jump_window_s if jumped and far else self.cfg.window_s
        if last.t_s - first.t_s < needed_s:
            return None
        rate = _rate_m_s([c for c in self._checks if c.t_s >= last.t_s - 4 * self.cfg.window_s])
        kind = "jump" if jumped else "drift"
        bearing = math.degrees(math.atan2(last.r_east_m, last.r_north_m)) % 360
        evidence = (f"{kind}: GNSS {last.offset_m:.0f} m from skyfix towards {bearing:.0f} deg "
                    f"(gate {last.gate_m:.0f} m) for {last.t_s - first.t_s:.1f} s, {len(run)} checks"
                    + ("" if jumped or rate is None else f", growing {rate:.1f} m/s"))
        return self._declare(t_s, CONTRADICTED, kind, evidence, last.offset_m, rate)

    def _maybe_agrees_again(self, t_s: float, c: _Check) -> Optional[Declaration]:
        if c.disagrees:
            self._agree_since = None
            return None
        if self._agree_since is None:
            self._agree_since = t_s
        if t_s - self._agree_since >= self.cfg.agree_s:
            return self._declare(t_s, HEALTHY, "agrees again",
                                 f"GNSS within {c.gate_m:.0f} m of skyfix for {t_s - self._agree_since:.0f} s",
                                 c.offset_m)
        return None

    def _declare(self, t_s: float, state: str, kind: str, evidence: str, offset_m: Optional[float] = None,
                 rate_m_s: Optional[float] = None) -> Optional[Declaration]:
        if state == self.state:
            return None
        self.state, self._agree_since = state, None
        if state == LOST:
            self._checks.clear()  # checks from before the loss say nothing about the fix that returns
        d = Declaration(t_s, state, kind, evidence, offset_m, rate_m_s)
        self.declarations.append(d)
        return d


def _rate_m_s(checks: list) -> Optional[float]:
    """How fast the disagreement grew (m/s): the slope of |r| over time, least squares."""
    if len(checks) < 3:
        return None
    t = np.array([c.t_s for c in checks])
    r = np.array([c.offset_m for c in checks])
    if np.ptp(t) < 1e-3:
        return None
    return float(np.polyfit(t - t[0], r, 1)[0])


def replay_trace(trace: dict, cfg: WatchConfig = WatchConfig()) -> GnssWatch:
    """Run a watch over a recorded trace (the `gnss.trace` of a fly/sim JSON: receiver samples
    (t, east, north, h_acc, fix_type, satellites) and skyfix's checks (t, east, north,
    accuracy)), in time order as the guard saw them, its silence test at every check."""
    w = GnssWatch(cfg)
    events = [(row[0], 0, row) for row in trace["gnss"]] + [(row[0], 1, row) for row in trace["skyfix"]]
    for t, kind, row in sorted(events, key=lambda x: (x[0], x[1])):
        if kind == 0:
            w.offer_gnss(GnssSample(*row))
        else:
            w.silence(t)
            w.check(*row)
    return w
