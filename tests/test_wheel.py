"""The wheel, not the checkout: built, unpacked away from the repository, and run from there
(`doctor`, `tiles build` on a generated map, a short `sim`). An editable install hides a file
the package reads at run time but does not ship; this does not."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd, env, timeout_s=600):
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert r.returncode == 0, f"{args}: {r.stdout[-2000:]} {r.stderr[-3000:]}"
    return r.stdout


def test_the_wheel_runs_away_from_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    _run(["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(wheels)],
         tmp_path, os.environ.copy())
    site = tmp_path / "site"
    with zipfile.ZipFile(next(wheels.glob("skyfix-*.whl"))) as whl:  # a pure-Python wheel installs by unpacking
        whl.extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    # The unpacked wheel first on the path (ahead of the editable install), its own cache.
    env = {**os.environ, "PYTHONPATH": str(site), "SKYFIX_CACHE": str(tmp_path / "cache")}
    where = _run(["-c", "import skyfix, skyfix.train.recipes as r, pathlib; print(skyfix.__file__); "
                  "print(sorted(p.name for p in pathlib.Path(r.__path__[0]).glob('*.yaml')))"], work, env)
    assert where.splitlines()[0].startswith(str(site)), where
    assert "default_towers.yaml" in where and (site / "skyfix" / "edge" / "weights" / "dense").is_dir()
    shipped = site / "skyfix" / "edge" / "weights" / "towers"
    files = {p.name for p in shipped.iterdir()}  # shared towers: their weights stored once
    assert files >= {"towers.onnx", "model.yaml", "README.md"} and not files & {"drone.onnx", "sat.onnx"}
    assert (site / "skyfix" / "edge.example.yaml").is_file()
    _run(["-m", "skyfix.cli", "doctor"], work, env)
    _run(["-c", "from skyfix.tiles.synthetic import write_synthetic_map; write_synthetic_map('map.png', 1000, seed=5)"],
         work, env)
    _run(["-m", "skyfix.cli", "tiles", "build", "--ortho", "map.png", "--source-gsd-m", "0.5", "--out", "pack",
          "--features", "sift", "-q"], work, env)  # the shipped default towers
    assert "model_source: default" in (work / "pack" / "manifest.yaml").read_text()
    _run(["-m", "skyfix.cli", "sim", "--pack", "pack", "--matcher", "sift", "--route", "straight",
          "--duration-s", "10", "--out", "flight", "--json", "flight.json", "-q"], work, env)
    summary = json.loads((work / "flight.json").read_text())
    assert summary["n_frames"] > 5 and summary["confident_wrong_fixes"] == 0
