"""What the benchmark scripts share: their command line, timing settings, and where results go."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fxbench.exporters import ExportOptions, read_artifacts
from fxbench.models import CapturedProgram
from fxbench.jobs import OptimizeRequest, optimize_captured
from fxbench.reports import jsonable, render_markdown, render_table
from fxbench.runtime import Backend, BenchResult, Measure, Shape, Warmup, best_artifact, folder_backends, shapes_from

RESULTS = Path(__file__).resolve().parent / "results"


def quiet() -> None:
    """Library chatter (weight-loading bars, deprecation notes, exporter progress) would bury the
    benchmark's own lines."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    for name in ("torch", "torch._dynamo", "torch._inductor", "torch.export", "torch.onnx", "transformers", "torchao", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def parse_args(description: str, *, batch: str = "1", seq: str = "128", devices: bool = False) -> argparse.Namespace:
    quiet()
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="Short warm-up and timing: proves the script, not the numbers.")
    p.add_argument("--batch", default=batch, help=f"Batch sizes, comma-separated (default {batch}).")
    p.add_argument("--seq", default=seq, help=f"Sequence lengths, comma-separated (default {seq}).")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime (default: torch's).")
    p.add_argument("--time", type=float, default=5.0, help="Seconds of timed runs per backend and shape, over all rounds (default 5).")
    p.add_argument("--rounds", type=int, default=5, help="Rounds the backends' timed runs are interleaved in (default 5): ratios that hold on a noisy machine.")
    p.add_argument("--note", default="", help="A note stored with the results, e.g. 'noisy: other jobs on the machine'.")
    p.add_argument("--out", type=Path, default=RESULTS, help="Folder for <name>-<device>.json and .md.")
    p.add_argument("--no-spin", action="store_true",
                   help="ONNX Runtime sessions (fxbench's and the ORT peer's) without spin-waiting threads: on a host with more "
                        "runnable threads than cores, spinning costs ORT several times its speed (recorded in the JSON).")
    p.add_argument("--work", type=Path, default=None,
                   help="Work folder; fxbench output folders already in it are reused instead of optimized again.")
    if devices:
        p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all", help="cpu, cuda, or all (cuda only when present).")
    args = p.parse_args()
    if args.no_spin:
        from fxbench.runtime.sessions.onnxruntime import NO_SPIN_ENV

        os.environ[NO_SPIN_ENV] = "1"
    return args


def settings(args: argparse.Namespace) -> tuple[Warmup, Measure]:
    if args.quick:
        return Warmup(iters=3, seconds=0.2), Measure(seconds=0.5, min_iters=5, rounds=min(args.rounds, 2))
    return Warmup(iters=10, seconds=1.0), Measure(seconds=args.time, min_iters=10, rounds=args.rounds)


def shapes(args: argparse.Namespace) -> list[Shape]:
    return shapes_from([int(b) for b in args.batch.split(",")], [int(s) for s in args.seq.split(",")])


def fxbench_backends(captured: CapturedProgram, pipelines: Sequence[str], work: Path, device: str,
                     seconds: dict[str, float], done: dict[str, Path] | None = None) -> list[Backend]:
    """Every artifact that `fxbench optimize --pipeline P` makes for `device`, for each pipeline, on
    one capture, labelled "P backend@file". `done` maps pipelines optimized already to their folder."""
    out: list[Backend] = []
    for pipeline in pipelines:
        folder = (done or {}).get(pipeline)
        if folder is None and (work / f"fxbench-{pipeline}-{device}" / "report.json").is_file():
            folder = work / f"fxbench-{pipeline}-{device}"  # made by an earlier run in this work folder
        if folder is None:
            folder = work / f"fxbench-{pipeline}-{device}"
            t = time.perf_counter()
            optimize_captured(captured, OptimizeRequest(output=folder, pipeline=pipeline, bench=False, export=ExportOptions(device=device)))
            seconds[f"fxbench optimize --pipeline {pipeline} --no-bench ({device})"] = time.perf_counter() - t
        for backend in folder_backends(folder, read_artifacts(folder), device)[1:]:
            out.append(dataclasses.replace(backend, label=f"{pipeline} {backend.label}"))
    return out


def backend_summary(result: BenchResult, labels: Sequence[str], shape: Shape) -> list[dict[str, Any]]:
    """Per backend at `shape`: median latency, speedup against eager fp32, worst cosine and the task's agreement."""
    rows = []
    for label in labels:
        m = result.measurement(label, shape)
        if m is None or m.status != "ok" or m.latency is None or m.parity is None:
            rows.append({"backend": label, "status": m.status if m else "not run", "reason": m.reason if m else ""})
            continue
        rows.append({
            "backend": label, "status": "ok", "median_ms": m.latency.median_ms, "speedup": result.speedup(label, shape),
            "worst_cosine": m.parity.cosine, "agreement": m.parity.agreement.value if m.parity.agreement else None,
            "parity_passed": m.parity.passed,
        })
    return rows


def fastest(rows: Sequence[dict[str, Any]], min_agreement: float) -> dict[str, Any] | None:
    """The fastest row whose task agreement (for embeddings: mean sentence cosine) is at least `min_agreement`."""
    ok = [r for r in rows if r["status"] == "ok" and (r["agreement"] or 0.0) >= min_agreement]
    return min(ok, key=lambda r: r["median_ms"]) if ok else None


def save(name: str, result: BenchResult, args: argparse.Namespace, extra: dict[str, Any], fxbench: list[str]) -> Path:
    """Write <name>-<device>.json (the whole result, with the environment and the exact command)
    and a .md beside it; print the table and fxbench's best artifact (among the `fxbench` labels)."""
    from rich.console import Console

    args.out.mkdir(parents=True, exist_ok=True)
    best = best_artifact(result, min_cosine=0.999, among=fxbench)
    data = {
        "benchmark": name,
        "quick": bool(args.quick),
        "note": args.note,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "ort_spinning": not getattr(args, "no_spin", False),
        "fxbench_backends": fxbench,
        "best_artifact": best.to_dict() if best else None,  # fxbench's fastest artifact at cosine >= 0.999
        **extra,
        "result": result.to_dict(),
    }
    path = args.out / f"{name}-{result.device}.json"
    path.write_text(json.dumps(jsonable(data), indent=2) + "\n", encoding="utf-8")
    note = f"\n> {args.note}\n" if args.note else ""
    path.with_suffix(".md").write_text(render_markdown(result) + note, encoding="utf-8")
    console = Console(width=200)
    console.print(render_table(result))
    if best:
        speed = f", {best.speedup:.2f}x eager" if best.speedup else ""
        console.print(f"fxbench's best artifact (cosine >= 0.999): {best.backend}, {best.median_ms:.3f} ms{speed}")
    console.print(f"results: {path}")
    return path


def command() -> list[str]:
    return [sys.executable.rsplit("/", 1)[-1], *sys.argv]


# ----- the CPU int8 comparison (issue 10): peers beside fxbench, accuracy per sentence, the ISA

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_isa() -> dict[str, Any]:
    """The CPU's model and the ISA extensions int8 kernels dispatch on (from /proc/cpuinfo): VNNI
    and AMX decide how fast an int8 GEMM is, so results only transfer between CPUs that agree here."""
    flags: set[str] = set()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"model": model, "hypervisor": "hypervisor" in flags, "isa": {f: f in flags for f in ISA_FLAGS},
            "load_average_before": [round(x, 2) for x in os.getloadavg()]}


