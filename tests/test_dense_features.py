"""skyfix's own dense features (`skyfix train-features`): the training pairs' geometry, that a
short run learns, the ONNX export and the extractor behind the common interface; and the
default towers (`--model default`): trained once by the recipe, cached, and replaced, said, by
the ImageNet ones where the recipe's map is absent."""

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from skyfix.errors import SkyfixError  # noqa: E402
from skyfix.train import dense_features as dfeat  # noqa: E402


def _textured(size_px=400, seed=3):
    rng = np.random.default_rng(seed)
    img = np.zeros((size_px, size_px, 3), np.float32)
    for scale in (4, 16, 50):
        small = rng.uniform(0, 255, (size_px // scale, size_px // scale, 3)).astype(np.float32)
        img += cv2.resize(small, (size_px, size_px), interpolation=cv2.INTER_CUBIC) / 3
    return np.clip(img, 0, 255).astype(np.uint8)


def test_view_pair_homography_maps_view_a_onto_view_b():
    img = _textured()
    rng = np.random.default_rng(0)
    for _ in range(3):
        a, b, a_to_b = dfeat.sample_view_pair([(img, img)], rng, 96, rotation_deg=20.0)
        warped = cv2.warpPerspective(a, a_to_b, (96, 96))
        valid = cv2.warpPerspective(np.ones((96, 96), np.uint8), a_to_b, (96, 96)) > 0
        valid = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        ga = cv2.cvtColor(warped, cv2.COLOR_RGB2GRAY)[valid].astype(float)
        gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)[valid].astype(float)
        # Photometric change alters levels, not places: the aligned pixels stay correlated.
        assert np.corrcoef(ga, gb)[0, 1] > 0.6


def test_a_short_run_learns_to_match_cells(tmp_path):
    path = tmp_path / "map.png"
    cv2.imwrite(str(path), _textured(500))
    recipe = dfeat.DenseRecipe(pairs=[{"map": str(path)}], steps=60, batch=4, crop_px=96, seed=0)
    _, history = dfeat.train_dense(recipe, log_every=20)
    assert history[-1]["hit_rate"] > history[0]["hit_rate"] + 0.1
    assert history[-1]["loss"] < history[0]["loss"]


def test_recipe_errors_are_clear(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("pairs: []\n")
    with pytest.raises(SkyfixError, match="no training pairs"):
        dfeat.read_recipe(bad)
    bad.write_text("pairs: [{map: x.png}]\nstepz: 3\n")
    with pytest.raises(SkyfixError, match="unknown recipe keys"):
        dfeat.read_recipe(bad)
    bad.write_text("pairs: [{map: nowhere.png}]\n")
    with pytest.raises(SkyfixError, match="not found"):
        dfeat.load_pairs(dfeat.read_recipe(bad))


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    torch.manual_seed(0)
    from skyfix.export.dense_onnx import export_dense
    return export_dense(dfeat.build_net().eval(), tmp_path_factory.mktemp("models") / "dense", {"test": 1})


def test_export_and_extractor_give_cell_centred_unit_descriptors(dense_dir):
    from skyfix.edge.features import open_extractor
    ex = open_extractor("dense", dense_dir)
    assert ex.name == "dense" and ex.identity.startswith("dense-onnx-")
    img = _textured(150)[:, :130].copy()  # no multiple of 16 either way
    f = ex.extract(img, 200)
    assert 0 < len(f) <= 200 and f.desc.shape == (len(f), 64)
    np.testing.assert_allclose(np.linalg.norm(f.desc, axis=1), 1.0, atol=1e-4)
    assert np.all((f.xy_px + 0.5) % 4 == 2)  # centres of 4 x 4 cells
    assert f.xy_px[:, 0].max() < 130 and f.xy_px[:, 1].max() < 150
    assert np.all(np.diff(f.scores) <= 0)  # strongest first
    mask = np.zeros(img.shape[:2], bool)
    mask[:, 70:] = True
    assert np.all(ex.extract(img, 200, mask).xy_px[:, 0] >= 69.5)  # the cell centre 69.5 reads pixel 70


def test_missing_dense_model_names_the_command(tmp_path):
    from skyfix.edge.features import open_extractor
    with pytest.raises(SkyfixError, match="skyfix train-features"):
        open_extractor("dense", tmp_path / "none")


@pytest.mark.parametrize("name", ["dense_features.yaml", "dense_features_no2.yaml"])
def test_shipped_recipes_parse(name):
    from pathlib import Path
    recipe = dfeat.read_recipe(Path(dfeat.__file__).parent / "recipes" / name)
    assert recipe.pairs and all("map" in p for p in recipe.pairs) and recipe.steps > 0
