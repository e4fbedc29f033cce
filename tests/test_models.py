"""Model resolution (edge.models onboard, export.models on a workstation) and the shipped towers."""
import numpy as np
import pytest
import yaml

from skyfix.config import ModelConfig
from skyfix.edge import models
from skyfix.errors import SkyfixError


def test_the_default_towers_ship_in_the_package_with_their_card():
    path = models.towers_path(models.DEFAULT)
    card = yaml.safe_load((path / "model.yaml").read_text())
    assert path == models.SHIPPED_TOWERS and card["model_id"] and "default_towers.yaml" in card["trained"]["command"]
    assert card["precision"] == "fp32" and card["stored"] == "fp16-weights" and card["parity_gate"]["passed"]
    assert (path / "README.md").is_file()  # the model card a user reads
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, card["input_px"], card["input_px"], 3), dtype=np.uint8)
    for tower in ("drone", "sat"):
        emb = models.open_towers(models.DEFAULT, tower)
        out = emb.embed(images)
        assert emb.model_id == card["model_id"] and out.shape == (2, card["dim"])
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-3)


def test_imagenet_towers_are_found_onboard_only_once_a_workstation_exported_them(tmp_path, monkeypatch):
    from skyfix.export.models import imagenet_onnx, load_embedder
    monkeypatch.setenv("SKYFIX_CACHE", str(tmp_path))
    cfg = ModelConfig(pretrained=False, input_px=64, dim=16)
    with pytest.raises(SkyfixError, match="tiles build --model imagenet"):
        models.open_towers(models.IMAGENET, "drone", cfg)
    made = load_embedder(models.IMAGENET, "drone", cfg)  # exports once
    stamp = (imagenet_onnx(cfg) / "model.yaml").stat().st_mtime
    onboard = models.open_towers(models.IMAGENET, "drone", cfg)
    assert onboard.model_id == made.model_id and onboard.dim == 16
    assert (imagenet_onnx(cfg) / "model.yaml").stat().st_mtime == stamp  # not exported again


@pytest.mark.parametrize("spec, message", [("run/best.pt", "skyfix export onnx --checkpoint"),
                                           ("no/such/model", "not found"),
                                           ])
def test_onboard_resolution_says_what_to_do(spec, message):
    with pytest.raises(SkyfixError, match=message):
        models.open_towers(spec, "drone")


def test_a_pack_names_its_model_unless_one_is_given():
    class Pack:
        manifest = {"model_source": "default"}
    assert models.model_for_pack(Pack()) == "default"
    assert models.model_for_pack(Pack(), "models/mine") == "models/mine"
