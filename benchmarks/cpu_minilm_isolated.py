"""all-MiniLM-L6-v2, b1 x 128, each backend in a process of its own: eager fp32, the two int8 peers
and fxbench's artifacts from a `benchmarks/cpu_minilm.py --work DIR` folder, in interleaved rounds of
fresh processes. CTranslate2's thread pool slows PyTorch in the same process (AOTInductor 3.7 ms
alone, 9.5 ms beside a live ctranslate2.Encoder, measured here), so the one-process benchmark
understates torch's artifacts; this one is how a deployment runs: one runtime per process.

    python benchmarks/cpu_minilm_isolated.py --work DIR [--rounds 3] [--runs 200] [--threads 2]

Results: benchmarks/results/cpu_minilm_isolated-cpu.json (+ .md), with the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _inputs(threads: int):  # noqa: ANN202 - runs in the child
    import torch
    from transformers import AutoTokenizer

    from fxbench.models import SENTENCES, demo_model_path

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(demo_model_path()))
    text = " ".join(SENTENCES)  # 128 real tokens, no padding: every backend does the same work
    enc = tok(text, truncation=True, max_length=128, return_tensors="pt")
    assert enc["input_ids"].shape == (1, 128)
    return {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")}


def _child(kind: str, path: str, threads: int, runs: int) -> None:
    """One backend: load, warm up, time `runs` runs; print the median in ms as JSON."""
    inputs = _inputs(threads)
    if kind == "eager":
        import torch
        from transformers import AutoModel

        from fxbench.models import demo_model_path
        model = AutoModel.from_pretrained(str(demo_model_path())).eval()

        def step():  # noqa: ANN202
            with torch.inference_mode():
                return model(**inputs)
    elif kind == "aoti":
        import torch

        import fxbench.passes._quantize  # noqa: F401 - fxbench's row-quantize ops, for an int8 program
        runner = torch._inductor.aoti_load_package(path)

        def step():  # noqa: ANN202
            with torch.inference_mode():
                return runner(**inputs)
    elif kind == "ort":
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # a plain session, as a user loads it
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        feeds = {k: v.numpy() for k, v in inputs.items() if k in wanted}

        def step():  # noqa: ANN202
            return session.run(None, feeds)
    elif kind == "ct2":
        import ctranslate2
        import numpy as np
        encoder = ctranslate2.Encoder(path, device="cpu", compute_type="int8", intra_threads=threads, inter_threads=1)
        ids = ctranslate2.StorageView.from_array(np.ascontiguousarray(inputs["input_ids"].numpy().astype(np.int32)))
        lengths = ctranslate2.StorageView.from_array(np.asarray([128], dtype=np.int32))

        def step():  # noqa: ANN202
            return encoder.forward_batch(ids, lengths)
    else:
        raise SystemExit(f"unknown backend kind {kind}")
    start = time.perf_counter()
    while time.perf_counter() - start < 2.0:  # warm-up: two seconds of runs
        step()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps({"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3}))


def _backends(work: Path) -> dict[str, tuple[str, str]]:
    report = json.loads((work / "fxbench-default" / "report.json").read_text(encoding="utf-8"))
    best = report["best"]
    kind = best["backend"].split("@")[0]
    found = {
        "eager fp32": ("eager", ""),
        "ORT recipe (optimize_model O2 + quantize_dynamic per channel)": ("ort", str(work / "peers" / "ort" / "model.opt2.int8-pc.onnx")),
        "CTranslate2 int8": ("ct2", str(work / "peers" / "ct2-int8")),
        f"fxbench default's best: {report['pipeline']['name']} {best['artifact']}": (kind, str(work / "fxbench-default" / best["artifact"])),
    }
    int8 = work / "fxbench-int8-cpu-cpu" / "model.ort.onnx"
    if report["pipeline"]["name"] != "int8-cpu" and int8.is_file():
        found["fxbench int8-cpu model.ort.onnx"] = ("ort", str(int8))
    return {k: v for k, v in found.items() if not v[1] or Path(v[1]).exists()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="The --work folder of a benchmarks/cpu_minilm.py run.")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    from _common import cpu_isa

    machine = cpu_isa()
    backends = _backends(args.work)
    medians: dict[str, list[float]] = {k: [] for k in backends}
    for r in range(args.rounds):
        for label, (kind, path) in backends.items():
            got = subprocess.run([sys.executable, __file__, "--child", kind, path or "-", str(args.threads), str(args.runs)],
                                 capture_output=True, text=True, check=True)
            medians[label].append(json.loads(got.stdout.strip().splitlines()[-1])["median_ms"])
            print(f"round {r + 1}/{args.rounds} {label}: {medians[label][-1]:.3f} ms", flush=True)
    summary = {k: statistics.median(v) for k, v in medians.items()}
    peers = {k: v for k, v in summary.items() if k.startswith(("ORT recipe", "CTranslate2"))}
    ours = {k: v for k, v in summary.items() if k.startswith("fxbench")}
    fastest_peer = min(peers, key=peers.get)
    best = min(ours, key=ours.get)
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": machine,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "settings": {"batch": 1, "seq": 128, "threads": args.threads, "runs_per_process": args.runs, "rounds": args.rounds},
        "rounds_ms": medians, "median_of_rounds_ms": summary,
        "targets": {
            "fxbench best >= 1.1x the faster peer (one process per backend)": {
                "best": best, "fastest_peer": fastest_peer, "ratio": peers[fastest_peer] / ours[best],
                "met": peers[fastest_peer] / ours[best] >= 1.10},
            "fxbench best >= 3.0x eager fp32 (one process per backend)": {
                "speedup": summary["eager fp32"] / ours[best], "met": summary["eager fp32"] / ours[best] >= 3.0},
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_minilm_isolated-cpu.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    lines = ["# all-MiniLM-L6-v2, b1 x 128, one process per backend", "", f"`{result['command']}`; load after {result['load_average_after']}", "",
             "| backend | median of rounds ms | x eager | rounds |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {k} | {v:.3f} | {summary['eager fp32'] / v:.2f} | {', '.join(f'{x:.2f}' for x in medians[k])} |" for k, v in summary.items()]
    lines += ["", *(f"- {k}: {json.dumps(v)}" for k, v in result["targets"].items())]
    (args.out / "cpu_minilm_isolated-cpu.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
