import pytest
import yaml

from skyfix.config import load_config, save_config
from skyfix.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(overrides={"tiles": {"tile_size_m": 80, "stride_m": None}})
    assert cfg.tiles.tile_size_m == 80.0 and isinstance(cfg.tiles.tile_size_m, float)
    assert cfg.tiles.stride_m == 50.0  # None means "not given"


def test_unknown_key_suggests_closest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tiles:\n  tile_sise_m: 100\n")
    with pytest.raises(ConfigError, match=r"tiles\.tile_sise_m.*did you mean 'tile_size_m'"):
        load_config(p)


def test_unknown_section_suggests_closest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("modle:\n  dim: 128\n")
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        load_config(p)


def test_wrong_type_names_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  dim: '512'\n")
    with pytest.raises(ConfigError, match=r"model\.dim: expected int, got str"):
        load_config(p)
    p.write_text("model:\n  shared_weights: 1\n")
    with pytest.raises(ConfigError, match=r"model\.shared_weights: expected bool"):
        load_config(p)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(overrides={"model": {"lpn_parts": 4}, "eval": {"heading": "unknown"}})
    path = save_config(cfg, tmp_path / "resolved.yaml")
    assert yaml.safe_load(path.read_text())["model"]["lpn_parts"] == 4
    assert load_config(path) == cfg


def test_the_example_onboard_config_loads():
    from pathlib import Path
    cfg = load_config(Path(__file__).resolve().parents[1] / "edge.example.yaml")
    assert cfg.bridge.protocol == "ardupilot" and cfg.nav.ground_alt_msl_m == 2600.0
    assert not cfg.bridge.send_velocity and cfg.bridge.max_fix_age_s < 4.0  # ArduPilot's GPS timeout


@pytest.mark.parametrize("argv, message", [
    (["sim", "--pack", "p", "--alt-agl-m", "0"], "out of range: valid 20 .. 3000"),
    (["sim", "--pack", "p", "--alt-agl-m", "-5"], "out of range"),
    (["eval", "--pack", "p", "--queries-from", "m", "--views", "0"], "out of range: valid 1"),
    (["query", "--pack", "p", "--gallery", "g", "--lat", "91"], "out of range: valid -90 .. 90"),
    (["sim", "--pack", "p", "--speed-m-s", "fast"], "expected a number"),
    (["sim", "--pack", "p", "--duration-s", "0"], "out of range: valid 1"),  # not "the whole route"
    (["sim", "--pack", "p", "--wind-m-s", "-3"], "out of range"),
])
def test_cli_refuses_numbers_out_of_range_with_the_range(argv, message, capsys):
    from skyfix.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_velocity_without_the_attitude_model_is_warned_about(caplog):
    import logging
    with caplog.at_level(logging.WARNING, logger="skyfix.config"):
        load_config(overrides={"bridge": {"send_velocity": True}})
    assert "nav.tilt_acceleration" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skyfix.config"):
        load_config(overrides={"bridge": {"send_velocity": True}, "nav": {"tilt_acceleration": True}})
    assert caplog.text == ""


def test_version_and_an_unwritable_output_are_answered_without_a_traceback(monkeypatch, capsys):
    import skyfix.cli as cli
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("skyfix ")

    def unwritable(args):
        raise PermissionError(13, "Permission denied", "/proc/x")
    monkeypatch.setattr(cli, "cmd_doctor", unwritable)
    assert cli.main(["doctor"]) == 2
    assert "skyfix: error: cannot read or write /proc/x: Permission denied" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["colorado_heldout.yaml", "levircd_cross_temporal.yaml", "default_towers.yaml"])
def test_shipped_training_recipes_load(name):
    from pathlib import Path
    import skyfix.train
    from skyfix.config import train_config
    cfg = train_config("cpu-quick", Path(skyfix.train.__file__).parent / "recipes" / name)
    assert cfg.train.ortho or (cfg.train.scenes and all("ortho" in sc for sc in cfg.train.scenes))


def test_training_scenes_must_be_mappings(tmp_path):
    from skyfix.config import train_config
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  scenes: [a.tif]\n")
    with pytest.raises(ConfigError, match="train.scenes: expected a list of mappings"):
        train_config(None, path)
