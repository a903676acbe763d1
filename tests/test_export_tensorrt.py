"""TensorRT: profiles from the exported ONNX, --shapes, the precision plan for 10.x and 11.x, the sidecar and
engine compatibility; the build itself runs only where tensorrt and a GPU are."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest
import torch

from fxbench.errors import BackendUnavailableError, ExportError
from fxbench.exporters import ExportSubject, export_artifacts
from fxbench.exporters.tensorrt import (
    EngineHost,
    EngineMismatchError,
    OnnxInput,
    ShapeRange,
    TensorRTCapabilities,
    build_profile,
    default_dim_ranges,
    default_timing_cache,
    engine_compatibility,
    onnx_inputs,
    parse_shapes,
    plan_precision,
    require_compatible_engine,
    require_tensorrt,
    sidecar_record,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
NO_ENGINE_BUILD = "needs the tensorrt package and an NVIDIA GPU (neither is on this machine)"


@pytest.fixture(scope="module")
def bert_onnx(captured, tmp_path_factory):
    """Tiny BERT's model.onnx as the exporter writes it: the file TensorRT parses."""
    cp = captured("bert")
    folder = tmp_path_factory.mktemp("trt_onnx")
    made = export_artifacts(ExportSubject(cp.exported, cp, cp.output_names), ["onnx"], folder)
    assert not made.failures, made.failures
    return cp, folder / "model.onnx"


def test_parse_shapes_forms():
    assert parse_shapes(None) == {} and parse_shapes("  ") == {}
    ranges = parse_shapes("input_ids:1x16,8x128,32x512; attention_mask:4x64")
    assert ranges["input_ids"] == ShapeRange((1, 16), (8, 128), (32, 512))
    assert ranges["attention_mask"] == ShapeRange((4, 64), (4, 64), (4, 64))  # one shape: fixed
    assert ranges["input_ids"].contains((3, 40)) and not ranges["input_ids"].contains((3, 600))


@pytest.mark.parametrize("text, message", [
    ("input_ids", "bad --shapes entry 'input_ids'"),
    ("input_ids:1x16,8x128", "bad --shapes entry"),
    ("input_ids:1x16,8xa,32x512", "bad --shapes entry"),
    (":1x16", "bad --shapes entry"),
    ("input_ids:1x16,8x128,4x512", "min <= opt <= max"),
    ("input_ids:0x16", "0 < min"),
    ("input_ids:1x16,8x128,32x512x1", "differ in rank"),
    ("input_ids:1x16 input_ids:2x16", "given twice"),
])
def test_bad_shapes_are_one_line_errors(text, message):
    with pytest.raises(ExportError, match=message) as info:
        parse_shapes(text)
    assert "\n" not in str(info.value)


def test_profile_defaults_come_from_the_captured_dims(bert_onnx):
    cp, path = bert_onnx
    inputs = onnx_inputs(path)
    assert [(i.name, i.dims, i.dtype) for i in inputs] == [(n, ("batch", "seq"), "int64") for n in cp.input_names]
    ranges = default_dim_ranges(cp.dynamic_shapes)
    batch, seq = cp.dynamic_shapes["input_ids"][0], cp.dynamic_shapes["input_ids"][1]
    assert ranges["batch"][::2] == (batch.min, batch.max) and ranges["seq"][::2] == (seq.min, seq.max)
    for lo, opt, hi in ranges.values():
        assert lo <= opt <= hi and opt & (opt - 1) == 0  # a power of two inside the range
    profile = build_profile(inputs, ranges)
    assert set(profile) == set(cp.input_names)
    for shape in profile.values():
        assert shape.min == (batch.min, seq.min) and shape.max == (batch.max, seq.max)
        assert shape.contains(tuple(cp.inputs.tensors["input_ids"].shape))


def test_shapes_for_one_input_size_every_input_that_shares_its_dims(bert_onnx):
    cp, path = bert_onnx
    profile = build_profile(onnx_inputs(path), default_dim_ranges(cp.dynamic_shapes), parse_shapes("input_ids:1x16,8x64,32x128"))
    assert {name: r.text() for name, r in profile.items()} == {name: "1x16,8x64,32x128" for name in cp.input_names}


