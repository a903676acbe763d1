"""The benchmark orchestration: a sweep over batch and sequence, parity before timing, failures
that stay local, speedups and the best-artifact pick."""

from __future__ import annotations

import math

import pytest
import torch

from fxbench.errors import UnknownBackendError
from fxbench.jobs import run_benchmark
from fxbench.reports import rows
from fxbench.runtime.backends import BACKENDS, Backend, BackendSpec, parse_backends, register_backend, unique_labels
from fxbench.runtime.bench import BackendRecord, BenchResult, Measurement, ParityRecord, Shape, best_artifact, shapes_from
from fxbench.runtime.harness import LatencyStats, Measure, Warmup
from fxbench.runtime.sessions.base import Bound, Session

QUICK = dict(warmup=Warmup(iters=1, seconds=0.0), measure=Measure(iters=4), threads=1)


THREADS_BEFORE = torch.get_num_threads()


@pytest.fixture(scope="module")
def sweep(captured) -> BenchResult:
    return run_benchmark(captured("bert"), ["eager", "eager-bf16", "program"], shapes_from([1, 2], [8, 16]), **QUICK)


def test_sweep_measures_every_backend_at_every_shape(sweep):
    assert [s.label for s in sweep.shapes] == ["b1 s8", "b1 s16", "b2 s8", "b2 s16"]
    assert [(b.label, b.status, b.precision) for b in sweep.backends] == [("eager", "ok", "fp32"), ("eager-bf16", "ok", "bf16"), ("program", "ok", "fp32")]
    assert len(sweep.measurements) == 3 * 4
    for m in sweep.measurements:
        assert m.status == "ok" and m.latency.count == 4 and m.device_latency is None
        assert m.warmup.runs >= 1 and m.warmup.first_call_s > 0
        assert m.memory.kind == "rss" and m.memory.growth_mib >= 0
        assert m.parity.passed and m.parity.agreement.metric == "embedding cosine"
    eager, bf16 = sweep.measurement("eager", Shape(2, 16)), sweep.measurement("eager-bf16", Shape(2, 16))
    assert eager.parity.max_abs_error == 0 and eager.parity.cosine == pytest.approx(1.0)
    assert 0 < bf16.parity.max_abs_error and bf16.parity.precision == "bf16" and bf16.parity.cosine > 0.995
    assert sweep.threads == 1 and sweep.environment["torch_threads"] == 1 and sweep.environment["command"]
    assert torch.get_num_threads() == THREADS_BEFORE  # the caller's setting is restored


def test_speedup_is_the_ratio_of_medians_against_eager(sweep):
    for shape in sweep.shapes:
        base, prog = sweep.measurement("eager", shape), sweep.measurement("program", shape)
        assert sweep.speedup("program", shape) == pytest.approx(base.latency.median_ms / prog.latency.median_ms)
        assert sweep.speedup("eager", shape) == pytest.approx(1.0)
    data = sweep.to_dict()
    assert data["speedups"]["program"]["b1 s8"] == pytest.approx(sweep.speedup("program", Shape(1, 8)))


def test_a_backend_failing_at_one_shape_does_not_stop_the_run(captured):
    # The capture accepts batches up to 64: the program fails at 65, eager does not.
    result = run_benchmark(captured("bert"), ["program", "eager"], [Shape(65, 4), Shape(2, 4)], **QUICK)
    bad, good = result.measurement("program", Shape(65, 4)), result.measurement("program", Shape(2, 4))
    assert bad.status == "failed" and bad.latency is None and bad.reason
    assert good.status == "ok" and result.measurement("eager", Shape(65, 4)).status == "ok"


