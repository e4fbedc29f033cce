"""Lower-precision exports (INT8 QDQ, FP16) and their parity gate, on CPU with onnxruntime; the
TensorRT build's planning and the engine manifest checks (plain Python). Building and running
engines needs TensorRT and a GPU: those tests are marked `gpu` and skipped without them."""
import importlib.util

import numpy as np
import pytest
import yaml

from skyfix.edge.embedders import tower_onnx
from skyfix.errors import SkyfixError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def int8_dir(tiny_onnx_dir, textured_canvas, tmp_path_factory):
    from skyfix.export.precision import export_precision
    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    export_precision(tiny_onnx_dir, out, "int8", textured_canvas, calib_n=32, eval_n=40, accept_loss=True,
                     log=lambda *_: None)
    return out


def _model(path):
    import onnx
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def qat_checkpoint(tiny_towers, tmp_path_factory):
    from skyfix.train.towers import save_checkpoint
    path = tmp_path_factory.mktemp("qat") / "tiny.pt"
    save_checkpoint(tiny_towers, path)
    return path


@pytest.fixture(scope="module")
def qat_dir(tiny_onnx_dir, qat_checkpoint, textured_canvas, tmp_path_factory):
    from skyfix.export.precision import export_precision
    out = tmp_path_factory.mktemp("int8-qat") / "tiny-int8-qat"
    export_precision(tiny_onnx_dir, out, "int8", textured_canvas, calib_n=32, eval_n=40, accept_loss=True,
                     log=lambda *_: None, qat_checkpoint=qat_checkpoint, qat_steps=10)
    return out


def test_towers_rebuilt_from_their_onnx_reproduce_it_and_a_wrong_file_is_refused(tiny_onnx_dir, tmp_path):
    """QAT from towers without a checkpoint (the shipped ones): torch towers rebuilt from the ONNX
    embed as it does; a model card that does not describe the file is refused, not half-loaded."""
    from skyfix.edge.embedders import read_model_card
    from skyfix.export.onnx_import import towers_from_onnx
    card = read_model_card(tiny_onnx_dir)
    model, cosine = towers_from_onnx(tiny_onnx_dir, card)
    assert cosine > 0.9999 and tower_onnx(tiny_onnx_dir, "drone").name == "towers.onnx"
    wrong = {**card, "model": {**card["model"], "lpn_parts": 1}}
    with pytest.raises(SkyfixError, match="projection"):
        towers_from_onnx(tiny_onnx_dir, wrong)


def test_qat_int8_starts_from_the_onnx_towers_without_a_checkpoint(tiny_onnx_dir, textured_canvas, tmp_path):
    from skyfix.export.precision import export_precision
    card = export_precision(tiny_onnx_dir, tmp_path / "int8", "int8", textured_canvas, calib_n=32, eval_n=40,
                            accept_loss=True, log=lambda *_: None, qat_checkpoint="", qat_steps=5)
    done = card["conversion"]["drone"]
    assert done["method"] == "qat" and done["from"].endswith("ONNX") and done["rebuilt_cosine"] > 0.9999
    assert [p.name for p in sorted((tmp_path / "int8").glob("*.onnx"))] == ["towers.onnx"]
    ops = [n.op_type for n in _model(tower_onnx(tmp_path / "int8", "sat")).graph.node]
    assert ops.count("QuantizeLinear") > 5


HAVE_MODELOPT = importlib.util.find_spec("modelopt") is not None


@pytest.fixture(scope="module")
def modelopt_dir(tiny_onnx_dir, textured_canvas, tmp_path_factory):
    if not HAVE_MODELOPT:
        pytest.skip("needs NVIDIA ModelOpt (installed in an environment of its own: it brings a CUDA torch)")
    from skyfix.export.precision import export_precision
    out = tmp_path_factory.mktemp("int8-modelopt") / "tiny-int8-modelopt"
    export_precision(tiny_onnx_dir, out, "int8", textured_canvas, calib_n=32, eval_n=40, accept_loss=True,
                     method="entropy", log=lambda *_: None, quantiser="modelopt")
    return out


