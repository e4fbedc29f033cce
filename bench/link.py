"""A hostile sender on the MAVLink port during a flight (docs/link.md)."""
from __future__ import annotations

import time

import numpy as np

from skyfix.bench.common import _rss_mb, pack_drone_embedder


def hostile_sender(n_datagrams: int, duration_s: float, n_sockets: int = 500, seed: int = 0):
    """An interference for `sim.run.fly`: from n_sockets source ports, n_datagrams over
    duration_s, a mix of junk bytes, MAVLink from system 42 (an autopilot HEARTBEAT, a wrong
    ATTITUDE and height, SYSTEM_TIME 2^63) and the same messages with the autopilot's own ids.
    Returns (start, sent): `sent["n"]` counts the datagrams sent."""
    import socket
    import threading

    from pymavlink.dialects.v20 import common as m2
    rng = np.random.default_rng(seed)

    def packets(sysid: int) -> list[bytes]:
        mav = m2.MAVLink(None, srcSystem=sysid, srcComponent=1)
        return [mav.heartbeat_encode(m2.MAV_TYPE_QUADROTOR, m2.MAV_AUTOPILOT_ARDUPILOTMEGA, 0, 0, 4).pack(mav),
                mav.attitude_encode(10 ** 6, 0.5, -0.5, -3.0, 0, 0, 0).pack(mav),
                mav.global_position_int_encode(10 ** 6, 0, 0, 0, 900_000, 0, 0, 0, 0).pack(mav),
                mav.system_time_encode(2 ** 63, 10 ** 6).pack(mav)]
    payloads = packets(42) + packets(1) + [bytes(rng.integers(0, 256, 60, dtype=np.uint8)) for _ in range(4)]

    sent = {"n": 0}

    def start(connection: str):
        host, port = connection.split(":")[1:3]
        stop = threading.Event()

        def run():
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n_sockets)]
            period = duration_s / n_datagrams
            t0 = time.monotonic()
            try:
                while sent["n"] < n_datagrams and not stop.is_set():
                    socks[sent["n"] % n_sockets].sendto(payloads[sent["n"] % len(payloads)], (host, int(port)))
                    sent["n"] += 1
                    ahead = t0 + sent["n"] * period - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
            finally:
                for s in socks:
                    s.close()

        thread = threading.Thread(target=run, daemon=True, name="hostile-sender")
        thread.start()

        def stop_it():
            stop.set()
            thread.join(timeout=5)
        return stop_it
    return start, sent


def bench_attack(pack_path: str, n_datagrams: int = 20000, duration_s: float = 55.0) -> str:
    """The same simulated flight twice, with and without a hostile sender on skyfix's port:
    fixes published, received by the autopilot, error, what the link refused, RSS (MB)."""
    from skyfix.config import load_config
    from skyfix.sim.run import run_sim
    cfg = load_config(overrides={"sim": {"route": "straight", "duration_s": duration_s}})
    embedder = pack_drone_embedder(pack_path)
    rows = [f"| {duration_s:g} s flight | hostile datagrams | published | availability | error median / max m | "
            "dropped from other senders | values refused | encode failures | RSS before / after MB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for attack in (False, True):
        start, sent = hostile_sender(n_datagrams, duration_s * 0.9) if attack else (None, {"n": 0})
        rss0 = _rss_mb()
        s = run_sim(pack_path, embedder, cfg, out_dir=f"out/bench/attack_{int(attack)}", progress=False,
                    interference=start)
        link, e = s["link"], s["error_m"]
        dropped = link.get("foreign_datagrams", 0) + sum(link.get("dropped", {}).values())
        rows.append(f"| {'under attack' if attack else 'quiet'} | {sent['n']} | {s['n_published']} | "
                    f"{100 * s['availability']:.1f} % | {e['median']:.2f} / {e['max']:.2f} | {dropped} | "
                    f"{sum(link.get('rejected_values', {}).values())} | {link.get('encode_failures', 0)} | "
                    f"{rss0:.0f} / {_rss_mb():.0f} |")
    return "\n".join(rows)