def test_interleaved_rounds_load_everything_first_and_time_each_backend_in_turns(captured):
    events: list[tuple[str, str]] = []
    shapes = [Shape(65, 4), Shape(2, 8)]  # the program fails at batch 65 (the capture's range ends at 64)
    result = run_benchmark(captured("bert"), ["eager", "program", "eager-bf16"], shapes, warmup=Warmup(iters=1, seconds=0.0),
                           measure=Measure(iters=6, rounds=3), threads=1, events=lambda step, status, _: events.append((step, status)))
    done = [step for step, status in events if status in ("done", "fail")]
    # Every backend is loaded before any shape is measured; a shape's results come together after
    # its rounds (a failure to bind, at once).
    assert done[:3] == ["eager", "program", "eager-bf16"]
    assert done[3:] == ["program b65 s4", "eager b65 s4", "eager-bf16 b65 s4", "eager b2 s8", "program b2 s8", "eager-bf16 b2 s8"]
    # Measurements in the sequential run's order (backend, then shape); the failure stays local.
    assert [(m.backend, m.shape) for m in result.measurements] == [(b, s) for b in ("eager", "program", "eager-bf16") for s in shapes]
    assert result.measurement("program", Shape(65, 4)).status == "failed"
    for m in result.measurements:
        if m.backend == "program" and m.batch == 65:
            continue
        assert m.status == "ok" and m.latency.count == 6 and m.parity.passed, m  # 2 runs in each of 3 rounds
        assert m.warmup.first_call_s > 0 and m.memory.kind == "rss"
    assert result.settings["measure"]["rounds"] == 3


def test_language_model_agreement_is_next_token_argmax(captured):
    result = run_benchmark(captured("gpt2"), ["eager", "program"], [Shape(2, 8)], **QUICK)
    m = result.measurement("program", Shape(2, 8))
    assert result.task == "text-generation"
    assert m.parity.agreement.metric == "next-token argmax" and m.parity.agreement.value == 1.0


def _result(rows: dict[str, tuple[str | None, list[tuple[float, float, float]]]]) -> BenchResult:
    """A BenchResult with given (artifact, [(median ms, cosine, max abs) per shape]) per backend."""
    shapes = (Shape(1, 8), Shape(4, 8))
    backends, measurements = [], []
    for label, (artifact, per_shape) in rows.items():
        backends.append(BackendRecord(label, label.split("@")[0], "", "cpu", "fp32", artifact, "ok"))
        for shape, (median, cos, err) in zip(shapes, per_shape):
            parity = ParityRecord(err, err, cos, True, "fp32", True, "", None)
            latency = LatencyStats.from_seconds([median / 1e3] * 3, shape.batch)
            measurements.append(Measurement(label, shape.batch, shape.seq, "ok", latency=latency, parity=parity))
    return BenchResult({}, "feature-extraction", "cpu", 1, "", shapes, tuple(backends), tuple(measurements), {}, {}, "", 0.0)


def test_best_artifact_is_the_fastest_that_keeps_its_answers():
    result = _result({
        "eager": (None, [(10.0, 1.0, 0.0), (40.0, 1.0, 0.0)]),
        "program": (None, [(1.0, 1.0, 0.0), (1.0, 1.0, 0.0)]),  # fastest, but no artifact file
        "ort@model.onnx": ("model.onnx", [(4.0, 0.999999, 1e-5), (16.0, 0.999999, 1e-5)]),
        "aoti@model.aoti.pt2": ("model.aoti.pt2", [(2.0, 0.99999, 1e-4), (32.0, 1.0, 1e-4)]),  # geomean 8 ms
        "ort@model.int8.onnx": ("model.int8.onnx", [(1.5, 0.99, 0.2), (6.0, 0.99, 0.2)]),  # fastest artifact, too far off
    })
    choice = best_artifact(result, min_cosine=0.9999)
    assert choice is not None and choice.backend == "ort@model.onnx"
    assert choice.median_ms == pytest.approx(8.0) and choice.speedup == pytest.approx(math.sqrt(2.5 * 2.5))
    # A looser cosine lets int8 in; a tight max abs error keeps only the most exact.
    assert best_artifact(result, min_cosine=0.98).backend == "ort@model.int8.onnx"
    assert best_artifact(result, min_cosine=0.98, max_abs_error=5e-5).backend == "ort@model.onnx"
    # At one shape the ranking can differ: aoti is the faster at batch 1.
    assert best_artifact(result, min_cosine=0.9999, shape=Shape(1, 8)).backend == "aoti@model.aoti.pt2"
    assert best_artifact(result, min_cosine=0.9999, artifacts_only=False).backend == "program"
    assert best_artifact(result, min_cosine=1.01) is None
    # Among fxbench's own artifacts only (baselines ran beside them in the same result).
    assert best_artifact(result, min_cosine=0.9999, among=["aoti@model.aoti.pt2"]).backend == "aoti@model.aoti.pt2"