@pytest.mark.skipif(HAVE_MODELOPT, reason="ModelOpt is installed here")
def test_the_modelopt_quantiser_without_modelopt_says_how_to_get_it(tiny_onnx_dir, textured_canvas, tmp_path):
    from skyfix.export.precision import export_precision
    with pytest.raises(SkyfixError, match="nvidia-modelopt"):
        export_precision(tiny_onnx_dir, tmp_path / "x", "int8", textured_canvas, calib_n=8, eval_n=20,
                         method="entropy", log=lambda *_: None, quantiser="modelopt")
    with pytest.raises(SkyfixError, match="post-training int8"):
        export_precision(tiny_onnx_dir, tmp_path / "y", "fp16", textured_canvas, calib_n=8, eval_n=20,
                         log=lambda *_: None, quantiser="modelopt")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("folder", ["int8_dir", "qat_dir", "modelopt_dir"])
def test_int8_export_is_symmetric_qdq_with_the_sensitive_layers_kept(folder, request):
    from onnx import numpy_helper

    from skyfix.export.precision import kept_fp32
    model = _model(tower_onnx(request.getfixturevalue(folder), "drone"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5
    # Constants as initializers (onnxruntime's quantiser) or Constant nodes (torch's export).
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert all(len(n.input) > 2 and n.input[2] in consts and n.input[1] in consts for n in qdq)  # constant scales
    zero_points = [consts[n.input[2]] for n in qdq]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # TensorRT: symmetric int8
    # The kept layers take no dequantised input: they run in higher precision.
    produced_by = {o: n for n in model.graph.node for o in n.output}
    kept = set(kept_fp32(model))
    stem = [n for n in model.graph.node if n.op_type == "Conv"][0]
    assert stem.name in kept and len(kept) > 2
    for node in (n for n in model.graph.node if n.name in kept):
        assert all(produced_by.get(i) is None or produced_by[i].op_type != "DequantizeLinear" for i in node.input)
    # Quantised weights are stored as INT8 behind their DequantizeLinear, never as FP32 behind a Q/DQ pair.
    assert sum(n.op_type == "DequantizeLinear" and consts.get(n.input[0], np.float32(0)).dtype == np.int8
               for n in qdq) >= 5
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in consts for n in qdq)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["precision"] == "int8" and meta["tower"] == "shared"  # the tiny towers share their weights


def test_int8_card_carries_the_parity_figures_and_runs_close_to_fp32(int8_dir, tiny_onnx_dir):
    from skyfix.edge.embedders import open_embedder, read_model_card
    card = read_model_card(int8_dir)
    gate = card["parity_gate"]
    assert card["precision"] == "int8" and card["model_id"] == read_model_card(tiny_onnx_dir)["model_id"]
    assert gate["views"] == 40 and 0 <= gate["onboard"]["top1_agreement"] <= 1
    assert gate["passed"] == (not gate["accepted_loss"])
    assert gate["cosine"]["median"] > 0.9  # quantisation noise, not a different model
    x = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    low, ref = open_embedder(int8_dir, "drone").embed(x), open_embedder(tiny_onnx_dir, "drone").embed(x)
    assert low.shape == ref.shape and np.allclose(np.linalg.norm(low, axis=1), 1, atol=1e-3)


def test_qat_card_says_how_and_keeps_the_source_model_id(qat_dir, tiny_onnx_dir):
    from skyfix.edge.embedders import read_model_card
    card = read_model_card(qat_dir)
    assert card["model_id"] == read_model_card(tiny_onnx_dir)["model_id"]
    assert card["conversion"]["drone"]["method"] == "qat" and card["conversion"]["drone"]["steps"] == 10
    assert card["parity_gate"]["cosine"]["median"] > 0.9


def test_qat_refuses_a_checkpoint_of_another_model(tiny_onnx_dir, textured_canvas, tmp_path):
    from skyfix.config import ModelConfig
    from skyfix.export.precision import export_precision
    from skyfix.train.towers import build_towers, save_checkpoint
    other = tmp_path / "other.pt"
    save_checkpoint(build_towers(ModelConfig(pretrained=True, input_px=96, dim=32, lpn_parts=2, seed=5)), other)
    with pytest.raises(SkyfixError, match="holds model"):
        export_precision(tiny_onnx_dir, tmp_path / "out", "int8", textured_canvas, calib_n=16, eval_n=20,
                         log=lambda *_: None, qat_checkpoint=other, qat_steps=1)
    assert not (tmp_path / "out").exists()


def test_qat_finetuning_brings_the_quantised_towers_closer_to_fp32(tiny_towers, textured_canvas):
    import copy

    from skyfix.export import qat
    from skyfix.export.precision import render_views
    model, reference = copy.deepcopy(tiny_towers).eval(), copy.deepcopy(tiny_towers).eval()
    views = render_views(textured_canvas, 96, 32, 20)[0]
    convs = qat.quantisable_convs(model)
    assert convs and all(c.groups == 1 for c in convs)
    qat.add_fake_quant(convs, qat.calibrate_activations(model, convs, views))
    losses = qat.finetune(model, reference, views, 30, lr=1e-4, log=lambda *_: None)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_folding_the_qat_weights_to_int8_changes_no_output(tiny_towers, textured_canvas, tmp_path):
    import copy
    import shutil

    import onnxruntime as ort

    from skyfix.export import qat
    from skyfix.export.onnx_export import _export_tower
    from skyfix.export.precision import render_views
    model = copy.deepcopy(tiny_towers).eval()
    convs = qat.quantisable_convs(model)
    qat.add_fake_quant(convs, qat.calibrate_activations(model, convs, render_views(textured_canvas, 96, 16, 4)[0]))
    qat.freeze_weight_scales(convs)
    fake, folded = tmp_path / "fake.onnx", tmp_path / "folded.onnx"
    _export_tower(model.tower("drone"), fake, 96, {})
    shutil.copy(fake, folded)
    assert qat.fold_weight_quantisation(folded) == len(convs)
    assert folded.stat().st_size < 0.6 * fake.stat().st_size
    x = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"images_rgb_u8": x})[0]
            for p in (fake, folded)]
    assert np.abs(outs[0] - outs[1]).max() < 1e-6


