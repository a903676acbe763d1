"""Breadth: `fxbench optimize` and `fxbench export --to onnx` on tiny random-weight configs of a wide
sample of the architectures transformers tests (encoders, decoders, encoder-decoders, vision, audio,
multimodal), each run as a user runs it, recording ok or the one error line it ended with.

    python benchmarks/breadth.py [--only NAME,...] [--pipeline O1] [--out benchmarks/results]

Each model is built from a small config (hidden sizes of 32-64, 2 layers, the sizes transformers'
own model testers use), saved as a Hub-style folder, then given to the CLI's own entry:
`fxbench optimize DIR --pipeline O1 --no-bench --target none -o OUT` (capture, passes, re-export,
model.pt2 saved and reloaded) and `fxbench export DIR --to onnx -o OUT`. A failure is "one line"
when stderr holds no traceback and its last line is the `error:` line. The models run in one worker
process (torch is imported once), restarted after a model that kills it. Results:
benchmarks/results/breadth.json (+ .md) with the environment and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (group, config class, model class, config kwargs). Sizes follow transformers' ModelTester
# classes (tests/models/*/test_modeling_*.py): tiny, so that each model takes seconds.
_TEXT = dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=128)
_DEC = dict(_TEXT, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_S2S = dict(vocab_size=1000, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
_VIT = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, num_labels=3)
_SPEECH = dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               conv_dim=(32, 32, 32), conv_stride=(4, 4, 4), conv_kernel=(8, 8, 8), num_conv_pos_embeddings=16,
               num_conv_pos_embedding_groups=2, pad_token_id=0)

SAMPLE: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    # encoders
    "bert": ("encoder", "BertConfig", "BertForSequenceClassification", _TEXT),
    "roberta": ("encoder", "RobertaConfig", "RobertaForMaskedLM", dict(_TEXT, pad_token_id=1)),
    "distilbert": ("encoder", "DistilBertConfig", "DistilBertForSequenceClassification",
                   dict(vocab_size=1000, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128)),
    "albert": ("encoder", "AlbertConfig", "AlbertForMaskedLM", dict(_TEXT, embedding_size=16)),
    "electra": ("encoder", "ElectraConfig", "ElectraForTokenClassification", dict(_TEXT, embedding_size=16)),
    "deberta": ("encoder", "DebertaConfig", "DebertaForSequenceClassification", dict(_TEXT, type_vocab_size=0)),
    "deberta-v2": ("encoder", "DebertaV2Config", "DebertaV2ForMaskedLM", dict(_TEXT, type_vocab_size=0)),
    "mpnet": ("encoder", "MPNetConfig", "MPNetForMaskedLM", _TEXT),
    "modernbert": ("encoder", "ModernBertConfig", "ModernBertForMaskedLM",
                   dict(_TEXT, global_attn_every_n_layers=2, local_attention=16, pad_token_id=0)),
    # decoders
    "gpt2": ("decoder", "GPT2Config", "GPT2LMHeadModel", dict(vocab_size=1000, n_embd=32, n_layer=2, n_head=4, n_positions=128)),
    "gpt-neo": ("decoder", "GPTNeoConfig", "GPTNeoForCausalLM",
                dict(vocab_size=1000, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                     window_size=8, max_position_embeddings=128)),
    "gptj": ("decoder", "GPTJConfig", "GPTJForCausalLM", dict(vocab_size=1000, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=128)),
    "gpt-neox": ("decoder", "GPTNeoXConfig", "GPTNeoXForCausalLM", _TEXT),
    "opt": ("decoder", "OPTConfig", "OPTForCausalLM",
            dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32,
                 max_position_embeddings=128)),
    "bloom": ("decoder", "BloomConfig", "BloomForCausalLM", dict(vocab_size=1000, hidden_size=32, n_layer=2, n_head=4)),
    "llama": ("decoder", "LlamaConfig", "LlamaForCausalLM", _DEC),
    "mistral": ("decoder", "MistralConfig", "MistralForCausalLM", dict(_DEC, sliding_window=None)),
    "qwen2": ("decoder", "Qwen2Config", "Qwen2ForCausalLM", _DEC),
    "qwen3": ("decoder", "Qwen3Config", "Qwen3ForCausalLM", dict(_DEC, head_dim=8)),
    "phi": ("decoder", "PhiConfig", "PhiForCausalLM", _TEXT),
    "phi3": ("decoder", "Phi3Config", "Phi3ForCausalLM", _DEC),
    "gemma2": ("decoder", "Gemma2Config", "Gemma2ForCausalLM", dict(_DEC, head_dim=8, sliding_window=16)),
    "falcon": ("decoder", "FalconConfig", "FalconForCausalLM", dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)),
    "mixtral": ("decoder", "MixtralConfig", "MixtralForCausalLM", dict(_DEC, num_local_experts=4, num_experts_per_tok=2, sliding_window=None)),
    # encoder-decoders
    "t5": ("encoder-decoder", "T5Config", "T5ForConditionalGeneration",
           dict(vocab_size=1000, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0)),
    "bart": ("encoder-decoder", "BartConfig", "BartForConditionalGeneration", _S2S),
    "pegasus": ("encoder-decoder", "PegasusConfig", "PegasusForConditionalGeneration", _S2S),
    "marian": ("encoder-decoder", "MarianConfig", "MarianMTModel", dict(_S2S, decoder_vocab_size=1000, pad_token_id=0)),
    "m2m100": ("encoder-decoder", "M2M100Config", "M2M100ForConditionalGeneration", _S2S),
    # vision
    "vit": ("vision", "ViTConfig", "ViTForImageClassification", _VIT),
    "beit": ("vision", "BeitConfig", "BeitForImageClassification", dict(_VIT, vocab_size=100)),
    "dinov2": ("vision", "Dinov2Config", "Dinov2ForImageClassification", dict(_VIT, image_size=32)),
    "swin": ("vision", "SwinConfig", "SwinForImageClassification",
             dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=3)),
    "convnext": ("vision", "ConvNextConfig", "ConvNextForImageClassification",
                 dict(image_size=32, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=3)),
    "resnet": ("vision", "ResNetConfig", "ResNetForImageClassification",
               dict(image_size=32, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=3)),
    "mobilenet-v2": ("vision", "MobileNetV2Config", "MobileNetV2ForImageClassification",
                     dict(image_size=32, depth_multiplier=0.25, num_labels=3)),
    "levit": ("vision", "LevitConfig", "LevitForImageClassification",
              dict(image_size=64, patch_size=16, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3], depths=[1, 1, 1],
                   key_dim=[8, 8, 8], down_ops=[["Subsample", 8, 1, 4, 2, 2], ["Subsample", 8, 2, 4, 2, 2]], num_labels=3)),
    # audio
    "wav2vec2": ("audio", "Wav2Vec2Config", "Wav2Vec2ForCTC", _SPEECH),
    "hubert": ("audio", "HubertConfig", "HubertForCTC", _SPEECH),
    "wavlm": ("audio", "WavLMConfig", "WavLMForCTC", _SPEECH),
    "whisper": ("audio", "WhisperConfig", "WhisperForConditionalGeneration",
                dict(_S2S, num_mel_bins=80, max_source_positions=64, max_target_positions=64, decoder_start_token_id=1)),
    "speech-to-text": ("audio", "Speech2TextConfig", "Speech2TextForConditionalGeneration",
                       dict(_S2S, input_feat_per_channel=24, input_channels=1, num_conv_layers=2, conv_kernel_sizes=(5, 5),
                            conv_channels=32, max_source_positions=256, max_target_positions=64)),
    # multimodal
    "clip": ("multimodal", "CLIPConfig", "CLIPModel",
             dict(text_config=dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                   max_position_embeddings=64),
                  vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64), projection_dim=16)),
    "siglip": ("multimodal", "SiglipConfig", "SiglipModel",
               dict(text_config=dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=64),
                    vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64))),
    "clip-vision": ("multimodal", "CLIPVisionConfig", "CLIPVisionModel",
                    dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "layoutlm": ("multimodal", "LayoutLMConfig", "LayoutLMForTokenClassification", _TEXT),
}


@dataclass
class Run:
    """One command on one model: its exit code, seconds, and the line it ended with."""

    command: str
    exit_code: int
    seconds: float
    line: str  # the `error:` line, or "" when it succeeded
    one_line: bool  # succeeded, or failed with one error line as the last line and no traceback

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass
class ModelResult:
    name: str
    group: str
    model_class: str
    runs: list[Run] = field(default_factory=list)
    build_error: str = ""

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ModelResult:
        return ModelResult(d["name"], d["group"], d["model_class"], [Run(**r) for r in d["runs"]], d["build_error"])


def interleaved() -> list[str]:
    """The whole sample, one model of each group in turn: a run stopped early is still a spread."""
    groups: dict[str, list[str]] = {}
    for name, (group, *_rest) in SAMPLE.items():
        groups.setdefault(group, []).append(name)
    order = []
    while any(groups.values()):
        for members in groups.values():
            if members:
                order.append(members.pop(0))
    return order


def build(name: str, folder: Path) -> str:
    """Build the tiny model `name` with seed 0 and save it to `folder`; returns its class name."""
    import torch
    import transformers

    _, config_name, model_name, kwargs = SAMPLE[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**kwargs)
    model = getattr(transformers, model_name)(config).eval()
    model.save_pretrained(folder)
    return model_name


def commands(model: Path, work: Path, pipeline: str) -> list[list[str]]:
    """What a user runs: optimize (passes, re-export, model.pt2 saved and reloaded), then the ONNX export."""
    return [
        ["optimize", str(model), "--pipeline", pipeline, "--no-bench", "--target", "none", "-o", str(work / "optimized")],
        ["export", str(model), "--to", "onnx", "-o", str(work / "exported")],
    ]


def _cli(argv: list[str]) -> Run:
    """One fxbench command through the CLI's own entry (typer app, its error lines and exit codes),
    in this process: the imports of torch and transformers are paid once for the whole sample."""
    import contextlib
    import io
    import traceback

    from fxbench import cli

    stderr = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.app(argv, prog_name="fxbench")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - what escaped the CLI is exactly what this records
            traceback.print_exc()
            code = 1
    seconds = time.perf_counter() - start
    text = stderr.getvalue()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else ""
    one = code == 0 or (last.startswith("error:") and "Traceback (most recent call last)" not in text)
    shown = " ".join(a if not a.startswith("/") else Path(a).name for a in argv)
    return Run(shown, code, round(seconds, 1), "" if code == 0 else last, one)


def _one_model(name: str, work: Path, pipeline: str) -> ModelResult:
    import gc

    group, _, model_class, _ = SAMPLE[name]
    result = ModelResult(name, group, model_class)
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)  # what a stopped run left of this model
    try:
        build(name, folder / "model")
    except Exception as exc:  # noqa: BLE001 - a config this transformers rejects is recorded, not fatal
        result.build_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    else:
        result.runs = [_cli(argv) for argv in commands(folder / "model", folder, pipeline)]
    gc.collect()
    return result


def _worker(names: list[str], work: Path, pipeline: str, results: Path) -> None:
    """Run the models in turn, appending each result to `results` (JSON lines) as soon as it is known."""
    from fxbench.quiet import quiet_libraries

    with quiet_libraries():
        for name in names:
            result = _one_model(name, work, pipeline)
            with results.open("a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(result)) + "\n")


def run_sample(names: list[str], work: Path, pipeline: str = "O1",
               progress: Callable[[ModelResult], None] | None = None) -> list[ModelResult]:
    """Build each named model under `work` and run both commands on it, in a worker process that
    is started again after the model it died on (a C++ abort, the OOM killer): that model is then
    recorded with the worker's exit code and last line."""
    results_file = work / "results.jsonl"
    done: dict[str, ModelResult] = {}

    def collect() -> None:
        if results_file.exists():
            for line in results_file.read_text(encoding="utf-8").splitlines(keepends=True):
                if not line.endswith("\n"):
                    continue  # the worker is writing it
                r = ModelResult.from_dict(json.loads(line))
                if r.name in names and r.name not in done:
                    done[r.name] = r
                    if progress:
                        progress(r)

    collect()  # a run stopped earlier in this folder: its models are not run again
    while len(done) < len(names):
        remaining = [n for n in names if n not in done]
        log = work / "worker.log"
        with log.open("w", encoding="utf-8") as f:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--worker", "--only", ",".join(remaining), "--pipeline", pipeline, "--work", str(work)],
                stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1", FXBENCH_VERBOSE=""),
            )
            try:
                while proc.poll() is None:
                    time.sleep(2)
                    collect()  # each model as the worker finishes it
            finally:
                if proc.poll() is None:  # the parent stopped: so does its worker
                    proc.terminate()
                    proc.wait()
        collect()
        if proc.returncode != 0:
            dead = next(n for n in names if n not in done)
            tail = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
            group, _, model_class, _ = SAMPLE[dead]
            crash = Run("(the process)", proc.returncode, 0.0, f"the process died: {tail[-1].strip() if tail else ''}"[:300], False)
            done[dead] = ModelResult(dead, group, model_class, [crash, crash])
            if progress:
                progress(done[dead])
    return [done[n] for n in names]


