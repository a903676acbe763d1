"""Every backend session against eager PyTorch on a tiny model; skip reasons; artifact errors; an
output folder benchmarked artifact by artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fxbench.errors import ArtifactMissingError, BackendUnavailableError, UnknownBackendError
from fxbench.exporters import Artifact, save_program
from fxbench.numerics import Tolerance, compare
from fxbench.jobs import OptimizeRequest, optimize, run_benchmark
from fxbench.runtime.backends import Backend, create_session, folder_backends, parse_backends
from fxbench.runtime.bench import Shape, best_artifact
from fxbench.runtime.harness import Measure, Warmup

QUICK = dict(warmup=Warmup(iters=1, seconds=0.0), measure=Measure(iters=3))
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU reports")


@pytest.fixture(scope="module")
def artifacts(captured, tmp_path_factory) -> Path:
    """model.pt2, model.onnx (a plain torch.onnx export) and model.aoti.pt2 (the suite's one AOTInductor compile)
    of the tiny BERT capture."""
    folder = tmp_path_factory.mktemp("artifacts")
    program = captured("bert").exported
    save_program(program, folder / "model.pt2")
    torch.onnx.export(program, dynamo=True, f=str(folder / "model.onnx"))
    torch._inductor.aoti_compile_and_package(program, package_path=str(folder / "model.aoti.pt2"))
    return folder


CPU_BACKENDS = ["eager", "eager-bf16", "program", "program@model.pt2", "compile", "ort@model.onnx", "aoti@model.aoti.pt2"]


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_every_cpu_session_matches_eager_at_a_new_shape(captured, artifacts, name):
    cap = captured("bert")
    (backend,) = parse_backends([name], device="cpu", folder=artifacts)
    session = create_session(backend, cap, device="cpu", threads=1)
    try:
        inputs = cap.make_inputs(3, 24, seed=5).tensors  # a shape the capture never saw
        outs = session.run(inputs)
        assert session.output_names == cap.output_names and len(outs) == len(cap.output_names)
        assert all(o.device.type == "cpu" and o.dtype == torch.float32 for o in outs)
        parity = compare(outs, cap.run_eager(inputs), cap.output_names)
        tolerance = Tolerance.for_precision(backend.effective_precision)
        assert tolerance.accepts(parity), f"{name}: {parity.brief()}"
        if backend.effective_precision == "fp32":
            assert parity.max_abs_error < 1e-4
        else:
            assert parity.max_abs_error > 0  # bf16 really ran in bf16
        # A second bind at another shape reuses the loaded session.
        again = session.run(cap.make_inputs(1, 8).tensors)
        assert again[0].shape[:2] == (1, 8)
    finally:
        session.close()


def test_ort_session_uses_the_thread_count(captured, artifacts):
    (backend,) = parse_backends(["ort"], device="cpu", folder=artifacts)
    assert backend.artifact == artifacts / "model.onnx" and backend.label == "ort@model.onnx"
    session = create_session(backend, captured("bert"), device="cpu", threads=1)
    assert session.session.get_session_options().intra_op_num_threads == 1
    session.close()


@no_gpu
@pytest.mark.parametrize("name", ["ort-cuda@model.onnx", "ort-cuda-graph@model.onnx", "ort-trt@model.onnx", "eager-fp16", "tensorrt@model.engine"])
def test_gpu_backends_are_skipped_here_with_the_reason(captured, artifacts, tmp_path, name):
    folder = artifacts
    if name.startswith("tensorrt"):
        folder = tmp_path
        (folder / "model.engine").write_bytes(b"not an engine")
        (folder / "model.engine.json").write_text(json.dumps({"tensorrt_version": "10.9.0", "gpu_name": "NVIDIA H100"}))
    (backend,) = parse_backends([name], device="cpu", folder=folder)
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        create_session(backend, captured("bert"), device="cpu", threads=1)
    # The device-agnostic backends report the same when asked to run on a GPU.
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        create_session(Backend("compile"), captured("bert"), device="cuda", threads=1)


def test_missing_artifacts_and_unknown_names_are_clear_errors(artifacts, tmp_path):
    with pytest.raises(ArtifactMissingError, match="no artifact file at"):
        parse_backends(["ort@nope.onnx"], device="cpu")
    with pytest.raises(ArtifactMissingError, match="name the file as aoti@FILE"):
        parse_backends(["aoti"], device="cpu")
    with pytest.raises(ArtifactMissingError, match="has no model.aoti.pt2"):
        parse_backends(["aoti"], device="cpu", folder=tmp_path)
    shutil.copy(artifacts / "model.onnx", tmp_path / "model.engine")
    with pytest.raises(ArtifactMissingError, match="model.engine.json is missing"):
        parse_backends(["tensorrt@model.engine"], device="cuda", folder=tmp_path)
    with pytest.raises(UnknownBackendError, match="unknown backend 'onnxruntime'"):
        parse_backends(["onnxruntime"], device="cpu")
    with pytest.raises(UnknownBackendError, match="listed twice"):
        parse_backends(["eager", "eager"], device="cpu")


def test_folder_backends_run_each_artifact_on_its_device(artifacts):
    def art(kind: str, file: str, device: str) -> Artifact:
        return Artifact(kind=kind, file=file, device=device, precision="fp32", input_names=(), output_names=())

    listed = [art("program", "model.pt2", "any"), art("onnx", "model.onnx", "any"), art("aoti", "model.aoti.pt2", "cpu"),
              art("tensorrt", "model.engine", "cuda")]
    cpu = {b.label: b.skip for b in folder_backends(artifacts, listed, "cpu")}
    assert cpu == {"eager": None, "program@model.pt2": None, "ort@model.onnx": None, "aoti@model.aoti.pt2": None,
                   "tensorrt@model.engine": "model.engine is built for cuda; bench with --device cuda",
                   "tensorrt-graph@model.engine": "model.engine is built for cuda; bench with --device cuda"}
    cuda = [b.label for b in folder_backends(artifacts, listed[:2], "cuda")]
    assert cuda == ["eager", "program@model.pt2", "ort-cuda@model.onnx", "ort-cuda-graph@model.onnx", "ort-trt@model.onnx"]


def test_bench_an_output_folder_artifact_by_artifact(tiny_dir, artifacts, tmp_path):
    out = tmp_path / "out"
    optimize(OptimizeRequest(model=str(tiny_dir("bert")), output=out, targets=(), bench=False))
    report = json.loads((out / "report.json").read_text())
    for path in [*artifacts.glob("model.onnx*"), artifacts / "model.aoti.pt2"]:  # model.onnx.data: external weights
        shutil.copy(path, out / path.name)
    records = [
        Artifact(kind="onnx", file="model.onnx", device="any", precision="fp32", input_names=(), output_names=()),
        Artifact(kind="aoti", file="model.aoti.pt2", device="cpu", precision="fp32", input_names=(), output_names=()),
        Artifact(kind="tensorrt", file="model.engine", device="cuda", precision="fp16", input_names=(), output_names=()),
    ]
    report["artifacts"] += [a.to_dict() for a in records]
    (out / "report.json").write_text(json.dumps(report))

    events: list[tuple[str, str, str]] = []
    result = run_benchmark(out, None, [Shape(1, 8), Shape(2, 16)], threads=1, events=lambda *e: events.append(e), **QUICK)
    status = {b.label: b.status for b in result.backends}
    assert status ==  {"eager": "ok", "program@model.pt2": "ok", "ort@model.onnx": "ok", "aoti@model.aoti.pt2": "ok",
                      "tensorrt@model.engine": "skipped", "tensorrt-graph@model.engine": "skipped"}
    assert len(result.measurements) == 4 * 2
    assert all(m.status == "ok" and m.parity.passed and m.parity.agreement.value > 0.9999 for m in result.measurements)
    assert result.source == {"kind": "folder", "folder": str(out), "artifacts": ["model.pt2", "model.onnx", "model.aoti.pt2", "model.engine"]}
    choice = best_artifact(result, min_cosine=0.9999)
    assert choice is not None and choice.artifact is not None and choice.backend != "eager"
    fastest = min((b.label for b in result.backends if b.artifact and b.status == "ok"),
                  key=lambda label: sum(torch.log(torch.tensor(result.measurement(label, s).latency.median_ms)).item() for s in result.shapes))
    assert choice.backend == fastest
    assert best_artifact(result, min_cosine=1.1) is None  # nothing is better than perfect

    # A listed artifact whose file is gone is a clear error, before any model is loaded.
    report["artifacts"].append(Artifact(kind="onnx-ort", file="model.ort.onnx", device="cpu", precision="fp32",
                                        input_names=(), output_names=()).to_dict())
    (out / "report.json").write_text(json.dumps(report))
    events.clear()
    with pytest.raises(ArtifactMissingError, match="model.ort.onnx"):
        run_benchmark(out, None, [Shape(1, 8)], events=lambda *e: events.append(e), **QUICK)
    assert events == []
