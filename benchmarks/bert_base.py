"""A BERT-base-sized model (random weights from the standard config: hidden 768, 12 layers, 12 heads,
3072 intermediate, vocab 30522) on the CPU, and on CUDA when present: eager fp32 (and fp16 on a GPU),
torch.compile max-autotune, ONNX Runtime on a plain export, and every artifact of fxbench's
pipelines for the device (CPU: O2, int8-cpu, bf16-cpu with AMX or AVX-512 BF16; CUDA: O2, O3, bf16: ONNX, ORT-optimized ONNX,
AOTInductor, TensorRT where installed), side by side in one run per device; on the CPU also the int8
peers (ONNX Runtime's transformer optimizer + quantize_dynamic; CTranslate2 int8 when installed) in
the same interleaved rounds, with the final-hidden-state cosine of each over 48 sentences. The best
artifact and the targets (CPU: at least 1.10x the ORT recipe at final-hidden cosine mean >= 0.995, min
>= 0.99; CUDA: at least 10x eager fp32, no slower than max-autotune) are judged on the same numbers.

    python benchmarks/bert_base.py [--quick] [--device cpu|cuda|all] [--batch 1,8] [--seq 128,512] [--work DIR]

Results: benchmarks/results/bert_base-<device>.json (+ .md), with the environment and the command.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch
import transformers
from _common import (
    backend_summary, check_shape_parity, command, cpu_isa, fastest, fxbench_backends, parse_args, ratio, save, sentence_accuracy, settings,
    shapes,
)
from peers import peer_backends, peers

from fxbench.models import SENTENCES, capture, demo_model_path, load_model
from fxbench.jobs import run_benchmark
from fxbench.passes import search_space
from fxbench.runtime import Backend


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


# fxbench's pipelines per device: exact fp32 and the device's fastest precisions (on a CPU, those its
# search tries: bf16-cpu only where the CPU multiplies bf16 in hardware).
PIPELINES = {"cpu": list(search_space("cpu")), "cuda": ["O2", "O3", "bf16"]}
TARGETS = {"cuda": (10.0, "compile-max-autotune")}  # speedup over eager fp32, and the backend to be no slower than
CPU_OVER_ORT_RECIPE, MIN_MEAN, MIN_MIN, CHECK_COSINE = 1.10, 0.995, 0.99, 0.98


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], devices=True)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()] or devices
    warmup, measure = settings(args)
    # --work: a folder kept between runs; the fxbench folders and the plain export made there by an
    # earlier run (same code) are reused, and the peers are built again.
    work = args.work or Path(tempfile.mkdtemp(prefix="fxbench-bert-base-"))
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    machine = cpu_isa()
    threads = args.threads or (2 if "cpu" in devices else None)

    t = time.perf_counter()
    folder = bert_base(work / "bert-base")
    captured = capture(load_model(str(folder)))
    seconds["load and capture"] = time.perf_counter() - t
    if not (work / "model.onnx").is_file():
        t = time.perf_counter()
        torch.onnx.export(captured.exported, dynamo=True, f=str(work / "model.onnx"))
        seconds["plain onnx export"] = time.perf_counter() - t

    for device in devices:
        ours = fxbench_backends(captured, PIPELINES[device], work, device, seconds)
        theirs, skipped, built = [], {}, []
        if device == "cpu":
            built, skipped = peers(folder, work / "peers", threads=threads)
            theirs = peer_backends(built)
            for p in built:
                seconds[f"peer: {p.name}"] = p.seconds
            for name, why in skipped.items():
                print(f"skip peer {name}: {why}")
        backends = [
            Backend("eager"),
            *theirs,
            *([Backend("eager-fp16")] if device == "cuda" else []),
            Backend("compile-max-autotune"),
            *([Backend("ort", work / "model.onnx", label="ort (plain export)")] if device == "cpu" else [
                Backend("ort-cuda", work / "model.onnx", label="ort-cuda (plain export)"),
                Backend("ort-cuda-graph", work / "model.onnx", label="ort-cuda-graph (plain export)"),
            ]),
            *ours,
        ]
        result = run_benchmark(captured, backends, shapes(args), device=device, threads=threads if device == "cpu" else args.threads,
                               warmup=warmup, measure=measure, command=command(), events=_print)
        targets: dict[str, object] = {}
        accuracy = (sentence_accuracy(captured, [b for b in backends if b.name != "eager" and not b.name.startswith("compile")], SENTENCES,
                                      threads=threads, pooled=False) if device == "cpu" else {})
        for shape in result.shapes:
            rows = backend_summary(result, [b.label for b in backends], shape)
            mine = fastest([r for r in rows if r["backend"] in {b.label for b in ours}], 0.99)
            entry: dict[str, object] = {"best": mine, "summary": rows}
            if device == "cpu":
                for r in rows:
                    r["final_hidden_cosine"] = accuracy.get(r["backend"])
                ok = [r for r in rows if r["backend"] in {b.label for b in ours} and r["status"] == "ok"
                      and (r["final_hidden_cosine"] or {}).get("mean", 0) >= MIN_MEAN and (r["final_hidden_cosine"] or {}).get("min", 0) >= MIN_MIN]
                best = min(ok, key=lambda r: r["median_ms"]) if ok else None
                recipe = next((b.label for b in theirs if b.name == "peer-ort-recipe"), None)
                over = ratio(rows, best and best["backend"], recipe)
                checks = check_shape_parity([work / "fxbench-int8-cpu-cpu"])
                entry["best"] = best
                entry[f">= {CPU_OVER_ORT_RECIPE}x the ORT recipe at final-hidden cosine mean >= {MIN_MEAN}, min >= {MIN_MIN}"] = {
                    "ratio": over, "recipe": recipe, "skipped_peers": skipped, "met": bool(over and over >= CPU_OVER_ORT_RECIPE)}
                entry[f"every int8 artifact passes fxbench's check at batch 3, seq 40 (cosine >= {CHECK_COSINE})"] = {
                    "checks": checks, "met": bool(checks) and all((c["cosine"] or 0) >= CHECK_COSINE for c in checks.values())}
            if device in TARGETS:
                speedup, rival = TARGETS[device]
                other = next((r for r in rows if r["backend"] == rival), None)
                entry[f">= {speedup}x eager fp32"] = bool(mine and mine["speedup"] and mine["speedup"] >= speedup)
                entry[f"no slower than {rival}"] = bool(mine and other and other["status"] == "ok" and mine["median_ms"] <= other["median_ms"])
            targets[shape.label] = entry
        for shape_label, entry in targets.items():
            for what, verdict in entry.items():  # type: ignore[union-attr]
                if isinstance(verdict, dict) and "met" in verdict:
                    print(f"target {'met' if verdict['met'] else 'NOT met'} ({shape_label}): {what}")
        save("bert_base", result, args, {"preparation_seconds": dict(seconds), "model": "BertModel, bert-base config, random weights (seed 0)",
                                         "machine": machine, "peers": {p.name: p.details for p in built}, "targets": targets},
             fxbench=[b.label for b in ours])


def _print(step: str, status: str, detail: str) -> None:
    if status != "start":
        print(f"{status:>5} {step}: {detail}", flush=True)


if __name__ == "__main__":
    main()
