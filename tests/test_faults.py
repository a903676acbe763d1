"""Faults a user meets, each one row of issue 13's table: a full disk, a file-size limit, a read-only
output, truncated and zeroed files, bad ranges, a missing GPU, SIGTERM / SIGINT / SIGKILL sent to a
real run, two runs into one folder, a corrupt tokenizer, the DeBERTa-v2 and T5 re-export, and the
unforeseen failure of a stage. Every one ends in one `error:` line, the documented exit code, and
nothing half-written."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import transformers
from typer.testing import CliRunner

from fxbench.cli import app
from fxbench.errors import OutputExistsError, OutputWriteError, StageError
from fxbench.exporters import save_program
from fxbench.jobs import OptimizeRequest, optimize
from fxbench.jobs.folders import staged_directory
from fxbench.models import ReexportError, export_graph_module
from fxbench.passes import FxbenchPass, PassResult, run_pipeline
from fxbench.passes.remove_noops import RemoveNoops

ROOT = Path(__file__).resolve().parents[1]
_NOISE = ("Failed to load", "W1")  # torchao's and torch's import-time chatter, not fxbench's


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1", **extra)
    env.pop("FXBENCH_VERBOSE", None)
    return env


def fxbench(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fxbench", *args], capture_output=True, text=True, env=_env(), timeout=timeout)


def start(*args: str, log: Path) -> subprocess.Popen:
    """A real `fxbench` run in the background, its stderr in `log` (a pipe could fill and stall it)."""
    return subprocess.Popen([sys.executable, "-m", "fxbench", *args], stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), env=_env())  # noqa: SIM115 - the child owns it


def cli(*args: str) -> tuple[int, list[str]]:
    """The CLI in this process (for checks that end before any model loads): exit code, stderr lines."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, [ln for ln in result.stderr.splitlines() if ln.strip()]


def assert_one_error(lines: list[str] | str, message: str) -> str:
    """One `error:` line, the last, naming `message`; no traceback above it."""
    if isinstance(lines, str):
        lines = [ln for ln in lines.splitlines() if ln.strip() and not ln.startswith(_NOISE)]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert message in errors[0], errors[0]
    assert not any("Traceback" in ln for ln in lines), lines
    return errors[0]


def ran(lines: list[str] | str, step: str) -> bool:
    """Whether the step lines show `step` ended (done or failed)."""
    lines = lines.splitlines() if isinstance(lines, str) else lines
    return any(re.match(rf"[✓✗] {re.escape(step)}\s{{2,}}", ln) for ln in lines)


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) first:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()}"
        time.sleep(0.1)


def beside(out: Path) -> list[str]:
    """What is in the output's parent: the folder itself and any lock or partial folder of a run."""
    return sorted(p.name for p in out.parent.iterdir())


# --- file systems that refuse the output ----------------------------------------------------------

@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    """A tmpfs of `size` at `path` (root only; skips elsewhere), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root ({made.stderr.strip() or 'mount failed'}); the file-size-limit tests cover the same path")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_is_one_line_and_keeps_the_old_output_under_force(tiny_dir, tmp_path):
    with tmpfs(tmp_path / "disk", "768k") as disk:
        out = disk / "out"
        out.mkdir()
        (out / "old.bin").write_bytes(b"o" * 400_000)  # the old output takes half the disk
        proc = fxbench("optimize", str(tiny_dir("gpt2")), "-o", str(out), "--force", "--target", "none", "--no-bench")
        assert proc.returncode == 4, proc.stderr
        assert_one_error(proc.stderr, "not enough space for model.pt2")
        # The old output is whole (it goes only once the new one is in place), and nothing else is left.
        assert beside(out) == ["out"] and [p.name for p in out.iterdir()] == ["old.bin"]


_WRITE_THROUGH_A_FAILING_DISK = """
import resource, sys, torch
from pathlib import Path
from fxbench import interrupts
import fxbench.exporters.program as program
from fxbench.errors import OutputWriteError
interrupts.install()  # SIGXFSZ ignored: over the file-size limit, a write fails (EFBIG) instead of killing us
m = torch.nn.Linear(512, 512)
ep = torch.export.export(m, (torch.randn(2, 512),))
if sys.argv[2] == "limit":
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
try:
    program.save_program(ep, Path(sys.argv[1]) / "model.pt2")  # refused before the write
