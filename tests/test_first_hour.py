"""What a new user meets in their first hour, run as they type it: the shipped example config,
heights a pack serves, messages that name the next step, and inputs that are not resumable."""
import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from skyfix import cli

REPO = Path(__file__).resolve().parents[1]


def test_the_lowest_height_a_tile_serves_is_where_a_frame_covers_half_of_it():
    """lowest_agl_m against rectify itself: just above it every heading covers half a tile, just
    below it some heading does not; it scales with the tile."""
    from skyfix.edge.camera import PinholeCamera, lowest_agl_m, rectify
    cam = PinholeCamera.from_hfov(640, 480, 70.0)
    low_m = lowest_agl_m(cam, 100.0)
    frame = np.full((480, 640, 3), 128, np.uint8)
    inside = [rectify(frame, cam, 0.0, 0.0, np.radians(yaw), h, 100.0, 64)[1]
              for h in (low_m * 0.97, low_m * 1.03) for yaw in range(0, 91, 15)]
    assert min(inside[:7]) < 0.5 <= min(inside[7:])
    assert lowest_agl_m(cam, 50.0) == pytest.approx(low_m / 2, rel=0.01)


def test_without_levels_the_build_plans_the_one_min_agl_needs():
    """Without --levels-m the build adds the level tiles.min_agl_m needs; none when the main tiles
    already serve that height; the levels given when given."""
    from skyfix.config import load_config
    from skyfix.edge.camera import PinholeCamera, lowest_agl_m
    from skyfix.tiles.build import planned_levels_m
    cam = PinholeCamera.from_hfov(640, 480, 70.0)
    cfg = load_config()
    levels = planned_levels_m(100.0, [], cfg.tiles.min_agl_m, cam)
    assert len(levels) == 1 and lowest_agl_m(cam, levels[0]) <= cfg.tiles.min_agl_m < lowest_agl_m(cam, 100.0)
    assert planned_levels_m(100.0, [], 80.0, cam) == [] and planned_levels_m(100.0, [40, 60], 30.0, cam) == [60, 40]


def test_tiles_build_adds_the_low_level_and_inspect_says_the_heights(tmp_path, tiny_onnx_dir, capsys):
    from skyfix.pack.tilepack import TilePack
    from skyfix.tiles.synthetic import write_synthetic_map
    map_path = write_synthetic_map(tmp_path / "map.png")
    out = tmp_path / "pack"
    assert cli.main(["tiles", "build", "--ortho", str(map_path), "--source-gsd-m", "0.5", "--out", str(out),
                     "--model", str(tiny_onnx_dir), "--features", "sift", "-q"]) == 0
    said = capsys.readouterr()
    pack = TilePack.open(out)
    assert [lv.tile_size_m for lv in pack.levels] == [51.0]
    assert "fixes from 30 m above ground" in said.out + said.err
    assert cli.main(["tiles", "inspect", str(out)]) == 0
    assert "heights    fixes from 30 m above ground up" in capsys.readouterr().out


def test_doctor_finds_the_xfeat_a_build_exported_into_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SKYFIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["doctor"]) == 0
    assert "XFeat not exported yet" in capsys.readouterr().out
    (tmp_path / "cache" / "xfeat").mkdir(parents=True)
    (tmp_path / "cache" / "xfeat" / "xfeat.onnx").write_bytes(b"onnx")
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"matcher model: XFeat in {tmp_path / 'cache' / 'xfeat'}" in out and "not exported" not in out


def test_an_unreadable_map_is_an_error_not_a_resumable_stop(tmp_path, tiny_onnx_dir, capsys):
    fake = tmp_path / "map.tif"
    fake.write_text("this is not a GeoTIFF\n")
    for _ in range(2):  # the second run says the same, and nothing is left behind
        assert cli.main(["tiles", "build", "--ortho", str(fake), "--out", str(tmp_path / "pack"),
                         "--model", str(tiny_onnx_dir), "--features", "sift", "-q"]) == 2
        said = capsys.readouterr()
        assert "cannot read" in said.err and str(fake) in said.err and "resume" not in said.out + said.err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif"]


