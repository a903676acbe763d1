"""Output people can read, trust and compare: two real runs (optimize at 80 columns, bench of its
folder at 200) printed without a split number, compared side by side, their report.json against the
schema and their report.html in a real browser at 800 and 1400 px; the CLI's conventions; the Python API."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from browser import CHROMIUM, SKIP_REASON, layout_width
from rich.console import Console
from typer.testing import CliRunner

import fxbench
from fxbench.cli import ATTN_NAMES, DEVICE_NAMES, DTYPE_NAMES, PIPELINE_NAMES, TRT_PRECISIONS, app
from fxbench.environment import collect_environment
from fxbench.events import set_verbosity
from fxbench.exporters.targets import target_names
from fxbench.jobs import DEVICES, OptimizeRequest, OptimizeResult, optimize_captured
from fxbench.jobs.optimize import DTYPES
from fxbench.numerics import PRECISIONS
from fxbench.passes import PIPELINES
from fxbench.reports.files import jsonable
from fxbench.reports.records import ExportReport, OptimizeReport
from fxbench.reports.schema import SCHEMA_VERSION, load_schema, validate_report
from fxbench.reports.terminal import Progress
from fxbench.runtime import BACKENDS
from fxbench.runtime.bench import BenchResult
from fxbench.runtime.harness import Measure, Warmup

ROOT = Path(__file__).resolve().parents[1]


def _fxbench(*args: str, columns: int, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS=str(columns))
    return subprocess.run([sys.executable, "-m", "fxbench", *args], capture_output=True, text=True, env=env, timeout=900, cwd=cwd)


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    """Run A: `fxbench optimize` at 80 columns; run B: `fxbench bench A` at 200 (short timings)."""
    root = tmp_path_factory.mktemp("runs")
    timing = ["--seq", "16", "--time", "0.2", "--rounds", "3", "--warmup", "2", "--warmup-time", "0"]
    a = _fxbench("optimize", str(tiny_dir("bert")), "-o", "A", "--to", "onnx", "--no-search", *timing, columns=80, cwd=root)
    assert a.returncode == 0, a.stderr
    b = _fxbench("bench", "A", "-o", "B", *timing, columns=200, cwd=root)
    assert b.returncode == 0, b.stderr
    return root, a, b


def _assert_fits_and_whole(text: str, width: int, numbers: list[str]) -> None:
    """No line is wider than `width`, and every number is printed whole on one line."""
    lines = text.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width, max(lines, key=len)
    missing = [n for n in numbers if not any(n in line for line in lines)]
    assert not missing, f"split or missing: {missing}"


def _measured(bench: dict) -> list[str]:
    return [f"{m['latency']['median_ms']:.3f}" for m in bench["measurements"] if m["latency"]]


def test_optimize_at_80_columns_splits_no_number(runs):
    root, a, _ = runs
    report = json.loads((root / "A" / "report.json").read_text())
    bench = report["benchmark"]
    speedups = [f"{v:.2f}x" for per in bench["speedups"].values() for v in per.values()]
    cosines = [f"{r['parity']['cosine']:.6f}" for r in report["passes"] if r["parity"]]
    _assert_fits_and_whole(a.stdout, 80, _measured(bench) + speedups + cosines + [a_["file"] for a_ in report["artifacts"]])
    _assert_fits_and_whole(a.stderr, 80, _measured(bench))  # the step lines
    # Pass names and backend labels whole, not cut to "remove-no…"; what did not fit is said.
    assert "…" not in a.stdout and "eliminate-common-subexpressions" in a.stdout and "program@model.pt2" in a.stdout
    assert "not shown at 80 columns:" in a.stdout and "report.md has every column" in a.stdout
    assert "best artifact:" in a.stdout and ("beyond the noise" in a.stdout or "within the noise" in a.stdout
                                             or "the only one within budget" in a.stdout)


def test_bench_at_200_columns_uses_the_width(runs):
    root, _, b = runs
    report = json.loads((root / "B" / "report.json").read_text())
    assert report["kind"] == "bench" and report["source"]["kind"] == "folder"
    p95 = [f"{m['latency']['p95_ms']:.3f}" for m in report["measurements"]]
    _assert_fits_and_whole(b.stdout, 200, _measured(report) + p95)
    header = next(line for line in b.stdout.splitlines() if line.startswith("backend"))
    for column in ("median ms", "p95 ms", "spread", "speedup", "cosine", "agree", "samples/s", "mem MiB", "std ms"):
        assert column in header  # nothing dropped at this width
    assert "not shown" not in b.stdout


def test_compare_two_real_runs(runs):
    root, _, _ = runs
    for columns in (80, 200):
        proc = _fxbench("compare", "A", "B", columns=columns, cwd=root)
        assert proc.returncode == 0, proc.stderr
        a = json.loads((root / "A" / "report.json").read_text())["benchmark"]
        _assert_fits_and_whole(proc.stdout, columns, _measured(a))
        assert "A: A/report.json (optimize" in proc.stdout and "B: B/report.json (bench" in proc.stdout
    data = json.loads(_fxbench("compare", "A", "B/report.json", "--json", columns=200, cwd=root).stdout)
    rows = {(r["backend"], r["shape"]): r for r in data["rows"]}
    assert set(rows) == {("eager", "b1 s16"), ("program@model.pt2", "b1 s16"), ("ort@model.onnx", "b1 s16")}
    ort = rows["ort@model.onnx", "b1 s16"]
    a_med, b_med = ort["median_ms"]
    assert ort["ratio"] == [None, pytest.approx(a_med / b_med)] and isinstance(ort["beyond_noise"][1], bool)
    assert ort["cosine"][0] > 0.99999 and ort["speedup"][1] > 0
    assert [r["kind"] for r in data["runs"]] == ["optimize", "bench"] and data["runs"][0]["best"]
    # What differs between the runs is listed; what is the same is not (same machine, versions, settings).
    assert not any(k.startswith(("environment.packages", "settings.", "environment.cpu")) for k in data["differences"])
    md = _fxbench("compare", "A", "B", "--markdown", columns=80, cwd=root).stdout
    assert md.startswith("# fxbench compare") and "| backend | shape | A ms | B ms | B vs A |" in md
    # One error line for what is not a report.
    bad = _fxbench("compare", "A", str(root), columns=80, cwd=root)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no report.json at") and len(bad.stderr.splitlines()) == 1


def test_runs_follow_the_schema_and_round_trip(runs):
    root, _, _ = runs
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(load_schema())
    a = json.loads((root / "A" / "report.json").read_text())
    b = json.loads((root / "B" / "report.json").read_text())
    for data in (a, b):
        validate_report(data)
        assert data["schema_version"] == SCHEMA_VERSION
    # The environment once (at the top), the budget's "no limit" as null, raw runs with their rounds.
    assert "environment" not in a["benchmark"] and a["best"]["max_abs_error"] is None
    for m in a["benchmark"]["measurements"]:
        assert len(m["samples_ms"]) == m["latency"]["count"] == sum(m["round_runs"]) and len(m["round_runs"]) == 3
        assert m["latency"]["p95_ms"] >= m["latency"]["median_ms"] and m["latency"]["spread"] >= 0
    assert sorted(a["seconds"]) == ["bench", "capture", "load", "passes", "save"]
    # What the schema refuses: a number written as a string, an unknown top-level key, no kind.
    for broken in ({**a, "best": {**a["best"], "max_abs_error": "inf"}}, {**a, "surprise": 1}, {k: v for k, v in a.items() if k != "kind"}):
        with pytest.raises(jsonschema.ValidationError):
            validate_report(broken)
    assert jsonable({"x": math.inf, "y": [math.nan]}) == {"x": None, "y": [None]}
    # The typed records read their own JSON back exactly (export re-renders a folder's reports from it).
    assert jsonable(OptimizeReport.from_dict(a).to_dict()) == a
    assert jsonable({"schema_version": SCHEMA_VERSION, "kind": "bench", **BenchResult.from_dict(b).to_dict()}) == b


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_optimize_html_in_chromium_at_800_and_1400(runs, tmp_path):
    root, _, _ = runs
    page = root / "A" / "report.html"
    html = page.read_text()
    assert "<script" not in html
    for part in ('id="op-diff"', 'id="op-histogram"', 'id="artifact-outputs"', 'id="outputs"', 'class="box latency"', 'id="details"'):
        assert part in html, part
    for width in (800, 1400):
        scroll, right = layout_width(page, tmp_path, width)
        assert scroll <= width and right <= width, (width, scroll, right)


def test_environment_records_the_cpu_isa():
    env = collect_environment(["fxbench", "x"])
    isa = env["cpu_isa"]
    assert isa["capability"] == torch.backends.cpu.get_cpu_capability()
    flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), [])
    assert set(isa["flags"]) <= set(flags) and isa["avx2"] == ("avx2" in flags) and isa["avx512"] == ("avx512f" in flags)
    assert isa["vnni"] == any(f in flags for f in ("avx512_vnni", "avx_vnni")) and isa["amx"] == any(f.startswith("amx") for f in flags)
    assert env["command"] == "fxbench x"


def test_progress_counts_passes_exports_backends_and_rounds(captured, tmp_path):
    events: list[tuple[str, str, str]] = []
    optimize_captured(captured("bert"), OptimizeRequest(output=tmp_path / "o", targets=("onnx",), bench_shapes=((1, 8),), search=False,
                                                        warmup=Warmup(iters=1, seconds=0.0), measure=Measure(iters=3, rounds=3)),
                      events=lambda *e: events.append(e))
    starts = {s: d for s, st, d in events if st == "start"}
    assert [starts[f"pass {n}"] for n in ("remove-noops", "eliminate-dead-code")] == ["1/6", "6/6"]
    assert starts["export onnx"] == "1/1" and starts["eager"] == "1/3" and starts["ort@model.onnx"] == "3/3"
    assert starts["eager b1 s8"] == "1/3" and starts["ort@model.onnx b1 s8"] == "3/3"
    assert [d for s, st, d in events if st == "update" and s == "eager b1 s8"] == ["round 1/3", "round 2/3", "round 3/3"]


def test_progress_display_keeps_numbers_whole():
    step, detail = "ort@model.int8-dynamic.onnx b8 s512", "median 1234.567 ms, p95 2345.678 ms, spread 12%, cos 0.999876"
    # A terminal gets the live display: spinner, step, its place k/N, elapsed time.
    live = Console(width=80, record=True, force_terminal=True, color_system=None)
    progress = Progress(live)
    progress(step, "start", "12/15")
    progress(step, "done", detail)
    progress.stop()
    shown = live.export_text()
    assert "12/15" in shown and "0:00:00" in shown
    # A pipe (a log, CI) gets the finished lines alone, fitted to the width, the detail wrapped at
    # its spaces, each with its place k/N before the detail.
    piped = Console(width=80, record=True)
    progress = Progress(piped)
    progress(step, "start", "12/15")
    progress(step, "done", detail)
    text = piped.export_text()
    assert text.startswith("✓ " + step) and max(len(line) for line in text.splitlines()) <= 80
    assert f"{step} 12/15 median 1234.567" in " ".join(text.split())
    for number in ("1234.567", "2345.678", "0.999876"):
        assert number in text
    set_verbosity(-1)
    try:
        quiet = Console(width=80, record=True)
        Progress(quiet)("load", "done", "x")
        assert quiet.export_text() == ""
    finally:
        set_verbosity(0)


# ----- CLI conventions (in-process: every case here ends before a model would load)

def _cli(*args: str) -> object:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80"}, prog_name="fxbench")  # as installed, whatever runs pytest


def test_version_help_and_completion(monkeypatch):
    version = _cli("--version")
    assert version.exit_code == 0 and version.stdout.startswith(f"fxbench {fxbench.__version__} (torch ")
    for args in (["-h"], ["--help"], ["optimize", "-h"], ["bench", "-h"], ["compare", "-h"], ["passes", "-h"]):
        assert _cli(*args).exit_code == 0, args
    helped = _cli("optimize", "-h").stdout
    assert "fxbench[demo]" in helped  # rich markup does not eat the brackets
    assert "--sample-batch" in helped and "--to" in helped and "--time" in helped and "--rounds" in helped
    assert "--bench-time" not in helped and "--target" not in helped  # old names: hidden aliases
    # The completion script is for the shell typer detects among the parent processes; an xdist
    # worker may have none, so the shell is named here (what is tested is fxbench's script).
    import typer.completion

    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    completion = _cli("--show-completion")
    assert completion.exit_code == 0 and "_FXBENCH_COMPLETE=complete_bash" in completion.stdout, (completion.output, completion.exception)


def test_listings_are_commands():
    backends = json.loads(_cli("backends", "list", "--json").stdout)
    assert [b["name"] for b in backends] == list(BACKENDS)
    assert _cli("bench", "--list").exit_code == 0  # the old flag still answers
    assert [t["name"] for t in json.loads(_cli("targets", "list", "--json").stdout)] == list(target_names())


def test_the_clis_choices_are_their_sources():
    assert set(PIPELINE_NAMES) == set(PIPELINES) and DEVICE_NAMES == DEVICES and DTYPE_NAMES == tuple(DTYPES)
    # int4 is a weight-only tolerance class (decoders), not a precision TensorRT builds at.
    assert set(TRT_PRECISIONS) == set(PRECISIONS) - {"int4"} and set(ATTN_NAMES) == {"eager", "sdpa"}


@pytest.mark.parametrize("args, message", [
    (["optimize", "{m}", "--pipeline", "O9"], "--pipeline: unknown pipeline 'O9'; choose one of: O1, O2"),
    (["optimize", "{m}", "--device", "tpu"], "--device: unknown device 'tpu'; choose one of: auto, cpu, cuda"),
    (["optimize", "{m}", "--attn", "flash"], "--attn: unknown attention implementation 'flash'"),
    (["optimize", "{m}", "--to", "onnx,zzz"], "--to: unknown export target 'zzz'"),
    (["optimize", "{m}", "--dtype", "int4"], "--dtype: unknown dtype 'int4'"),
    (["optimize", "{m}", "--task", "no-such-task"], "--task: unknown task 'no-such-task'"),
    (["export", "{m}", "--to", "zzz"], "--to: unknown export target 'zzz'"),
    (["bench", "{m}", "--device", "gpu"], "--device: unknown device 'gpu'"),
    (["optimize", "{m}", "--no-such-flag"], "No such option: --no-such-flag"),
    (["optimize", "{m}", "-q", "-v"], "give -q or -v, not both"),
    (["optimize", "{m}", "--pipeline", "O3", "--dtype", "bf16"], "--pipeline O3 sets its own precision (fp16); drop --dtype bf16"),
    (["optimize", "{m}", "--search", "--dtype", "fp16"], "--search tries each preset's own precision; drop --dtype"),
])
def test_bad_choices_are_one_line_before_any_model_loads(tiny_dir, args, message):
    proc = _cli(*[a.format(m=tiny_dir("bert")) for a in args])
    assert proc.exit_code == 2, proc.output
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr


def test_quiet_run_with_dtype_and_loading_flags(tiny_dir, tmp_path):
    out = tmp_path / "o"
    proc = _fxbench("optimize", str(tiny_dir("bert")), "-o", str(out), "--to", "none", "--no-bench", "-q", "--dtype", "fp16",
                    "--revision", "main", "--trust-remote-code", "--token", "hf_not_a_real_token", "--json", columns=80, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # -q: no step lines, no library chatter
    report = json.loads(proc.stdout)
    assert "to-fp16" in [r["name"] for r in report["passes"]] and report["artifacts"][0]["precision"] == "fp16"
    assert report["model"]["revision"] == "main" and report["model"]["trust_remote_code"] is True
    assert "hf_not_a_real_token" not in (out / "report.json").read_text()  # the token is never written


# ----- the Python API

class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_api_optimizes_benches_and_exports_quietly(tiny_dir, tmp_path, capfd):
    from transformers import AutoModel

    torch.manual_seed(0)
    hf = AutoModel.from_pretrained(str(tiny_dir("bert")))
    capfd.readouterr()  # what the test itself printed (its model's loading bar): fxbench's own output is checked below
    result = fxbench.optimize(_Net(), torch.randn(4, 16), output=tmp_path / "net", to="onnx", time=0.1, rounds=2)
    assert isinstance(result, OptimizeResult) and isinstance(result.report, OptimizeReport)
    assert [a.kind for a in result.artifacts] == ["program", "onnx"] and result.best is not None
    assert result.report.model.source == "module:_Net" and result.report.benchmark.shapes[0].batch == 1
    assert (tmp_path / "net" / "report.html").is_file()

    # A folder made from an in-memory module is benched with the module (there is nothing to load it from).
    net, example = result.captured.loaded.model, result.captured.inputs.tensors["x"]
    timed = fxbench.bench(net, ["eager", "program", f"ort@{tmp_path / 'net' / 'model.onnx'}"], example, iters=3, rounds=1, batch=2)
    assert isinstance(timed, BenchResult) and [b.label for b in timed.backends] == ["eager", "program", "ort@model.onnx"]
    assert all(m.status == "ok" and m.batch == 2 and m.parity.passed for m in timed.measurements)

    exported = fxbench.export(hf, to="onnx", output=tmp_path / "hf")
    assert isinstance(exported.report, ExportReport) and [a.kind for a in exported.artifacts] == ["onnx"]
    assert set(exported.artifacts[0].parity) == {"sample", "batch3_seq40"}

    captured_out = capfd.readouterr()
    assert captured_out.out + captured_out.err == ""  # quiet: no loading bars, no torchao, pytree or onnx chatter
    with pytest.raises(TypeError, match="example_inputs go with an nn.Module"):
        fxbench.optimize("some/model", torch.zeros(1))
    assert set(fxbench.__all__) >= {"optimize", "bench", "export"} and re.match(r"\d+\.\d+", fxbench.__version__)