except OutputWriteError as exc:
    print(exc)
check, program.ensure_space = program.ensure_space, lambda *args: None  # the write itself must fail, and cleanly
try:
    program.save_program(ep, Path(sys.argv[1]) / "model.pt2")
except OutputWriteError as exc:
    print(exc)
"""


@pytest.mark.parametrize("disk", ["limit", "tmpfs"])
def test_a_full_disk_or_a_size_limit_is_refused_first_and_never_aborts_the_archive_writer(tmp_path, disk):
    """model.pt2 is refused before the write when it cannot fit (free space, ulimit -f). Where the
    write itself fails, torch.export.save to a path aborts the process ('inline_container.cc:
    unexpected pos', exit 134); through fxbench's guarded file it is an error line, and no file is left."""
    folder = tmp_path / "disk"
    with tmpfs(folder, "256k") if disk == "tmpfs" else contextlib.nullcontext(folder.mkdir()):
        proc = subprocess.run([sys.executable, "-c", _WRITE_THROUGH_A_FAILING_DISK, str(folder), disk],
                              capture_output=True, text=True, env=_env(), timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        refused, failed = proc.stdout.strip().splitlines()
        if disk == "limit":
            assert refused == "model.pt2 (about 2.0 MiB) exceeds the file-size limit (ulimit -f) of 0.2 MiB; raise the limit"
            assert failed == (f"cannot write {folder / 'model.pt2'}: the file exceeds the file-size limit (ulimit -f); "
                              f"raise the limit or choose another --output")
        else:
            assert refused.startswith(f"not enough space for model.pt2 in {folder}: about 2.0 MiB needed, 0.")
            assert failed == f"cannot write {folder / 'model.pt2'}: no space left on the device; free some space or choose another --output"
        assert list(folder.iterdir()) == []


@contextlib.contextmanager
def read_only(path: Path):
    """A read-only folder: a read-only mount as root (who writes through chmod), else chmod 555."""
    if os.geteuid() == 0:
        with tmpfs(path, "64k", readonly=True):
            yield path
        return
    path.mkdir()
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


def test_a_read_only_output_is_one_line_before_loading(tiny_dir, tmp_path):
    with read_only(tmp_path / "ro") as ro:
        code, lines = cli("optimize", str(tiny_dir("gpt2")), "-o", str(ro / "out"), "--no-bench")
        assert code == 4
        assert_one_error(lines, f"cannot write {ro}")
        assert not ran(lines, "load")  # refused before the model loaded
        assert list(ro.iterdir()) == []


# --- files that are not whole ---------------------------------------------------------------------

def test_truncated_or_zeroed_weights_are_named_before_loading(tiny_dir, tmp_path):
    folder = shutil.copytree(tiny_dir("gpt2"), tmp_path / "model")
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    for command in ("optimize", "inspect"):
        code, lines = cli(command, str(folder), *(["-o", str(tmp_path / "out")] if command == "optimize" else []))
        assert code == 2
        assert_one_error(lines, "(gpt2): model.safetensors is truncated (0.")
    weights.write_bytes(bytes(4096))
    code, lines = cli("optimize", str(folder), "-o", str(tmp_path / "out"))
    assert code == 2 and "model.safetensors is corrupt" in assert_one_error(lines, "download or save the model again")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def saved(tiny_dir, tmp_path_factory) -> Path:
    """An output folder: a real model.pt2 (torch.export.save of a small module) and the report.json
    fields export reads before it loads anything (the model it names is never loaded here)."""
    out = tmp_path_factory.mktemp("saved") / "out"
    out.mkdir()
    save_program(torch.export.export(torch.nn.Linear(256, 256), (torch.randn(2, 256),)), out / "model.pt2")
    report = {"model": {"source": str(tiny_dir("gpt2")), "task": "text-generation"},
              "artifacts": [{"kind": "program", "file": "model.pt2", "precision": "fp32"}]}
    (out / "report.json").write_text(json.dumps(report))
    return out


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "flipped"])
def test_a_damaged_model_pt2_is_one_line_for_export_and_inspect(saved, tmp_path, damage):
    folder = shutil.copytree(saved, tmp_path / "out")
    program = folder / "model.pt2"
    data = bytearray(program.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "zeroed":
        data = bytearray(len(data))
    else:  # bytes changed inside the largest stored tensor: the archive's CRC says so
        with zipfile.ZipFile(program) as archive:
            info = max(archive.infolist(), key=lambda i: i.file_size)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 100
        data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    program.write_bytes(bytes(data))
    before = sorted(p.name for p in folder.iterdir())
    expected = "its member" if damage == "flipped" else "it is not a whole torch.export archive"
    code, lines = cli("export", str(folder), "--to", "onnx")
    assert code == 2
    assert_one_error(lines, f"cannot read {program}: {expected}")
    assert not ran(lines, "load")  # the model named in report.json never loaded
    code, lines = cli("inspect", str(program))
    assert code == 2 and assert_one_error(lines, expected)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_corrupt_tokenizer_is_a_warning_and_in_the_report(tiny_dir, tmp_path):
    folder = shutil.copytree(tiny_dir("bert"), tmp_path / "model")
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes()[:1000])
    out = tmp_path / "out"
    code, lines = cli("optimize", str(folder), "-o", str(out), "--target", "none", "--no-bench")
    assert code == 0, lines
    (warning,) = [ln for ln in lines if "warning:" in ln]
    assert "the model's tokenizer (tokenizer.json" in warning and "cannot be loaded: JSONDecodeError" in warning
    assert "drawn from the config instead" in warning
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["origin"] == "config" and "JSONDecodeError" in report["inputs"]["warning"]
    assert "- warning: the model's tokenizer" in (out / "report.md").read_text()


# --- options checked before any model loads -------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--batch-range", "8:2"], "bad batch range 8:2"),
    (["--seq-range", "0:8"], "bad seq range 0:8"),
    (["--sample-batch", "0"], "--sample-batch must be at least 1, not 0"),
    (["--sample-batch", "1"], "--sample-batch 1 cannot capture a dynamic batch"),
    (["--sample-seq", "0"], "--sample-seq must be at least 1, not 0"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--bench-time", "0"], "--time must be positive"),
])
def test_bad_ranges_are_one_line_before_loading(tmp_path, args, message):
    # A model that does not exist: had anything tried to load it, the error would say so instead.
    code, lines = cli("optimize", str(tmp_path / "no-model"), "-o", str(tmp_path / "out"), *args)
    assert code == 2
    assert_one_error(lines, message)
    assert lines == [lines[-1]] and not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch sees no GPU")
@pytest.mark.parametrize("command", [
    ["optimize", "{model}", "--device", "cuda"],
    ["bench", "{model}", "--device", "cuda"],
    ["export", "{model}", "--to", "aoti", "--device", "cuda"],
])
def test_device_cuda_without_a_gpu_is_one_line_before_loading(tmp_path, command):
    code, lines = cli(*(a.format(model=tmp_path / "no-model") for a in command), "-o", str(tmp_path / "out"))
    assert code == 2
    assert_one_error(lines, "cuda")
    assert "CUDA" in lines[-1] and lines == [lines[-1]]


# --- signals sent to a real run -------------------------------------------------------------------

def _partial(out: Path, pid: int) -> Path:
    return out.with_name(f".{out.name}.{pid}.partial")


def _work(tmp_path: Path) -> Path:
    """The folder the output goes in (the logs stay out of it)."""
    (tmp_path / "work").mkdir()
    return tmp_path / "work" / "out"


def test_sigterm_during_the_save_leaves_nothing_and_exits_143(tiny_dir, tmp_path):
    out, log = _work(tmp_path), tmp_path / "log"
    proc = start("optimize", str(tiny_dir("gpt2")), "-o", str(out), "--target", "onnx", "--no-bench", log=log)
    wait_for(lambda: (_partial(out, proc.pid) / "model.pt2").exists(), proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()
    assert_one_error(log.read_text(), "interrupted by SIGTERM")
    assert beside(out) == []  # no output, no partial folder, no lock


def test_sigint_during_loading_leaves_nothing_and_exits_130(tiny_dir, tmp_path):
    out, log = tmp_path / "deep" / "out", tmp_path / "log"
    proc = start("optimize", str(tiny_dir("gpt2")), "-o", str(out), "--no-bench", log=log)
    wait_for(lambda: out.with_name(".out.lock").exists(), proc, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()
    assert_one_error(log.read_text(), "interrupted by SIGINT")
    assert not (tmp_path / "deep").exists()  # the parent it made for the output is gone too


def test_a_second_run_into_the_same_folder_is_refused_and_a_killed_runs_leftovers_are_cleaned(tiny_dir, tmp_path):
    model, out = str(tiny_dir("gpt2")), _work(tmp_path)
    # With the ONNX export the first run lasts well beyond the second's start-up.
    args = ("optimize", model, "-o", str(out), "--target", "onnx", "--no-bench")
    # A run killed outright (no clean-up possible) leaves its partial folder and its lock file.
    killed = start(*args, log=tmp_path / "killed.log")
    wait_for(lambda: _partial(out, killed.pid).exists(), killed, tmp_path / "killed.log")
    killed.kill()
    killed.wait(timeout=60)
    assert beside(out) == sorted([".out.lock", _partial(out, killed.pid).name])

    # The next run takes the dead run's lock (the kernel released it) and removes its leftovers.
    first, log = start(*args, log=tmp_path / "first.log"), tmp_path / "first.log"
    wait_for(lambda: not _partial(out, killed.pid).exists() and out.with_name(".out.lock").exists(), first, log)
    # A second run into the same folder meanwhile is refused at once, before loading anything.
    second = fxbench(*args)
    assert second.returncode == 2, second.stderr
    assert_one_error(second.stderr, f"another fxbench run (pid {first.pid}) is writing {out}")
    assert not ran(second.stderr, "load")
    assert first.wait(timeout=300) == 0, log.read_text()
    assert beside(out) == ["out"] and sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.pt2", "report.html", "report.json", "report.md"]


def test_the_final_rename_refuses_a_folder_that_appeared_meanwhile(tmp_path):
    """The lock keeps fxbench runs apart; anything else that fills the folder during the run is not
    replaced either: the rename into place fails, and the run's own files go."""
    out = tmp_path / "out"
    with pytest.raises(OutputExistsError, match="appeared while this run was writing it; pass --force"):
        with staged_directory(out) as staging:
            (staging / "model.pt2").write_text("ours")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")
    assert beside(out) == ["out"] and [p.name for p in out.iterdir()] == ["theirs.txt"]
    # An empty folder that appeared is no one's output: the rename takes its place.
    shutil.rmtree(out)
    with staged_directory(out) as staging:
        (staging / "model.pt2").write_text("ours")
        out.mkdir()
    assert [p.name for p in out.iterdir()] == ["model.pt2"]


def test_an_old_output_moved_aside_by_a_killed_force_run_is_put_back(tmp_path):
    out = tmp_path / "out"
    old = tmp_path / ".out.4242.old"  # killed between the two renames of a --force replacement
    old.mkdir()
    (old / "model.pt2").write_text("previous")
    (tmp_path / ".out.4242.partial").mkdir()
    with pytest.raises(OutputExistsError, match="not empty"):
        with staged_directory(out):
            pass
    assert beside(out) == ["out"] and (out / "model.pt2").read_text() == "previous"


def test_a_write_error_in_an_artifact_stops_the_run_and_keeps_nothing(tmp_path):
    with pytest.raises(OutputWriteError, match="no space left on the device"):
        with staged_directory(tmp_path / "out") as staging:
            (staging / "model.pt2").write_text("half")
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


# --- stages that fail: one line naming the stage, the op and the model ----------------------------

def _tiny_deberta() -> transformers.PreTrainedModel:
    cfg = transformers.DebertaV2Config(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=128, architectures=["DebertaV2Model"])
    return transformers.DebertaV2Model(cfg)


def _tiny_t5() -> transformers.PreTrainedModel:
    cfg = transformers.T5Config(vocab_size=1000, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                                decoder_start_token_id=0, architectures=["T5ForConditionalGeneration"])
    return transformers.T5ForConditionalGeneration(cfg)


@pytest.mark.parametrize("make", [_tiny_deberta, _tiny_t5], ids=["deberta-v2", "t5"])
def test_deberta_v2_and_t5_optimize_and_export_to_onnx(tmp_path, make):
    """Both failed at the save (`Can't detach views in-place`, remove-noops had removed the copy
    their `torch.tensor(...).detach_()` writes), and T5 again at the ONNX export (a dropped contiguous)."""
    torch.manual_seed(0)
    make().save_pretrained(tmp_path / "model")
    result = optimize(OptimizeRequest(model=str(tmp_path / "model"), output=tmp_path / "out", targets=("onnx",), bench=False))
    assert [a.kind for a in result.report.artifacts] == ["program", "onnx"] and not result.export_failures
    assert all(a.parity and min(p["cosine"] for p in a.parity.values()) > 0.9999 for a in result.report.artifacts)
    assert next(r for r in result.report.passes if r.name == "remove-noops").status == "applied"


class _Copies(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = x * 2
        kept = y.clone()
        kept.add_(1)  # written in place: without the copy, y would change too
        scale = torch.tensor(4.0).detach_()  # DeBERTa's and T5's idiom: a fresh constant, written in place
        dropped = (y * 3).clone()  # nothing writes it: a copy that does nothing
        return y / scale, kept, dropped


def test_remove_noops_keeps_a_copy_that_is_written_in_place():
    gm = torch.export.export(_Copies(), (torch.randn(2, 3),), strict=False).module()
    count = lambda g, op: sum(n.target == op for n in g.graph.nodes)  # noqa: E731
    aten = torch.ops.aten
    assert count(gm, aten.clone.default) == 2 and count(gm, aten.lift_fresh_copy.default) == 1
    first = RemoveNoops()(gm)
    assert first.modified
    assert count(first.graph_module, aten.clone.default) == 1  # the unwritten copy went, the written one stayed
    assert count(first.graph_module, aten.lift_fresh_copy.default) == 1  # detach_ writes it
    x = torch.randn(2, 3)
    for got, want in zip(first.graph_module(x), _Copies()(x)):
        torch.testing.assert_close(got, want)
    assert not RemoveNoops()(first.graph_module).modified


def _broken(x: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("no kernel for this op")


def test_a_re_export_failure_names_the_node_and_the_model(captured):
    cap = captured("gpt2")
    gm = cap.graph_module()
    node = next(n for n in gm.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.tanh.default)
    node.target = _broken
    gm.recompile()
    with pytest.raises(ReexportError) as info:
        export_graph_module(gm, cap)
    message = str(info.value)
    assert message.startswith(f"re-export of the optimized graph of gpt2 (GPT2LMHeadModel) failed at _broken (node {node.name}, "
                              f"module transformer.h.0.mlp")
    assert "RuntimeError: no kernel for this op" in message and info.value.node.op == str(_broken)


def test_an_unforeseen_failure_is_one_line_naming_the_stage_and_v_shows_the_traceback(tiny_dir, tmp_path, monkeypatch):
    import fxbench.jobs.common as common

    def explode(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - a fault injected into the load stage
        raise RuntimeError("the weights are on fire")

    monkeypatch.setattr(common, "load_model", explode)
    monkeypatch.setenv("FXBENCH_VERBOSE", "")  # `-v` below sets it in this process: put back afterwards
    code, lines = cli("optimize", str(tiny_dir("gpt2")), "-o", str(tmp_path / "a"))
    assert code == 1
    assert_one_error(lines, "error: load failed: RuntimeError: the weights are on fire; rerun with -v for the traceback")
    code, lines = cli("-v", "optimize", str(tiny_dir("gpt2")), "-o", str(tmp_path / "b"))
    assert code == 1 and any(ln.startswith("Traceback") for ln in lines) and lines[-1].startswith("error: load failed")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_exporters_unforeseen_failure_is_its_failure_in_one_line(captured, tmp_path, monkeypatch, capsys):
    from fxbench.exporters import TARGETS, ExportSubject, ExportTarget, export_artifacts, register_target

    def make(c):  # noqa: ANN001, ANN202
        raise RuntimeError("the converter crashed")

    register_target(ExportTarget("onnx-broken", "a target that crashes", {"any": ("model.broken.onnx",)}, make, kind="onnx"))
    try:
        cap = captured("gpt2")
        subject = ExportSubject(cap.exported, cap, cap.output_names)
        monkeypatch.setenv("FXBENCH_VERBOSE", "1")
        made = export_artifacts(subject, ["onnx-broken"], tmp_path)
        (failure,) = made.failures
        assert failure.error_type == StageError.__name__ and failure.exit_code == 1
        assert failure.error.startswith("--to onnx-broken failed on this gpt2 model: RuntimeError: the converter crashed; drop onnx-broken")
        assert "Traceback" in capsys.readouterr().err  # -v: shown where it was turned into the line
        assert list(tmp_path.iterdir()) == []
    finally:
        TARGETS.pop("onnx-broken")


def _data_dependent(x: torch.Tensor) -> torch.Tensor:
    return x + 0 * int((x > 0).any())  # exact when run; under export, int() of a traced value fails


class _InsertCheck(FxbenchPass):
    """A pass whose op runs eagerly but cannot be exported: what a third-party pass may do."""

    name = "insert-check"

    def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
        node = next(n for n in graph_module.graph.nodes if n.target == torch.ops.aten.tanh.default)
        with graph_module.graph.inserting_after(node):
            check = graph_module.graph.call_function(_data_dependent, (node,))
        node.replace_all_uses_with(check, delete_user_cb=lambda user: user is not check)
        graph_module.recompile()
        return PassResult(graph_module, True)


def test_a_re_export_failure_names_the_pass_that_made_the_op(captured, tmp_path):
    from fxbench.jobs.optimize import _save_program

    cap = captured("gpt2")
    result = run_pipeline(cap.graph_module(), [_InsertCheck()], inputs=dict(cap.inputs.tensors), reference=cap.reference,
                          output_names=cap.output_names)
    assert [r.status for r in result.records] == ["applied"]  # it runs, and exactly
    with pytest.raises(ReexportError) as info:
        _save_program(cap, result, tmp_path, lambda *event: None, {}, "")
    message = str(info.value)
    assert message.startswith("re-export of the optimized graph of gpt2 (GPT2LMHeadModel) failed at _data_dependent (node ")
    assert message.endswith("insert-check added that op: try --passes -insert-check") and list(tmp_path.iterdir()) == []


class _Raises(FxbenchPass):
    """A pass that raises while it works on the graph."""

    name = "raises"

    def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
        raise RuntimeError("this pass is broken")


class _BreaksTheGraph(FxbenchPass):
    """A pass whose graph no longer runs: an op that raises when executed."""

    name = "breaks-the-graph"

    def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
        node = next(n for n in graph_module.graph.nodes if n.target == torch.ops.aten.tanh.default)
        node.target = _broken
        graph_module.recompile()
        return PassResult(graph_module, True)


@pytest.mark.parametrize("bad, message", [
    (_Raises, "pass raises failed on this gpt2 model: RuntimeError: this pass is broken; "),
    (_BreaksTheGraph, "pass breaks-the-graph on this gpt2 model at _broken (node "),
])
def test_a_pass_failing_under_strict_names_the_model_the_node_and_what_to_try(captured, bad, message):
    from fxbench.errors import VerificationError
    from fxbench.jobs.common import pass_context

    cap = captured("gpt2")
    kwargs = dict(inputs=dict(cap.inputs.tensors), reference=cap.reference, output_names=cap.output_names, context=pass_context(cap))
    # Without --strict: rolled back and recorded, the graph as it was.
    result = run_pipeline(cap.graph_module(), [bad()], **kwargs)
    assert [r.status for r in result.records] == ["failed"] and result.parity.cosine > 0.9999
    with pytest.raises(VerificationError) as info:
        run_pipeline(cap.graph_module(), [bad()], strict=True, **kwargs)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text, text
    assert text.endswith(f"run without --strict to roll it back, or leave it out: --passes -{bad.name}")


@pytest.mark.parametrize("args, message", [
    (("optimize", "--bogus"), "error: No such option: --bogus (Possible options: --rounds, --verbose); see fxbench optimize --help"),
    (("optimize", "--sample-batch", "x"), "error: Invalid value for '--sample-batch': Input should be a valid integer"),
    (("bogus",), "error: No such command 'bogus'; see fxbench --help"),
])
def test_a_usage_error_is_one_line_too(args, message):
    proc = fxbench(*args)
    assert proc.returncode == 2
    assert_one_error(proc.stderr, message)
