"""What each ONNX Runtime optimization level and fxbench's transformer fusions buy in latency on one model.

    python benchmarks/ort_levels.py [MODEL] [--batch 1] [--seq 128] [--runs 200] [--threads 2]

MODEL is a model id or folder (default: the bundled MiniLM). The script exports it with fxbench's
ONNX exporter, then for fusions off/on and each level (disable, basic, extended, all) saves the
offline-optimized model with fxbench.exporters.onnx_ort.optimize_offline, loads that file with
ORT's optimizations off (so the stored graph is what is timed) and times it on tokenizer inputs.
Rounds are interleaved across variants so that load from other processes spreads evenly.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from fxbench.environment import collect_environment
from fxbench.exporters.checks import ExportSubject, build_checks
from fxbench.exporters.onnx import OnnxRunner, export_onnx
from fxbench.exporters.onnx_ort import ORT_LEVELS, optimize_offline
from fxbench.models import capture, demo_model_path, load_model
from fxbench.numerics import compare
from fxbench.reports import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    source = args.model or str(demo_model_path())
    captured = capture(load_model(source))
    subject = ExportSubject(captured.exported, captured, captured.output_names)
    work = Path(tempfile.mkdtemp(prefix="ort_levels."))
    exported = work / export_onnx(subject, work, build_checks(subject)).file
    inputs = captured.make_inputs(args.batch, args.seq, seed=0).tensors
    reference = captured.run_eager(inputs)

    variants: dict[tuple[str, str], OnnxRunner] = {}
    rows: dict[tuple[str, str], dict] = {}
    for fusions in (False, True):
        for level in ORT_LEVELS:
            path = work / f"{'fused' if fusions else 'plain'}-{level}.onnx"
            result = optimize_offline(exported, path, level=level, fusions=fusions)
            options = ort.SessionOptions()
            options.graph_optimization_level = ORT_LEVELS["disable"]
            options.intra_op_num_threads = args.threads
            runner = OnnxRunner(path, ["CPUExecutionProvider"], options)
            parity = compare(runner(inputs), reference, captured.output_names)
            key = ("on" if fusions else "off", level)
            variants[key] = runner
            nodes = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
            rows[key] = {"nodes": sum(nodes.values()), "fused": result.contrib_ops, "fusions": result.fusions,
                         "cosine": parity.cosine, "max_abs": parity.max_abs_error, "times": []}

    feeds = {key: runner.feeds(inputs) for key, runner in variants.items()}
    for key, runner in variants.items():
        for _ in range(10):
            runner.session.run(None, feeds[key])
    per_round = max(1, args.runs // args.rounds)
    for _ in range(args.rounds):
        for key, runner in variants.items():
            for _ in range(per_round):
                start = time.perf_counter()
                runner.session.run(None, feeds[key])
                rows[key]["times"].append(time.perf_counter() - start)

    base = statistics.median(rows[("off", "disable")]["times"])
    env = collect_environment(sys.argv)
    print(f"{captured.loaded.name}, batch {args.batch}, seq {args.seq}, {args.threads} threads, {per_round * args.rounds} runs each; "
          f"{env['cpu']}, onnxruntime {ort.__version__}, torch {torch.__version__}\n")
    print("| fusions | ORT level | nodes | fused ops | median ms | p10 ms | speed-up (median) | cosine vs eager |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for (fusions, level), row in rows.items():
        times = np.array(row["times"]) * 1000
        fused = ", ".join(f"{op} {n}" for op, n in row["fused"].items()) or "-"
        print(f"| {fusions} | {level} | {row['nodes']} | {fused} | {np.median(times):.2f} | {np.percentile(times, 10):.2f} | "
              f"{base * 1000 / np.median(times):.2f}x | {row['cosine']:.6f} |")
    fired = rows[("on", "disable")]["fusions"]
    print(f"\nfusions that fired: {', '.join(f'{k} {v}' for k, v in fired.items())}")
    results = Path(__file__).parent / "results" / "ort_levels-cpu.json"
    write_json({
        "benchmark": "ort_levels", "model": captured.loaded.name, "batch": args.batch, "seq": args.seq, "threads": args.threads,
        "runs": per_round * args.rounds, "environment": env,
        "variants": [
            {"fusions": f, "level": lvl, "nodes": row["nodes"], "fused_ops": row["fused"], "cosine": row["cosine"],
             "median_ms": float(np.median(np.array(row["times"]) * 1000)), "p10_ms": float(np.percentile(np.array(row["times"]) * 1000, 10)),
             "speedup": base / statistics.median(row["times"])}
            for (f, lvl), row in rows.items()
        ],
    }, results)
    print(f"results: {results}")


if __name__ == "__main__":
    main()
