"""`fxbench compare`: several runs' benchmarks side by side (report.json files or output folders), with
the ratios, the accuracy, and what differs in the machines, versions and settings behind them."""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fxbench.errors import FxbenchError
from fxbench.reports.records import ComparedRow, ComparedRun, Comparison
from fxbench.reports.schema import check_version
from fxbench.runtime.bench import BASELINE, BenchResult
from fxbench.runtime.harness import clearly_faster

__all__ = ["compare_runs", "read_benchmark"]

# Keys that differ on every run and explain nothing about the numbers' provenance.
_IGNORED = {"command", "created"}


def _report_path(target: str | Path) -> Path:
    path = Path(target).expanduser()
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise FxbenchError(f"no report.json at {target}; give fxbench output folders or their report.json files")
    return path


def read_benchmark(target: str | Path) -> tuple[Path, dict[str, Any], BenchResult]:
    """The report at `target` (a report.json or a folder holding one) and the benchmark in it: an
    optimize report's, or a bench report itself. An optimize folder without a benchmark falls back
    to the `fxbench bench DIR` report in DIR/bench."""
    path = _report_path(target)
    data = _load(path)
    if data.get("kind") in ("optimize", "export") and not data.get("benchmark"):
        nested = path.parent / "bench" / "report.json"
        if nested.is_file():
            return read_benchmark(nested)
        raise FxbenchError(f"{path} holds no benchmark (written with --no-bench or by export); run fxbench bench {path.parent} first")
    if data.get("kind") == "bench":
        return path, data, BenchResult.from_dict(data)
    return path, data, BenchResult.from_dict(data["benchmark"], environment=data.get("environment"))


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FxbenchError(f"{path} is not an fxbench report ({exc})") from exc
    if not isinstance(data, dict):
        raise FxbenchError(f"{path} is not an fxbench report")
    check_version(data, str(path))
    return data


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, list):
            out[name] = ", ".join(map(str, value))
        else:
            out[name] = value
    return out


def _provenance(data: Mapping[str, Any], bench: BenchResult) -> dict[str, Any]:
    """What a run's numbers depend on, as flat keys: fxbench, the model, the machine and libraries,
    and the benchmark's settings."""
    model = bench.model or data.get("model") or {}
    facts: dict[str, Any] = {
        "fxbench_version": data.get("fxbench_version"),
        "model": model.get("model_id") or model.get("source"),
        "task": bench.task,
        "device": bench.device,
        "threads": bench.threads,
    }
    facts.update({f"settings.{k}": v for k, v in _flatten(bench.settings).items()})
    facts.update({f"environment.{k}": v for k, v in _flatten(bench.environment).items() if k not in _IGNORED})
    return facts


def _names(paths: Sequence[Path]) -> list[str]:
    """The shortest path tails that tell the runs apart (run1, run2; a/bench, b/bench)."""
    depth = 1
    while True:
        names = ["/".join(p.parent.parts[-depth:]) or str(p) for p in paths]
        if len(set(names)) == len(names) or depth > 32:
            return names
        depth += 1


def compare_runs(targets: Sequence[str | Path]) -> Comparison:
    """Every backend and shape of the runs, side by side: median latency, its spread, speedup over
    the run's own eager, worst cosine, and the first run's median over each other's (above 1: faster
    than the first), with whether that change is larger than the noise of both; and the facts
    (versions, CPU, ISA, threads, settings) that differ between the runs."""
    if len(targets) < 2:
        raise FxbenchError("compare needs at least two runs: fxbench compare RUN_A RUN_B [RUN_C ...]")
    if len(targets) > len(string.ascii_uppercase):
        raise FxbenchError(f"compare takes at most {len(string.ascii_uppercase)} runs")
    loaded = [read_benchmark(t) for t in targets]
    keys = list(string.ascii_uppercase[: len(loaded)])
    names = _names([p for p, _, _ in loaded])
    runs = []
    for key, name, (path, data, bench) in zip(keys, names, loaded):
        best = (data.get("best") or {}).get("backend") if data.get("kind") == "optimize" else None
        runs.append(ComparedRun(key, str(path), data.get("kind", "?"), str((bench.model or {}).get("name") or name), data.get("created", ""),
                                bench.device, bench.threads, best))
    order: list[tuple[str, str]] = []
    for _, _, bench in loaded:
        for m in bench.measurements:
            if (m.backend, m.shape.label) not in order:
                order.append((m.backend, m.shape.label))
    shapes = list(dict.fromkeys(s for _, s in order))
    # Shape by shape, eager first, then the backends in the order the runs list them.
    order.sort(key=lambda k: (shapes.index(k[1]), k[0] != BASELINE))
    rows = []
    for label, shape_label in order:
        per = []
        for _, _, bench in loaded:
            m = next((x for x in bench.measurements if x.backend == label and x.shape.label == shape_label and x.latency is not None), None)
            per.append((bench, m))
        first = per[0][1]
        rows.append(ComparedRow(
            backend=label, shape=shape_label,
            median_ms=tuple(m.latency.median_ms if m and m.latency else None for _, m in per),
            spread=tuple(m.latency.spread if m and m.latency else None for _, m in per),
            speedup=tuple(b.speedup(label, m.shape) if m else None for b, m in per),
            cosine=tuple(m.parity.cosine if m and m.parity else None for _, m in per),
            ratio=tuple(None if i == 0 or not (first and m and first.latency and m.latency) else first.latency.median_ms / m.latency.median_ms
                        for i, (_, m) in enumerate(per)),
            beyond_noise=tuple(None if i == 0 or not (first and m and first.latency and m.latency)
                               else clearly_faster(first.latency, m.latency) or clearly_faster(m.latency, first.latency)
                               for i, (_, m) in enumerate(per)),
        ))
    facts = [_provenance(data, bench) for _, data, bench in loaded]
    all_keys = list(dict.fromkeys(k for f in facts for k in f))
    differences = {k: tuple(f.get(k) for f in facts) for k in all_keys if len({json.dumps(f.get(k), sort_keys=True) for f in facts}) > 1}
    return Comparison(tuple(runs), tuple(rows), differences)