def sentence_accuracy(captured: CapturedProgram, backends: Sequence[Backend], sentences: Sequence[str], *, threads: int | None,
                      pooled: bool = True) -> dict[str, dict[str, float]]:
    """Mean and min cosine, against eager fp32, of each backend's mean-pooled `last_hidden_state`
    for `sentences`, each at its own length (batch 1: no padding), as a user embeds them; with
    `pooled` False, of the whole final hidden state (random weights have no sentence meaning)."""
    import torch

    from fxbench.runtime import create_session
    from fxbench.runtime.agreement import mean_pool

    tokenizer = captured.loaded.preprocessor
    feeds = []
    for text in sentences:
        enc = tokenizer([text], return_tensors="pt", truncation=True, max_length=128)
        feeds.append({n: enc[n] if n in enc else torch.zeros_like(enc["input_ids"]) for n in captured.input_names})
    last = captured.output_names.index("last_hidden_state")

    def embeddings(run: Any) -> torch.Tensor:
        with torch.no_grad():
            if pooled:
                return torch.cat([mean_pool(run(f)[last].double(), f["attention_mask"]) for f in feeds])
            return torch.stack([run(f)[last].double().flatten() for f in feeds]) if len({f["input_ids"].shape for f in feeds}) == 1 \
                else torch.nn.utils.rnn.pad_sequence([run(f)[last].double().flatten() for f in feeds], batch_first=True)

    want = embeddings(lambda f: captured.eager(**f))
    out: dict[str, dict[str, float]] = {}
    for backend in backends:
        try:
            session = create_session(backend, captured, device="cpu", threads=threads)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
            out[backend.label] = {"error": " ".join(str(exc).split())[:200]}
            continue
        try:
            got = embeddings(session.run)
        finally:
            session.close()
        cos = torch.nn.functional.cosine_similarity(got, want, dim=1)
        out[backend.label] = {"mean": float(cos.mean()), "min": float(cos.min()), "sentences": len(sentences)}
    return out


def check_shape_parity(folders: Sequence[Path]) -> dict[str, Any]:
    """Each int8 artifact's own export check at the unseen shape (batch 3, seq 40): its cosine and whether it passed."""
    out: dict[str, Any] = {}
    for folder in folders:
        for artifact in read_artifacts(folder):
            if artifact.precision != "int8" or not artifact.parity:
                continue
            for check, parity in artifact.parity.items():
                if check.startswith("batch3"):
                    out[f"{folder.name}/{artifact.file} {check}"] = {"cosine": parity.get("cosine"), "passed": parity.get("passed")}
    return out


def ratio(rows: Sequence[dict[str, Any]], fast: str | None, slow: str | None) -> float | None:
    """How many times faster `fast` is than `slow` (median latency; both measured in the same rounds)."""
    by = {r["backend"]: r for r in rows if r.get("status") == "ok"}
    if fast not in by or slow not in by:
        return None
    return by[slow]["median_ms"] / by[fast]["median_ms"]