def test_fp16_export_keeps_io_types_and_passes_the_gate(tiny_onnx_dir, textured_canvas, tmp_path):
    import onnx

    from skyfix.export.precision import export_precision
    card = export_precision(tiny_onnx_dir, tmp_path / "fp16", "fp16", textured_canvas, calib_n=8, eval_n=40,
                            log=lambda *_: None)
    model = _model(tower_onnx(tmp_path / "fp16", "sat"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) > 10
    gate = card["parity_gate"]
    assert gate["passed"] and gate["cosine"]["min"] > 0.999


def test_an_export_that_fails_the_gate_is_refused_and_writes_nothing(tiny_onnx_dir, textured_canvas, tmp_path,
                                                                     monkeypatch):
    from skyfix.export import precision
    monkeypatch.setattr(precision, "MIN_TOP1_AGREEMENT", 1.01)  # a bar no export can pass
    with pytest.raises(SkyfixError, match="parity gate.*top-1 tile agreement"):
        precision.export_precision(tiny_onnx_dir, tmp_path / "fp16", "fp16", textured_canvas, calib_n=8,
                                   eval_n=40, log=lambda *_: None)
    assert not (tmp_path / "fp16").exists()


def test_gate_rules():
    from skyfix.export.precision import gate_failures
    ok = {"agreement": 0.99, "drop": 0.0}

    def report(onboard, both):
        return {"fp32": {"r1": 0.8}, **{case: {"r1": 0.8 - c["drop"], "r1_drop": c["drop"], "top1_agreement": c["agreement"]}
                                        for case, c in (("onboard", onboard), ("both", both))}}
    assert gate_failures(report(ok, ok)) == []
    assert "R@1" in gate_failures(report({"agreement": 0.99, "drop": 0.01}, ok))[0]
    assert "agreement" in gate_failures(report(ok, {"agreement": 0.9, "drop": 0.0}))[0]
    # Exactly 0.5 points (one view of 200) is not "more than": float noise must not fail it.
    exact = {"fp32": {"r1": 0.925}, **{c: {"r1": 0.920, "r1_drop": 0.925 - 0.920, "top1_agreement": 0.98}
                                       for c in ("onboard", "both")}}
    assert gate_failures(exact) == []
    exact["onboard"]["r1_drop"] = 0.925 - 0.915
    assert "R@1" in gate_failures(exact)[0]


def test_converting_a_lower_precision_model_again_is_refused(int8_dir, textured_canvas, tmp_path):
    from skyfix.export.precision import export_precision
    with pytest.raises(SkyfixError, match="already int8"):
        export_precision(int8_dir, tmp_path / "x", "fp16", textured_canvas, log=lambda *_: None)


# ---- TensorRT build planning and engine manifests (no TensorRT needed) ---------------------------
def test_plan_for_fp16_and_int8(tiny_onnx_dir, int8_dir):
    from skyfix.export.tensorrt_build import plan_build
    p = plan_build(tower_onnx(tiny_onnx_dir, "drone"), "fp16", max_batch=4)
    assert p.flags == ["FP16"] and p.onnx_precision == "fp32"
    assert p.profile == {"min": [1, 96, 96, 3], "opt": [1, 96, 96, 3], "max": [4, 96, 96, 3]}
    assert p.metadata["tower"] == "shared" and p.input_name == "images_rgb_u8"
    q = plan_build(tower_onnx(int8_dir, "drone"), "int8")
    assert q.flags == ["INT8", "FP16"] and q.onnx_precision == "int8"


def test_plan_refusals(tiny_onnx_dir, int8_dir, tmp_path):
    from skyfix.export.tensorrt_build import plan_build, platform_refusal
    with pytest.raises(SkyfixError, match="explicitly quantised"):
        plan_build(tower_onnx(tiny_onnx_dir, "drone"), "int8")
    with pytest.raises(SkyfixError, match="quantised"):
        plan_build(tower_onnx(int8_dir, "drone"), "fp16")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes((tower_onnx(tiny_onnx_dir, "drone")).read_bytes()[:5000])
    with pytest.raises(SkyfixError, match="not a valid ONNX"):
        plan_build(bad, "fp16")
    with pytest.raises(SkyfixError, match="precision"):
        plan_build(tower_onnx(tiny_onnx_dir, "drone"), "int4")
    assert "INT8" in platform_refusal("int8", fast_fp16=True, fast_int8=False)
    assert "FP16" in platform_refusal("fp16", fast_fp16=False, fast_int8=False)
    assert platform_refusal("int8", fast_fp16=True, fast_int8=True) is None


def test_engine_manifest_and_load_refusals(tiny_onnx_dir):
    from skyfix.edge.trt_embedder import engine_problems
    from skyfix.export.tensorrt_build import engine_manifest, plan_build
    here = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}
    m = engine_manifest(plan_build(tower_onnx(tiny_onnx_dir, "drone"), "fp16"), here, "ab" * 32, 12.0, None)
    assert m["model_id"] and m["tower"] == "shared" and len(m["onnx_sha256"]) == 64 and m["precision"] == "fp16"
    assert engine_problems(m, here, tower="drone", model_id=m["model_id"]) == []
    assert engine_problems(m, here, tower="sat", model_id=m["model_id"]) == []  # one engine, both shared towers
    other = engine_problems({**m, "tower": "drone"}, {**here, "tensorrt_version": "10.7.0"}, tower="sat",
                            model_id="other")
    assert len(other) == 3 and "TensorRT 10.3.0" in other[0] and "sat tower" in other[1] and "other" in other[2]
    assert "Orin" in engine_problems(m, {**here, "gpu_name": "RTX 4090", "compute_capability": "8.9"})[0]


