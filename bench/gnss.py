"""`skyfix bench gnss`: skyfix beside the autopilot's GNSS, per autopilot and scenario (docs/gnss.md).

ArduCopter SITL and PX4 SITL (SIH) take off on their simulated receivers; skyfix watches and
takes over. Each event flight is a straight mission (800 m, out and back over home) in 8 m/s wind
(ArduPilot: with 3 m/s gusts; SIH has none), the event `--gnss-after-s` into the mission; the
clean flight is a lawnmower of 6 km (about 10 minutes at 12 m/s) in the same wind, for false
alarms. Each autopilot flies the scenarios its simulator can make (sim.gnss_flight.
VEHICLE_SCENARIOS). Real time: about an hour for all rows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from skyfix.bench.common import fmt, pack_drone_embedder
from skyfix.errors import SkyfixError

FIELDS = ("autopilot", "scenario", "declared", "declared_as", "detection_s", "pulloff_at_detection_m",
          "autopilot_max_error_m", "autopilot_max_error_after_switch_m", "mission_completed", "false_alarms")


def gnss_record(summary: dict, autopilot: str) -> dict:
    """One --json record from a `sim --gnss` summary: FIELDS, the scenario's parameters, and
    skyfix's own messages' integrity through the flight."""
    g, sc = summary["gnss"], summary["gnss"]["scenario"]
    cal = summary.get("calibration") or {}
    return {"autopilot": autopilot, "scenario": sc["kind"], **{k: g.get(k) for k in FIELDS[2:] if k in g},
            "mission_completed": summary["mission_completed"], "parameters": sc,
            "switched_s": g.get("switched_s"), "event_s": g.get("event_s"),
            "receiver_h_acc_m_median": g.get("receiver_h_acc_m_median"),
            "skyfix_error_m_median": (summary.get("error_m") or {}).get("median"),
            "skyfix_beyond_3x": cal.get("beyond_3x"), "skyfix_median_error_over_accuracy": cal.get("median_error_over_accuracy")}


def bench_gnss(pack: str, scenarios: tuple = ("clean", "jam", "spoof", "step", "stuck"), json_path: Optional[str] = None,
               after_s: float = 30.0, rate_m_s: float = 1.0, bearing_deg: float = 90.0, step_m: float = 50.0,
               wind_m_s: float = 8.0, gust_m_s: float = 3.0, length_m: float = 800.0, clean_length_m: float = 6000.0,
               out_dir: str = "out/bench/gnss", autopilots: tuple = ("ardupilot", "px4")) -> str:
    """Fly each scenario each autopilot's simulator can make (sim.gnss_flight.VEHICLE_SCENARIOS);
    returns the table (and writes json_path)."""
    from skyfix.sim.gnss_flight import VEHICLE_SCENARIOS, GnssScenario
    for kind in scenarios:  # all refused before the first flight, not after half an hour
        GnssScenario(kind)
    for autopilot in autopilots:
        if autopilot not in VEHICLE_SCENARIOS:
            raise SkyfixError(f"--autopilots: '{autopilot}' is not one of {', '.join(VEHICLE_SCENARIOS)}")
    records = []
    embedder = pack_drone_embedder(pack)
    for autopilot in autopilots:
        for kind in (k for k in scenarios if k in VEHICLE_SCENARIOS[autopilot]):
            scenario = GnssScenario(kind, after_s=after_s, rate_m_s=rate_m_s, bearing_deg=bearing_deg, step_m=step_m)
            summary = _fly(autopilot, pack, embedder, scenario, wind_m_s, gust_m_s,
                           clean_length_m if kind == "clean" else length_m, Path(out_dir) / f"{autopilot}_{kind}")
            records.append(gnss_record(summary, autopilot))
            if json_path:  # after every flight: an hour's bench that dies loses nothing flown
                Path(json_path).parent.mkdir(parents=True, exist_ok=True)
                Path(json_path).write_text(json.dumps(records, indent=2))
    return format_gnss_table(records)


def _fly(autopilot: str, pack: str, embedder, scenario, wind_m_s: float, gust_m_s: float, length_m: float,
         out_dir: Path) -> dict:
    """One flight: the clean one a lawnmower (long, for false alarms), the others straight."""
    from skyfix.config import load_config
    from skyfix.sim.gnss_flight import run_gnss_px4, run_gnss_sitl
    clean = scenario.kind == "clean"
    cfg = load_config(overrides={"sim": {
        "route": "lawnmower" if clean else "straight", "length_m": length_m, "declination_deg": 8.66,
        "disturb": {"wind_m_s": wind_m_s, "gust_m_s": gust_m_s, "wind_from_deg": 300.0}}})
    if autopilot == "px4":
        return run_gnss_px4(pack, embedder, cfg, scenario, out_dir=str(out_dir), progress=False)
    return run_gnss_sitl(pack, embedder, cfg, scenario, out_dir=str(out_dir), progress=False)


def format_gnss_table(records: list) -> str:
    """The docs/gnss.md table (markdown)."""
    rows = ["| autopilot | scenario | declared | detection s | autopilot off at detection m | autopilot max "
            "error from the event m | ... from the switch m | mission | false alarms | skyfix messages beyond 3x |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        declared = r.get("declared_as") or "no"
        rows.append(f"| {r['autopilot']} | {_describe(r)} | {declared} | {fmt(r.get('detection_s'))} | "
                    f"{fmt(r.get('pulloff_at_detection_m'))} | {fmt(r.get('autopilot_max_error_m'))} | "
                    f"{fmt(r.get('autopilot_max_error_after_switch_m'))} | "
                    f"{'completed' if r['mission_completed'] else 'NOT completed'} | {r['false_alarms']} | "
                    f"{r.get('skyfix_beyond_3x')} |")
    return "\n".join(rows)


def _describe(r: dict) -> str:
    p = r["parameters"]
    if r["scenario"] == "spoof":
        return f"spoof {p['rate_m_s']:g} m/s to {p['bearing_deg']:g} deg at {p['after_s']:g} s"
    if r["scenario"] == "step":
        return f"step {p['step_m']:g} m to {p['bearing_deg']:g} deg at {p['after_s']:g} s"
    if r["scenario"] == "jam":
        return f"jam (receiver off) at {p['after_s']:g} s"
    if r["scenario"] == "stuck":
        return f"frozen receiver (stuck) at {p['after_s']:g} s"
    return "clean"