def summary(results: list[ModelResult]) -> dict[str, Any]:
    tried = [r for r in results if not r.build_error]
    return {
        "tried": len(tried),
        "optimize_ok": sum(r.runs[0].ok for r in tried),
        "export_ok": sum(r.runs[1].ok for r in tried),
        "both_ok": sum(all(run.ok for run in r.runs) for r in tried),
        "failures_not_one_line": [f"{r.name}: {run.command.split()[0]}" for r in tried for run in r.runs if not run.one_line],
        "not_built": {r.name: r.build_error for r in results if r.build_error},
    }


def markdown(results: list[ModelResult], info: dict[str, Any]) -> str:
    s = info["summary"]
    out = [
        f"# Breadth: {s['tried']} architectures, `optimize --pipeline {info['pipeline']} --no-bench --target none` and `export --to onnx`",
        "",
        f"optimize ok {s['optimize_ok']}/{s['tried']}, export ok {s['export_ok']}/{s['tried']}, both {s['both_ok']}/{s['tried']}; "
        f"failures that were not one line: {len(s['failures_not_one_line'])}. Command: `{info['environment'].get('command') or ''}`, "
        f"{info['seconds']:.0f} s, load average after {info['load_average_after']}."
        + ("" if info["complete"] else " Stopped before the whole sample ran: these are the models done."),
        "",
        "| model | group | class | optimize | export |",
        "| --- | --- | --- | --- | --- |",
    ]

    def cell(run: Run) -> str:
        return f"ok ({run.seconds:.0f} s)" if run.ok else f"exit {run.exit_code}: {run.line.replace('|', '/')}"

    for r in results:
        if r.build_error:
            out.append(f"| {r.name} | {r.group} | {r.model_class} | not built: {r.build_error} | |")
        else:
            out.append(f"| {r.name} | {r.group} | {r.model_class} | {cell(r.runs[0])} | {cell(r.runs[1])} |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="Comma-separated names from the sample (default: all).")
    p.add_argument("--pipeline", default="O1", help="The pipeline optimize runs (default O1: fast).")
    p.add_argument("--out", type=Path, default=RESULTS, help="Folder for breadth.json and breadth.md.")
    p.add_argument("--note", default="", help="A note stored with the results.")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, default=None,
                   help="Folder for the models and results.jsonl (default: a temporary one); a run stopped there resumes.")
    args = p.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or interleaved()
    unknown = [n for n in names if n not in SAMPLE]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)}; the sample is: {', '.join(SAMPLE)}")
    if args.worker:
        _worker(names, args.work, args.pipeline, args.work / "results.jsonl")
        return

    from fxbench.environment import collect_environment

    start = time.perf_counter()
    so_far: list[ModelResult] = []

    def save(results: list[ModelResult]) -> dict[str, Any]:
        """breadth.json and .md for the models done so far: a run stopped midway keeps them."""
        info = {
            "benchmark": "breadth",
            "pipeline": args.pipeline,
            "note": args.note,
            "complete": len(results) == len(names),
            "seconds": round(time.perf_counter() - start, 1),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "summary": summary(results),
            "environment": collect_environment([Path(sys.executable).name, *sys.argv]),
            "results": [asdict(r) for r in results],
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "breadth.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (args.out / "breadth.md").write_text(markdown(results, info), encoding="utf-8")
        return info

    def show(r: ModelResult) -> None:
        cells = [r.build_error] if r.build_error else [("ok" if run.ok else run.line) + f" [{run.seconds:.0f}s]" for run in r.runs]
        print(f"{r.name:16} " + " | ".join(cells), flush=True)
        so_far.append(r)
        save(so_far)

    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        results = run_sample(names, args.work, args.pipeline, show)
    else:
        with tempfile.TemporaryDirectory(prefix="fxbench-breadth-") as tmp:
            results = run_sample(names, Path(tmp), args.pipeline, show)
    info = save(results)
    print(json.dumps(info["summary"], indent=2))
    print(f"results: {args.out / 'breadth.json'}")


if __name__ == "__main__":
    main()