def test_an_engine_folder_is_routed_to_tensorrt_and_refused_clearly_without_it(tiny_onnx_dir, tmp_path):
    from skyfix.edge.embedders import open_embedder
    from skyfix.edge.trt_embedder import is_engine, read_engine_manifest
    folder = tmp_path / "engine"
    folder.mkdir()
    (folder / "model.engine").write_bytes(b"not an engine")
    with pytest.raises(SkyfixError, match="engine.yaml not found"):
        read_engine_manifest(folder / "model.engine")
    (folder / "engine.yaml").write_text(yaml.safe_dump({"model_id": "x"}))
    assert is_engine(folder) and is_engine(folder / "model.engine")
    with pytest.raises(SkyfixError, match="not an engine manifest"):
        open_embedder(folder, "drone")


HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT and pycuda (a Jetson or a CUDA machine)")
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_builds_loads_and_matches_onnxruntime(precision, tiny_onnx_dir, int8_dir, tmp_path):
    from skyfix.edge.embedders import open_embedder
    from skyfix.export.tensorrt_build import export_trt
    src = tower_onnx(int8_dir if precision == "int8" else tiny_onnx_dir, "drone")
    out = export_trt(src, precision, tmp_path / "engine", max_batch=4, log=lambda *_: None)
    trt_emb, ref = open_embedder(out, "drone"), open_embedder(src, "drone")
    x = np.random.default_rng(0).integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)  # > max batch: chunked
    cos = np.sum(trt_emb.embed(x) * ref.embed(x), axis=1)
    assert trt_emb.model_id == ref.model_id and cos.min() > 0.99


