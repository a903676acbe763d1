"""`fxbench bench --generate`: open a causal LM or a with-past output folder, decide the backends and
hand them to the generation measurement (fxbench.runtime.generation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fxbench.errors import BenchOptionError, FxbenchError
from fxbench.events import EventFn, no_events, step
from fxbench.exporters import Artifact
from fxbench.jobs.common import load_and_capture, model_record, resolve_model_source
from fxbench.jobs.folders import output_folder, read_report
from fxbench.models import DynamicDims
from fxbench.models.decoder import DecoderCapture, load_for_generation, with_past
from fxbench.models.tasks import WITH_PAST_TASK
from fxbench.runtime.backends import Backend, folder_backends, parse_backends
from fxbench.runtime.generation import (
    BASELINES,
    LOOP_BACKENDS,
    GenerationResult,
    GenerationSettings,
    GenerationSubject,
    check_generation_labels,
    measure_generation,
)

__all__ = ["DEFAULT_MODEL_BACKENDS", "default_generation_dir", "generation_backends", "run_generation_benchmark"]

# Without --backends: the two generate() baselines and fxbench's loop on the eager model and the capture.
DEFAULT_MODEL_BACKENDS = ("generate", "compile-static", "eager", "program")


def _folder(folder: Path) -> tuple[dict, tuple[Artifact, ...]]:
    report = read_report(folder)
    model = report.get("model") or {}
    if model.get("task") != WITH_PAST_TASK:
        raise FxbenchError(
            f"{folder} holds artifacts of task {model.get('task')!r}, without a KV cache; --generate benches "
            f"{WITH_PAST_TASK} artifacts: fxbench optimize MODEL --task {WITH_PAST_TASK}"
        )
    try:
        return model, tuple(Artifact.from_dict(a) for a in report.get("artifacts", []))
    except (AttributeError, TypeError, ValueError) as exc:
        raise FxbenchError(f"{folder / 'report.json'} lists an artifact fxbench cannot read ({exc}); rerun fxbench optimize") from exc


def generation_backends(names: Sequence[str] | None, folder: Path | None, artifacts: Sequence[Artifact]) -> list[str | Backend]:
    """The entries to generate with: baseline names as they are, the rest as Backend records
    (NAME@FILE as `fxbench bench` takes them). Default: the baselines, the eager loop and every
    artifact of a folder the loop runs (program, ONNX files, AOTInductor; on the CPU)."""
    if names is None:
        if folder is None:
            return [n if n in BASELINES else Backend(n) for n in DEFAULT_MODEL_BACKENDS]
        runs = [b for b in folder_backends(folder, artifacts, "cpu")[1:] if b.name in LOOP_BACKENDS]
        return [*BASELINES, Backend("eager"), *runs]
    out: list[str | Backend] = []
    for name in names:
        if name in BASELINES:
            out.append(name)
        else:
            out.extend(parse_backends([name], device="cpu", folder=folder, artifacts=artifacts))
    return check_generation_labels(out)


def run_generation_benchmark(
    target: DecoderCapture | str | Path | None,
    backends: Sequence[str | Backend] | None = None,
    settings: GenerationSettings = GenerationSettings(),
    *,
    events: EventFn = no_events,
    command: Sequence[str] | None = None,
) -> GenerationResult:
    """Greedy generation with every backend (names, NAME@FILE or records; None: the defaults for
    a model or a folder) on `target`: a with-past capture, a with-past output folder (its model is
    loaded, not captured again), or a causal LM's Hub id or folder (loaded and captured with its
    cache). Names, files and options are checked before any model is loaded."""
    folder = None if isinstance(target, DecoderCapture) else output_folder(target)
    model_info, artifacts = _folder(folder) if folder is not None else ({}, ())
    if backends is None or all(isinstance(b, str) for b in backends):
        entries = generation_backends(list(backends) if backends is not None else None, folder, artifacts)  # type: ignore[arg-type]
    else:
        entries = check_generation_labels(list(backends))
    if isinstance(target, DecoderCapture):
        subject, source = GenerationSubject.from_capture(target), {"kind": "capture"}
    elif folder is not None:
        timings: dict[str, float] = {}
        with step(events, "load", timings) as d:
            loaded = load_for_generation(model_info.get("source") or model_info.get("model_id") or "",
                                         attn_implementation=model_info.get("attn_implementation"))
            d["detail"] = f"{type(loaded.model).__name__}, {loaded.parameter_count() / 1e6:.1f}M parameters"
        subject = GenerationSubject(loaded, with_past(loaded))
        source = {"kind": "folder", "folder": str(folder), "artifacts": [a.file for a in artifacts]}
    else:
        needs_program = any(isinstance(e, Backend) and e.name == "program" and e.artifact is None for e in entries)
        model = resolve_model_source(str(target) if target is not None else None)
        if needs_program:
            top = max(settings.prompt_lengths) + settings.new_tokens
            captured = load_and_capture(model, task=WITH_PAST_TASK, batch=2, seq=16, attn_implementation=None, events=events,
                                        dims=DynamicDims(batch=(1, max(64, *settings.batches)), seq=(1, max(512, top))))
            assert isinstance(captured, DecoderCapture)
            subject = GenerationSubject.from_capture(captured)
        else:
            loaded = load_for_generation(model)
            subject = GenerationSubject(loaded, with_past(loaded))
        source = {"kind": "model", "model": model}
    limit = subject.loaded.config.get_text_config(decoder=True)
    positions = getattr(limit, "max_position_embeddings", None) or getattr(limit, "n_positions", None)
    if positions and max(settings.prompt_lengths) + settings.new_tokens > positions:
        raise BenchOptionError(f"--prompt-len {max(settings.prompt_lengths)} + --new-tokens {settings.new_tokens} exceeds the model's {positions} positions")
    record = model_record(subject.loaded).to_dict()
    return measure_generation(subject, entries, settings, model=record, source=source, events=events, command=command)


def default_generation_dir(target: object, result: GenerationResult) -> Path:
    """Where `fxbench bench --generate` writes its reports without -o: DIR/generate for an output
    folder, fxbench-out/<model name>-generate for a model."""
    folder = output_folder(target)
    if folder is not None:
        return folder / "generate"
    return Path("fxbench-out") / f"{result.model.get('name') or 'model'}-generate"