@pytest.mark.parametrize("shapes, message", [
    ("input_ids:1x16,8x64,32x4096", "outside the captured range"),
    ("input_ids:1x16x1,8x64x1,32x128x1", "3 axes given, the input has 2"),
    ("input_ids:1x16,8x64,32x128;attention_mask:1x16,4x64,32x128", "batch is (1, 8, 32) for input_ids but (1, 4, 32)"),
    ("pixel_values:1x3x32x32", "does not take"),
])
def test_profile_errors_name_the_input_and_axis(bert_onnx, shapes, message):
    cp, path = bert_onnx
    with pytest.raises(ExportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_profile(onnx_inputs(path), default_dim_ranges(cp.dynamic_shapes), parse_shapes(shapes))


def test_profile_refuses_a_changed_fixed_axis_and_an_unknown_dynamic_one():
    vit = [OnnxInput("pixel_values", ("batch", 3, 32, 32), "float")]
    with pytest.raises(ExportError, match="axis 2 is fixed at 32"):
        build_profile(vit, {"batch": (1, 8, 64)}, parse_shapes("pixel_values:1x3x64x64,8x3x64x64,64x3x64x64"))
    assert build_profile(vit, {"batch": (1, 8, 64)})["pixel_values"].text() == "1x3x32x32,8x3x32x32,64x3x32x32"
    with pytest.raises(ExportError, match=r"axis 1 \(s12\) is dynamic with no known range"):
        build_profile([OnnxInput("x", ("batch", "s12"), "float")], {"batch": (1, 8, 64)})


TRT10 = TensorRTCapabilities(
    "10.7.0", frozenset({"FP16", "BF16", "INT8", "FP8", "TF32", "STRIP_PLAN", "REFIT"}), frozenset({"EXPLICIT_BATCH", "STRONGLY_TYPED"})
)
TRT11 = TensorRTCapabilities("11.0.0", frozenset({"STRIP_PLAN", "REFIT", "TF32"}), frozenset({"STRONGLY_TYPED"}))


@pytest.mark.parametrize("caps, graph, requested, strongly, flags, cleared", [
    (TRT10, "fp32", None, False, (), ("TF32",)),
    (TRT10, "fp16", None, True, (), ()),
    (TRT10, "int8", None, True, (), ()),
    (TRT10, "fp32", "fp16", False, ("FP16",), ()),
    (TRT10, "fp32", "bf16", False, ("BF16",), ()),
    (TRT11, "fp32", None, False, (), ("TF32",)),
    (TRT11, "fp16", None, True, (), ()),
    (TRT11, "int8", "int8", True, (), ()),
])
def test_precision_plan(caps, graph, requested, strongly, flags, cleared):
    plan = plan_precision(caps, graph, requested)
    assert (plan.precision, plan.strongly_typed, plan.builder_flags, plan.clear_flags) == (requested or graph, strongly, flags, cleared)


@pytest.mark.parametrize("caps, graph, requested, message", [
    (TRT11, "fp32", "fp16", "TensorRT 11.0.0 builds strongly typed networks only"),
    (TRT10, "fp32", "int8", "needs quantize/dequantize nodes"),
    (TRT10, "fp16", "fp8", "needs quantize/dequantize nodes"),
])
def test_precision_plan_refusals(caps, graph, requested, message):
    with pytest.raises(ExportError, match=message):
        plan_precision(caps, graph, requested)


def _fake_engine(bert_onnx, folder, host: EngineHost):
    """A sidecar written by the real record function around a stand-in engine file (no TensorRT here)."""
    cp, onnx_path = bert_onnx
    engine = folder / "model.engine"
    engine.write_bytes(b"not a real plan; the sidecar is what is under test")
    profile = build_profile(onnx_inputs(onnx_path), default_dim_ranges(cp.dynamic_shapes))
    record = sidecar_record(engine=engine, onnx_path=onnx_path, host=host, profile=profile,
                            plan=plan_precision(TRT10, "fp16"), workspace_bytes=2**30,
                            timing_cache={"path": "/tmp/x.cache", "reused_bytes": 0, "saved_bytes": 10}, outputs=cp.output_names)
    (folder / "model.engine.json").write_text(json.dumps(record))
    return engine, record, profile


H100 = EngineHost("10.7.0.23", "NVIDIA H100 80GB HBM3", "9.0")


def test_sidecar_records_versions_gpu_profiles_and_the_onnx_hash(bert_onnx, tmp_path):
    cp, onnx_path = bert_onnx
    engine, record, profile = _fake_engine(bert_onnx, tmp_path, H100)
    assert record["tensorrt_version"] == "10.7.0.23"
    assert record["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert (record["gpu_name"], record["compute_capability"]) == ("NVIDIA H100 80GB HBM3", "9.0")
    assert record["onnx"]["file"] == "model.onnx"
    assert record["onnx"]["sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert record["engine"]["sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert record["profiles"] == [{name: r.to_dict() for name, r in profile.items()}]
    assert (record["precision"], record["strongly_typed"]) == ("fp16", True)
    assert record["inputs"] == list(cp.input_names) and record["outputs"] == list(cp.output_names)


def test_engine_compatibility_names_the_mismatch(bert_onnx, tmp_path):
    engine, _, _ = _fake_engine(bert_onnx, tmp_path, H100)
    assert require_compatible_engine(engine, H100)["gpu"]["compute_capability"] == "9.0"
    # Another build of the same release: loads, with a warning.
    verdict = engine_compatibility(tmp_path / "model.engine.json", EngineHost("10.7.0.24", H100.gpu_name, "9.0"))
    assert verdict.ok and "build 10.7.0.24" in verdict.warnings[0]
    # Another GPU model of the same compute capability: loads, kernels were timed elsewhere.
    verdict = engine_compatibility(tmp_path / "model.engine.json", EngineHost("10.7.0.23", "NVIDIA H100 PCIe", "9.0"))
    assert verdict.ok and "NVIDIA H100 PCIe" in verdict.warnings[0]
    with pytest.raises(EngineMismatchError, match="built with TensorRT 10.7.0.23, this machine has 10.8.0") as info:
        require_compatible_engine(engine, EngineHost("10.8.0", H100.gpu_name, "9.0"))
    assert "\n" not in str(info.value) and "--to tensorrt --force" in str(info.value)
    with pytest.raises(EngineMismatchError, match=r"compute capability 9.0\), this GPU is NVIDIA A100.*\(8.0\)"):
        require_compatible_engine(engine, EngineHost("10.7.0.23", "NVIDIA A100-SXM4-80GB", "8.0"))
    # This machine as it is.
    here = EngineHost.current()
    verdict = engine_compatibility(tmp_path / "model.engine.json")
    assert verdict.ok == (here.tensorrt_version is not None and here.compute_capability == "9.0"
                          and here.tensorrt_version.split(".")[:3] == ["10", "7", "0"])
    (tmp_path / "model.engine.json").unlink()
    with pytest.raises(EngineMismatchError, match="has no model.engine.json"):
        require_compatible_engine(engine, H100)


def test_timing_cache_is_kept_per_release_and_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_timing_cache(H100) == tmp_path / "fxbench" / "tensorrt" / "timing-trt10.7.0.23-sm90.cache"
    assert default_timing_cache(EngineHost("10.7.0.23", "NVIDIA L4", "8.9")) != default_timing_cache(H100)


@pytest.mark.skipif(HAS_TENSORRT and torch.cuda.is_available(), reason="this machine can build engines")
def test_without_tensorrt_or_gpu_the_target_says_so_and_does_no_work(captured, tmp_path):
    with pytest.raises(BackendUnavailableError) as info:
        require_tensorrt()
    expected = "pip install 'fxbench[tensorrt]'" if not HAS_TENSORRT else "needs an NVIDIA GPU"
    assert expected in str(info.value) and "\n" not in str(info.value)
    cp = captured("bert")
    made = export_artifacts(ExportSubject(cp.exported, cp, cp.output_names), ["tensorrt"], tmp_path)
    assert made.artifacts == () and [f.target for f in made.failures] == ["tensorrt"]
    assert list(tmp_path.iterdir()) == []  # model.onnx was not even exported
    assert isinstance(made.error(), BackendUnavailableError)


@pytest.mark.tensorrt
@pytest.mark.skipif(not (HAS_TENSORRT and torch.cuda.is_available()), reason=NO_ENGINE_BUILD)
def test_engine_builds_matches_eager_and_reuses_the_timing_cache(captured, tmp_path):
    cp = captured("bert")
    subject = ExportSubject(cp.exported, cp, cp.output_names)
    from fxbench.exporters.export import ExportOptions

    options = ExportOptions(shapes="input_ids:1x16,4x40,8x64", timing_cache=tmp_path / "timing.cache")
    first = export_artifacts(subject, ["tensorrt"], tmp_path / "a", options)
    assert not first.failures, first.failures
    engine = next(a for a in first.artifacts if a.kind == "tensorrt")
    assert set(engine.parity) == {"sample", "batch3_seq40"}
    record = require_compatible_engine(tmp_path / "a" / "model.engine")
    assert record["profiles"][0]["input_ids"] == {"min": [1, 16], "opt": [4, 40], "max": [8, 64]}
    second = export_artifacts(subject, ["tensorrt"], tmp_path / "b", options, onnx_path=tmp_path / "a" / "model.onnx")
    assert next(a for a in second.artifacts if a.kind == "tensorrt").details["timing_cache"]["reused_bytes"] > 0