# ---- the local-feature extractor as a TensorRT engine ------------------------------------------
def _dense_onnx():
    from skyfix.edge.features import SHIPPED_DENSE
    return SHIPPED_DENSE / "dense.onnx"


def test_a_feature_engine_is_planned_over_image_sizes_and_keeps_the_fp32_identity():
    from skyfix.edge.features import weights_identity
    from skyfix.export.tensorrt_build import plan_build
    p = plan_build(_dense_onnx(), "fp16", hw_px=(64, 320, 640))
    assert p.kind == "features" and p.flags == ["FP16"] and p.output_name == "descriptors,reliability"
    assert p.profile == {"min": [1, 64, 64, 3], "opt": [1, 320, 320, 3], "max": [1, 640, 640, 3]}
    assert p.metadata == {"extractor": "dense", "weights": weights_identity(_dense_onnx())[0]}
    with pytest.raises(SkyfixError, match="only --precision fp16"):
        plan_build(_dense_onnx(), "int8")
    with pytest.raises(SkyfixError, match="multiples of 32"):
        plan_build(_dense_onnx(), "fp16", hw_px=(64, 300, 640))
    with pytest.raises(SkyfixError, match="multiples of 32"):
        plan_build(_dense_onnx(), "fp16", hw_px=(640, 320, 1024))


def test_a_feature_engine_manifest_is_checked_for_what_the_caller_needs(tiny_onnx_dir, tmp_path):
    from skyfix.edge.features import open_extractor
    from skyfix.edge.trt_embedder import engine_problems, read_engine_manifest
    from skyfix.export.tensorrt_build import engine_manifest, plan_build
    here = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}
    folder = tmp_path / "dense-trt"
    folder.mkdir()
    (folder / "model.engine").write_bytes(b"not an engine")
    manifest = engine_manifest(plan_build(_dense_onnx(), "fp16"), here, "cd" * 32, 3.0, None)
    (folder / "engine.yaml").write_text(yaml.safe_dump(manifest))
    m = read_engine_manifest(folder)
    assert m["kind"] == "features" and m["extractor"] == "dense" and len(m["weights"]) == 16
    assert engine_problems(m, here, extractor="dense") == []
    assert "xfeat is configured" in engine_problems(m, here, extractor="xfeat")[0]
    assert "a tower engine is needed" in engine_problems(m, here, tower="drone")[0]
    tower = engine_manifest(plan_build(tower_onnx(tiny_onnx_dir, "drone"), "fp16"), here, "ab" * 32, 3.0, None)
    assert "a features engine is needed" in engine_problems(tower, here, extractor="dense")[0]
    del manifest["weights"]
    (folder / "engine.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(SkyfixError, match="weights"):
        read_engine_manifest(folder)
    if not HAVE_TRT:  # the folder is routed to TensorRT, which says what is missing
        (folder / "engine.yaml").write_text(yaml.safe_dump({**manifest, "weights": "0" * 16}))
        with pytest.raises(SkyfixError, match="tensorrt"):
            open_extractor("dense", folder)


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT and pycuda (a Jetson or a CUDA machine)")
def test_feature_engine_builds_and_finds_the_keypoints_onnxruntime_finds(tmp_path):
    from skyfix.edge.features import open_extractor
    from skyfix.export.tensorrt_build import export_trt
    out = export_trt(_dense_onnx(), "fp16", tmp_path / "engine", hw_px=(64, 256, 512), log=lambda *_: None)
    trt_ex, ref = open_extractor("dense", out), open_extractor("dense", _dense_onnx().parent)
    assert trt_ex.identity == ref.identity and trt_ex.backend == "tensorrt:fp16"
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)  # not the opt size
    a, b = trt_ex.extract(image, 500), ref.extract(image, 500)
    same = {tuple(p) for p in a.xy_px.round(1)} & {tuple(p) for p in b.xy_px.round(1)}
    assert len(same) >= 0.95 * len(b)
