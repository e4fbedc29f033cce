"""`skyfix sim` in the loop on the shared Colorado map: real MAVLink over UDP, real components."""
import json

import pytest


pytestmark = [pytest.mark.data, pytest.mark.slow]


@pytest.fixture(scope="module")
def pack(colorado_pack):
    return colorado_pack


def test_sim_short_route_with_a_link_drop(pack, tmp_path):
    from skyfix.cli import main
    js = tmp_path / "sim.json"
    # 24 s flight; the autopilot goes silent from 10 s to 14 s (both directions).
    from skyfix.config import load_config
    from skyfix.edge.embedders import open_embedder
    from skyfix.sim.run import run_sim
    cfg = load_config(overrides={"sim": {"duration_s": 24.0, "route": "straight", "seed": 2},
                                 "bridge": {"send_velocity": True}})
    s = run_sim(pack, open_embedder(_model(pack), "drone"), cfg, out_dir=tmp_path / "out", link_drop=(10.0, 4.0),
                progress=False)
    assert s["n_published"] > 50
    assert s["error_m"]["median"] < 5.0 and s["error_m"]["max"] < 15.0
    assert s["confident_wrong_fixes"] == 0 and s["calibration"]["within_3x"] == 1.0
    assert s["link"]["reconnects"] >= 1          # the silence was noticed
    assert 0.4 < s["availability"] < 0.95        # the gap shows: no fix was faked through it
    # Velocity went out in every GPS_INPUT, scored against the true 12 m/s along the route.
    v = s["velocity"]
    assert v["n"] == s["n_published"] and v["error_m_s"]["median"] < 1.0 and v["within_3x"] > 0.95
    assert (tmp_path / "out" / "track.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "track.csv").read_text().count("\n") == s["n_published"] + 1
    # The CLI writes the JSON the README documents (PX4 message this time).
    assert main(["sim", "--pack", str(pack), "--duration-s", "8", "--protocol", "px4",
                 "--out", str(tmp_path / "cli"), "--json", str(js), "-q"]) == 0
    r = json.loads(js.read_text())
    assert {"median", "p95", "max"} <= set(r["error_m"]) and "availability" in r and "n_fixes" in r
    assert r["protocol"] == "px4" and r["n_published"] > 0 and r["confident_wrong_fixes"] == 0


def _model(pack):
    from skyfix.pack.tilepack import TilePack
    return TilePack.open(pack).manifest["model_source"]
