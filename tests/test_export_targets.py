"""Export targets are a table of records: a throwaway target, registered as one record, is planned,
made, checked, reported and benchmarked with nothing else touched."""

from __future__ import annotations

import time

import onnxruntime as ort
import pytest

from fxbench.errors import BackendUnavailableError, ExportError
from fxbench.exporters import (
    TARGETS,
    Artifact,
    ExportContext,
    ExportOptions,
    ExportSubject,
    ExportTarget,
    device_targets,
    export_artifacts,
    parse_targets,
    preflight,
    register_target,
    target_file,
    target_files,
    target_names,
)
from fxbench.exporters.checks import verify
from fxbench.exporters.onnx import OnnxRunner
from fxbench.numerics import Tolerance, compare
from fxbench.runtime.backends import create_session, folder_backends, parse_backends
from fxbench.jobs import ExportRequest, export, run_benchmark
from fxbench.runtime.bench import Shape
from fxbench.runtime.harness import Measure, Warmup


def _make_basic(c: ExportContext) -> Artifact:
    """ONNX Runtime's basic-level offline optimization of model.onnx, saved by ORT to the target's
    file and checked in ORT against eager like every artifact."""
    start = time.perf_counter()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(c.path)
    ort.InferenceSession(str(c.source()), sess_options=options, providers=["CPUExecutionProvider"])
    parity = verify(OnnxRunner(c.path, ["CPUExecutionProvider"]), c.checks, c.subject, f"{c.path.name} in ONNX Runtime")
    return c.subject.artifact("onnx", c.path, "any", parity, {"source": c.source().name, "level": "basic"}, started=start)


def _cpu_only(options: ExportOptions) -> None:
    if options.device != "cpu":
        raise BackendUnavailableError("--to onnx-basic is made for the CPU only")


BASIC = ExportTarget("onnx-basic", "ONNX Runtime's basic offline optimization", {"any": ("model.basic.onnx",)}, _make_basic,
                     needs_onnx=True, devices=("cpu",), preflight=_cpu_only, kind="onnx")


@pytest.fixture
def basic():
    register_target(BASIC)
    try:
        yield BASIC
    finally:
        TARGETS.pop(BASIC.name)


def test_a_registered_target_is_planned_like_the_built_in_ones(basic):
    assert target_names()[-1] == "onnx-basic" and target_file("onnx-basic", "cuda") == "model.basic.onnx"
    assert parse_targets("onnx-basic,aoti") == ("aoti", "onnx-basic")
    # It builds on model.onnx, so that is among the files it would write (what `export` checks before overwriting).
    assert target_files(["onnx-basic"]) == ["model.onnx", "model.onnx.data", "model.basic.onnx"]
    assert "onnx-basic" in device_targets(ExportOptions(device="cpu"))
    assert "onnx-basic" not in device_targets(ExportOptions(device="cuda"))
    blocked = preflight(["onnx-basic"], ExportOptions(device="cuda"))
    assert str(blocked["onnx-basic"]) == "--to onnx-basic is made for the CPU only"
    with pytest.raises(ValueError, match="already registered"):
        register_target(BASIC)


def test_records_are_checked_when_they_are_made():
    with pytest.raises(ValueError, match="kind 'coreml' is not one of"):
        ExportTarget("coreml", "Core ML", {"any": ("model.mlpackage",)}, _make_basic)
    with pytest.raises(ValueError, match="files must map cpu, cuda or any"):
        ExportTarget("onnx-tpu", "ONNX for a TPU", {"tpu": ("model.tpu.onnx",)}, _make_basic, kind="onnx")
    with pytest.raises(ValueError, match="kebab case"):
        ExportTarget("ONNX_Basic", "bad name", {"any": ("x.onnx",)}, _make_basic, kind="onnx")
    with pytest.raises(ExportError, match="unknown export target 'onnx-basic'"):
        target_file("onnx-basic")


def test_a_registered_target_is_made_on_its_onnx_source_checked_and_found_by_the_bench_lookup(basic, captured, tmp_path):
    cp = captured("bert")
    made = export_artifacts(ExportSubject(cp.exported, cp, cp.output_names), ["onnx-basic"], tmp_path)
    assert not made.failures, made.failures
    assert [(a.kind, a.file) for a in made.artifacts] == [("onnx", "model.onnx"), ("onnx", "model.basic.onnx")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.basic.onnx", "model.onnx"]
    basic_art = made.artifacts[1]
    assert set(basic_art.parity) == {"sample", "batch3_seq40"} and basic_art.details == {"source": "model.onnx", "level": "basic"}
    # The bench backends find its file by its kind (an output folder) and by name (NAME@FILE).
    assert "ort@model.basic.onnx" in [b.label for b in folder_backends(tmp_path, made.artifacts, "cpu")]
    (backend,) = parse_backends(["ort@model.basic.onnx"], device="cpu", folder=tmp_path, artifacts=made.artifacts)
    assert backend.artifact == tmp_path / "model.basic.onnx"
    session = create_session(backend, cp, device="cpu", threads=1)
    try:
        inputs = cp.make_inputs(2, 24, seed=7).tensors
        assert Tolerance.for_precision("fp32").accepts(compare(session.run(inputs), cp.run_eager(inputs), cp.output_names))
    finally:
        session.close()


def test_a_registered_target_that_fails_leaves_no_file_and_is_reported(captured, tmp_path):
    def wrong(c: ExportContext) -> Artifact:
        c.path.write_bytes(b"not a program")
        raise ExportError(f"{c.path.name} is not a program")

    register_target(ExportTarget("program-broken", "always fails", {"any": ("model.broken.pt2",)}, wrong, kind="program"))
    try:
        cp = captured("bert")
        made = export_artifacts(ExportSubject(cp.exported, cp, cp.output_names), ["program-broken"], tmp_path)
    finally:
        TARGETS.pop("program-broken")
    assert made.artifacts == ()
    assert [(f.target, f.error, f.error_type) for f in made.failures] == [("program-broken", "model.broken.pt2 is not a program", "ExportError")]
    assert list(tmp_path.iterdir()) == []


def test_the_export_job_and_bench_take_a_registered_target_end_to_end(basic, tiny_dir, tmp_path):
    out = tmp_path / "out"
    result = export(ExportRequest(source=str(tiny_dir("bert")), targets=("onnx-basic",), output=out))
    assert [a.file for a in result.report.artifacts] == ["model.onnx", "model.basic.onnx"]
    bench = run_benchmark(out, None, [Shape(1, 8)], threads=1, warmup=Warmup(iters=1, seconds=0.0), measure=Measure(iters=3))
    assert {b.label: b.status for b in bench.backends} == {"eager": "ok", "ort@model.onnx": "ok", "ort@model.basic.onnx": "ok"}
    assert all(m.parity.passed for m in bench.measurements)
