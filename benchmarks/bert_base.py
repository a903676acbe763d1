"""A BERT-base-sized model (random weights from the standard config: hidden 768, 12 layers, 12 heads,
3072 intermediate, vocab 30522) on the CPU, and on CUDA when present: eager fp32 (and fp16 on a GPU),
torch.compile max-autotune, AOTInductor, ONNX Runtime and fxbench's artifacts, side by side in one
run per device; the best artifact is picked from the same numbers.

    python benchmarks/bert_base.py [--quick] [--device cpu|cuda|all] [--batch 1,8] [--seq 128,512]

Results: benchmarks/results/bert_base-<device>.json (+ .md), with the environment and the command.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch
import transformers
from _common import command, parse_args, save, settings, shapes

from fxbench.exporters import load_program, read_artifacts
from fxbench.models import demo_model_path
from fxbench.runtime import Backend, OptimizeRequest, optimize, run_benchmark
from fxbench.runtime.backends import folder_backends


def bert_base(folder: Path) -> Path:
    """bert-base-uncased's architecture with seed-0 random weights, and its WordPiece tokenizer (the
    demo model ships the same 30522-token uncased vocabulary)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(architectures=["BertModel"])  # the defaults are BERT-base
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size, config.vocab_size) == (768, 12, 12, 3072, 30522)
    transformers.BertModel(config).eval().save_pretrained(folder)
    demo = demo_model_path()
    if demo is not None:  # without it, token ids come from the config (random), which times the same
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            if (demo / name).is_file():
                shutil.copy(demo / name, folder / name)
    return folder


def aoti_package(program_path: Path, device: str, out: Path) -> Path:
    """The fxbench program compiled ahead of time for `device` (until the AOTInductor exporter lands)."""
    program = load_program(program_path)
    if device == "cuda":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, "cuda")
    return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(out)))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], devices=True)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()] or devices
    warmup, measure = settings(args)
    work = Path(tempfile.mkdtemp(prefix="fxbench-bert-base-"))
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    optimized = optimize(OptimizeRequest(model=str(bert_base(work / "bert-base")), output=work / "fxbench"))
    seconds["fxbench optimize"] = time.perf_counter() - t
    captured = optimized.captured
    t = time.perf_counter()
    torch.onnx.export(captured.exported, dynamo=True, f=str(work / "model.onnx"))
    seconds["plain onnx export"] = time.perf_counter() - t

    for device in devices:
        t = time.perf_counter()
        aoti = aoti_package(work / "fxbench" / "model.pt2", device, work / f"model.aoti-{device}.pt2")
        seconds[f"aoti compile ({device})"] = time.perf_counter() - t
        ours = [
            Backend("aoti", aoti, label="aoti (fxbench program)"),
            # fxbench's artifacts as the optimize folder lists them (model.pt2 today; the exporters' files once merged).
            *folder_backends(work / "fxbench", read_artifacts(work / "fxbench"), device)[1:],
        ]
        backends = [
            Backend("eager"),
            *([Backend("eager-fp16")] if device == "cuda" else []),
            Backend("compile-max-autotune"),
            *([Backend("ort", work / "model.onnx", label="ort (plain export)")] if device == "cpu" else [
                Backend("ort-cuda", work / "model.onnx", label="ort-cuda (plain export)"),
                Backend("ort-cuda-graph", work / "model.onnx", label="ort-cuda-graph (plain export)"),
            ]),
            *ours,
        ]
        result = run_benchmark(captured, backends, shapes(args), device=device, threads=args.threads, warmup=warmup, measure=measure,
                               command=command(), events=_print)
        save("bert_base", result, args, {"preparation_seconds": dict(seconds), "model": "BertModel, bert-base config, random weights (seed 0)"},
             fxbench=[b.label for b in ours])


def _print(step: str, status: str, detail: str) -> None:
    if status != "start":
        print(f"{status:>5} {step}: {detail}", flush=True)


if __name__ == "__main__":
    main()