def test_an_unwritable_output_is_named_as_typed(tmp_path, tiny_onnx_dir, capsys):
    from skyfix.tiles.synthetic import write_synthetic_map
    map_path = write_synthetic_map(tmp_path / "map.png")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    assert cli.main(["tiles", "build", "--ortho", str(map_path), "--source-gsd-m", "0.5", "--out",
                     str(blocker / "pack"), "--model", str(tiny_onnx_dir), "--features", "sift", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {blocker / 'pack'}" in err and ".pack.partial" not in err


@pytest.mark.slow
@pytest.mark.data
def test_fly_offline_runs_on_the_shipped_example_config(colorado_pack, tmp_path, capsys):
    """edge.example.yaml as shipped, with only its pack, source and telemetry pointed at a user's
    data, runs `skyfix fly --offline`; the same with the wrong camera size exits non-zero."""
    from skyfix.edge.camera import PinholeCamera
    from skyfix.pack.tilepack import TilePack
    from skyfix.sim.photos import write_photo_sequence
    folder = tmp_path / "flight"
    csv_path = write_photo_sequence(TilePack.open(colorado_pack).canvas(), PinholeCamera.from_hfov(640, 480, 70.0),
                                    folder, 8, (-150.0, 0.0), (10.0, 0.0))
    example = yaml.safe_load((REPO / "edge.example.yaml").read_text())
    example["nav"].update(pack=str(colorado_pack), source=str(folder), telemetry_csv=str(csv_path),
                          gallery_out=str(tmp_path / "out" / "gallery.npz"))
    config = tmp_path / "edge.yaml"
    config.write_text(yaml.safe_dump(example))
    assert cli.main(["fly", "--config", str(config), "--offline"]) == 0
    with open(tmp_path / "out" / "fixes.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and sum(1 for r in rows if r["lat_deg"]) >= 4
    capsys.readouterr()
    example["camera"].update(width_px=1280, height_px=960)
    config.write_text(yaml.safe_dump(example))
    assert cli.main(["fly", "--config", str(config), "--offline"]) == 4
    assert "none of the 8 frames could be used" in capsys.readouterr().err


@pytest.mark.slow
def test_sim_record_names_what_it_wrote_and_the_replay_to_run(tmp_path, tiny_onnx_dir, capsys):
    from skyfix.tiles.synthetic import write_synthetic_map
    map_path = write_synthetic_map(tmp_path / "map.png")
    pack = tmp_path / "pack"
    assert cli.main(["tiles", "build", "--ortho", str(map_path), "--source-gsd-m", "0.5", "--out", str(pack),
                     "--model", str(tiny_onnx_dir), "--features", "sift", "--min-agl-m", "0", "-q"]) == 0
    capsys.readouterr()
    out = tmp_path / "sim"
    assert cli.main(["sim", "--pack", str(pack), "--matcher", "sift", "--duration-s", "5", "--record",
                     "--out", str(out), "-q"]) == 0
    said = capsys.readouterr().out
    assert "route 60 m" in said  # 5 s at 12 m/s, not the whole route
    assert f"camera {out / 'flight.mp4'}, telemetry {out / 'flight.tlog'}" in said
    assert f"skyfix replay --video {out / 'flight.mp4'} --log {out / 'flight.tlog'} --pack {pack}" in said
    assert (out / "flight.mp4").stat().st_size > 0 and (out / "flight.tlog").stat().st_size > 0


@pytest.mark.slow
def test_a_demo_over_another_map_keeps_the_previous_demos_pack(tmp_path, xfeat_dir, monkeypatch, capsys):
    """`skyfix demo --ortho A` then `--ortho B`: each map's pack and flight in a folder of its own,
    said at the start; B's demo leaves A's pack as it was."""
    import shutil

    from skyfix.tiles.synthetic import write_synthetic_map
    monkeypatch.setenv("SKYFIX_CACHE", str(tmp_path / "cache"))
    shutil.copytree(xfeat_dir, tmp_path / "cache" / "xfeat")  # as a first build exports it
    maps = [write_synthetic_map(tmp_path / f"{name}.png", 1000, seed=seed) for name, seed in (("a", 1), ("b", 2))]
    out = tmp_path / "demo"
    for path in maps:
        assert cli.main(["demo", "--ortho", str(path), "--source-gsd-m", "0.5", "--duration-s", "3",
                         "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"pack and flight in {out / 'a'}" in said and f"pack and flight in {out / 'b'}" in said
    for name, path in zip("ab", maps):
        assert yaml.safe_load((out / name / "pack" / "manifest.yaml").read_text())["source"] == str(path)
        assert (out / name / "flight" / "track.png").is_file()