def _spread_result(rows: dict[str, tuple[str, list[float]]]) -> BenchResult:
    """One shape; per backend (precision, its raw per-run times in ms)."""
    shape = Shape(1, 8)
    backends, measurements = [], []
    for label, (precision, runs) in rows.items():
        backends.append(BackendRecord(label, label.split("@")[0], "", "cpu", precision, None if label == "eager" else label.split("@")[1], "ok"))
        parity = ParityRecord(1e-6, 1e-6, 0.99999 if precision == "fp32" else 0.995, True, precision, True, "", None)
        measurements.append(Measurement(label, 1, 8, "ok", latency=LatencyStats.from_seconds([t / 1e3 for t in runs], 1), parity=parity))
    return BenchResult({}, "feature-extraction", "cpu", 1, "", (shape,), tuple(backends), tuple(measurements), {}, {}, "", 0.0)


def _runs(center: float, spread: float, n: int = 60) -> list[float]:
    return [center * (1 + spread * ((i * 7919) % n / n - 0.5)) for i in range(n)]


def test_the_best_is_named_only_when_its_lead_is_beyond_the_noise():
    clear = _spread_result({"eager": ("fp32", _runs(40, 0.1)), "ort@a.onnx": ("fp32", _runs(20, 0.05)), "ort@b.onnx": ("fp32", _runs(25, 0.05))})
    best = best_artifact(clear, min_cosine=0.99)
    assert best.backend == "ort@a.onnx" and best.clear is True and best.runner_up == "ort@b.onnx" and best.lead == pytest.approx(0.25, rel=0.05)
    tied = _spread_result({"eager": ("fp32", _runs(40, 0.1)), "ort@a.onnx": ("fp32", _runs(20, 0.4)), "ort@b.onnx": ("fp32", _runs(20.5, 0.4))})
    best = best_artifact(tied, min_cosine=0.99)
    assert best.backend == "ort@a.onnx" and best.clear is False and best.tied_with == ("ort@b.onnx",)
    # Within the noise of an int8 artifact, the fp32 one is kept: speed cannot tell them apart, precision can.
    mixed = _spread_result({"eager": ("fp32", _runs(40, 0.1)), "ort@int8.onnx": ("int8", _runs(20, 0.4)), "ort@fp32.onnx": ("fp32", _runs(20.5, 0.4))})
    best = best_artifact(mixed, min_cosine=0.99)
    assert best.backend == "ort@fp32.onnx" and best.clear is False and best.lead < 0
    only = best_artifact(mixed, min_cosine=0.99, among=["ort@int8.onnx"])
    assert only.backend == "ort@int8.onnx" and only.clear is None
    lines = rows.best_lines(best, 0.99)
    assert "no clear winner" in lines[0] and "ort@int8.onnx is within the noise of ort@fp32.onnx" in lines[0] and "the higher precision" in lines[0]
    assert "beyond the noise" in rows.best_lines(best_artifact(clear, min_cosine=0.99), 0.99)[0]


def test_the_budget_is_judged_at_every_export_check_too():
    result = _spread_result({"eager": ("fp32", _runs(40, 0.1)), "ort@a.onnx": ("int8", _runs(20, 0.05)), "ort@b.onnx": ("int8", _runs(25, 0.05))})
    checks = {"ort@a.onnx": {"sample": {"cosine": 0.996, "max_abs_error": 0.1, "finite": True},
                             "batch3_seq40": {"cosine": 0.981, "max_abs_error": 0.2, "finite": True}}}
    best = best_artifact(result, min_cosine=0.99, checks=checks)
    assert best.backend == "ort@b.onnx"  # a.onnx misses the budget at batch3_seq40, which the benchmark never timed
    loose = best_artifact(result, min_cosine=0.98, checks=checks)
    assert loose.backend == "ort@a.onnx" and loose.worst_cosine == 0.981 and loose.worst_at == "batch3_seq40"


