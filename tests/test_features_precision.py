"""FP16 local features (`skyfix export fp16 --model FEATURES_DIR`): the copy keeps its source's
identity, passes the matching parity gate on real imagery, and the gate refuses a damaged copy."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from skyfix.artifacts import file_digest
from skyfix.edge.features import SHIPPED_DENSE, open_extractor
from skyfix.errors import SkyfixError
from skyfix.export.features_precision import (export_features_fp16, features_gate_failures, features_parity,
                                              load_canvases, losses_p_value)
from conftest import SHARED, need_shared

LEVIR_A3 = SHARED / "levircd" / "A" / "test_3.png"


def _feature_dir(name, request):
    return request.getfixturevalue("xfeat_dir") if name == "xfeat" else SHIPPED_DENSE


@pytest.mark.parametrize("name", ["xfeat", "dense"])
def test_fp16_features_keep_their_identity_and_pass_the_gate(name, request, tmp_path):
    src = _feature_dir(name, request)
    ortho = need_shared(LEVIR_A3)
    card = export_features_fp16(src, tmp_path / "fp16", ortho, source_gsd_m=0.5, pairs=12, log=lambda *_: None)
    gate = card["parity_gate"]
    assert card["precision"] == "fp16" and gate["passed"]
    assert gate["keypoints"]["found_again"] >= 0.98 and gate["keypoints"]["cosine_median"] > 0.999
    model = onnx.load(str(tmp_path / "fp16" / f"{name}.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.UINT8]
    low, ref = open_extractor(name, tmp_path / "fp16"), open_extractor(name, src)
    assert low.identity == ref.identity and low.precision == "fp16" and ref.precision == "fp32"


def test_a_copy_its_card_does_not_describe_is_refused(xfeat_dir, tmp_path):
    copy = tmp_path / "xfeat"
    shutil.copytree(xfeat_dir, copy)
    card = yaml.safe_load((copy / "features.yaml").read_text())
    card.update(precision="fp16", source_sha256=card["file"]["sha256"])  # describes the file as it was
    (copy / "features.yaml").write_text(yaml.safe_dump(card))
    assert open_extractor("xfeat", copy).precision == "fp16"
    model = onnx.load(str(copy / "xfeat.onnx"))
    model.doc_string = "changed after export"
    onnx.save(model, str(copy / "xfeat.onnx"))
    with pytest.raises(SkyfixError, match="export it again"):
        open_extractor("xfeat", copy)


def _damaged_copy(src, out, relative_noise: float):
    """src's weights with multiplicative noise, carded as an FP16 copy of src."""
    out.mkdir()
    model = onnx.load(str(src / "xfeat.onnx"))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim == 4:
            noisy = w * (1 + relative_noise * rng.standard_normal(w.shape))
            init.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))
    onnx.save(model, str(out / "xfeat.onnx"))
    card = yaml.safe_load((src / "features.yaml").read_text())
    card.update(precision="fp16", source_sha256=file_digest(src / "xfeat.onnx")["sha256"],
                file=file_digest(out / "xfeat.onnx"))
    (out / "features.yaml").write_text(yaml.safe_dump(card))
    return out


def test_the_gate_refuses_a_copy_that_moves_the_keypoints(xfeat_dir, tmp_path):
    damaged = _damaged_copy(xfeat_dir, tmp_path / "damaged", relative_noise=0.02)
    map_canvas, frames = load_canvases(need_shared(LEVIR_A3), source_gsd_m=0.5)
    report = features_parity(open_extractor("xfeat", xfeat_dir), open_extractor("xfeat", damaged),
                             map_canvas, frames, pairs=6)
    assert report["keypoints"]["found_again"] < 0.98
    assert any(f.startswith("keypoints found again") for f in features_gate_failures(report))


def _report(success_drop, lost, gained, agreement, noise_agreement=0.8, found_again=0.99):
    case = {"success": 0.5 - success_drop, "success_drop": success_drop, "agreement": agreement,
            "inliers_median": 12.0, "lost": lost, "gained": gained, "losses_p": losses_p_value(lost, gained)}
    return {"pairs": 100, "fp32": {"success": 0.5, "inliers_median": 12.0},
            "keypoints": {"found_again": found_again}, "onboard": case, "both": case,
            "noise": {**case, "agreement": noise_agreement}}


def test_the_gate_counts_a_success_drop_only_when_it_is_not_chance():
    assert losses_p_value(0, 0) == 1.0 and losses_p_value(5, 0) == pytest.approx(1 / 32)
    assert losses_p_value(6, 5) == pytest.approx(0.5)
    assert features_gate_failures(_report(0.01, lost=6, gained=5, agreement=0.89)) == []  # chance, above the floor
    dropped = features_gate_failures(_report(0.10, lost=12, gained=2, agreement=0.86))
    assert any("match success" in f for f in dropped)
    unstable = features_gate_failures(_report(0.0, lost=10, gained=10, agreement=0.80, noise_agreement=0.9))
    assert any("verdicts agree" in f for f in unstable) and not any("match success" in f for f in unstable)