def test_noisy_measurements_get_a_warning_line():
    noisy = _spread_result({"eager": ("fp32", _runs(40, 0.6)), "ort@a.onnx": ("fp32", _runs(20, 0.02))})
    (line,) = rows.noise_lines(noisy)
    assert line.startswith("warning: noisy timings: spread (IQR/median) >= 10% for eager b1 s8 ") and "ort@a.onnx" not in line
    assert rows.noise_lines(_spread_result({"eager": ("fp32", _runs(40, 0.05))})) == []


def test_labels_stay_unique_across_folders(tmp_path):
    for run in ("run1", "run2", "other/run1"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "model.onnx").write_bytes(b"x")
    backends = parse_backends([f"ort@{tmp_path / 'run1' / 'model.onnx'}", f"ort@{tmp_path / 'run2' / 'model.onnx'}",
                               f"ort@{tmp_path / 'other' / 'run1' / 'model.onnx'}"], device="cpu")
    # As much of each path as tells them apart (run1/model.onnx twice: one folder more for all three).
    assert [b.label for b in backends] == [f"ort@{tmp_path.name}/run1/model.onnx", f"ort@{tmp_path.name}/run2/model.onnx",
                                           "ort@other/run1/model.onnx"]
    assert len({b.label for b in unique_labels([Backend("eager"), *backends])}) == 4
    with pytest.raises(UnknownBackendError, match="backend listed twice: ort@model.onnx"):
        parse_backends([f"ort@{tmp_path / 'run1' / 'model.onnx'}"] * 2, device="cpu")


class _LetsGo(Session):
    """The captured program behind a session that lets go of it between its blocks (as the
    CTranslate2 peer drops its Encoder) and rebuilds it: a run without its resume would fail."""

    log: list[str] = []

    def __init__(self, captured, options):
        super().__init__(captured.input_names, captured.output_names)
        self.captured, self.held = captured, [captured.exported.module()]

    def bind(self, inputs):
        def step():
            with torch.inference_mode():
                return self.held[0](**inputs)
        return Bound(step=step, fetch=lambda: tuple(t.float() for t in step()))

    def suspend(self):
        self.log.append("suspend")
        self.held[0] = None

    def resume(self):
        self.log.append("resume")
        rebuilt = self.held[0] is None
        if rebuilt:
            self.held[0] = self.captured.exported.module()
        return rebuilt


def test_interleaved_rounds_let_a_session_go_between_its_blocks(captured):
    if "lets-go" not in BACKENDS:
        register_backend(BackendSpec("lets-go", "the program, let go between its blocks", ("cpu",), _LetsGo))
    _LetsGo.log.clear()
    result = run_benchmark(captured("bert"), ["eager", "lets-go"], [Shape(2, 8)], warmup=Warmup(iters=1, seconds=0.0),
                           measure=Measure(iters=6, rounds=3), threads=1)
    m = result.measurement("lets-go", Shape(2, 8))
    assert m.status == "ok" and m.latency.count == 6 and m.parity.passed, m
    # Let go after the warm-up and after each round's block, taken back before each block and
    # before the outputs are fetched for the final check.
    assert _LetsGo.log == ["suspend", *["resume", "suspend"] * 3, "resume"]
    # One backend after another (rounds=1): nothing is let go.
    _LetsGo.log.clear()
    result = run_benchmark(captured("bert"), ["lets-go"], [Shape(2, 8)], warmup=Warmup(iters=1, seconds=0.0), measure=Measure(iters=3, rounds=1),
                           threads=1)
    assert result.measurement("lets-go", Shape(2, 8)).status == "ok" and _LetsGo.log == []
