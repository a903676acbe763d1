"""`fxbench bench`: open a model or an output folder, decide the backends and shapes, make the inputs
and eager fp32's reference outputs, and hand them to the measurement (fxbench.runtime.bench)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxbench.errors import FxbenchError
from fxbench.events import EventFn, no_events
from fxbench.exporters import Artifact
from fxbench.jobs.common import input_warning, load_and_capture, model_record, reload_options, require_device, resolve_device, resolve_model_source
from fxbench.jobs.folders import output_folder, read_report
from fxbench.models import CapturedProgram, DynamicDims, LoadedModel, LoadOptions
from fxbench.models.inputs import DEFAULT_IMAGE_RANGE, example_shape
from fxbench.runtime.backends import Backend, default_backends, folder_backends, parse_backends, unique_labels
from fxbench.runtime.bench import BenchResult, BenchSettings, Shape, Workload, bench, check_labels
from fxbench.runtime.harness import Measure, Warmup

__all__ = ["BenchTarget", "default_report_dir", "open_target", "run_benchmark", "workload"]


@dataclass(frozen=True)
class BenchTarget:
    """What is benchmarked: the capture (always: eager is the reference) and, for an output folder,
    its path and the artifacts its report lists."""

    captured: CapturedProgram
    folder: Path | None = None
    artifacts: tuple[Artifact, ...] = ()

    def describe(self) -> dict[str, Any]:
        if self.folder is None:
            return {"kind": "model", "model": self.captured.loaded.source}
        return {"kind": "folder", "folder": str(self.folder), "artifacts": [a.file for a in self.artifacts]}


def _capture_dims(shapes: Sequence[Shape]) -> DynamicDims:
    """Dynamic ranges wide enough for the sweep, so that the program from the capture runs at every shape."""
    batch = max([64, *(s.batch for s in shapes)])
    seq = max([512, *(s.seq or 0 for s in shapes)])
    sides = [side for s in shapes if s.image for side in s.image]
    image = (min(DEFAULT_IMAGE_RANGE[0], *sides), max(DEFAULT_IMAGE_RANGE[1], *sides)) if sides else None
    return DynamicDims(batch=(1, batch), seq=(2, seq), image=image)


def _folder_artifacts(folder: Path) -> tuple[dict[str, Any], tuple[Artifact, ...]]:
    report = read_report(folder)
    try:
        return report, tuple(Artifact.from_dict(a) for a in report.get("artifacts", []))
    except (AttributeError, TypeError, ValueError) as exc:
        raise FxbenchError(f"{folder / 'report.json'} lists an artifact fxbench cannot read ({exc}); rerun fxbench optimize") from exc


def open_target(
    target: CapturedProgram | LoadedModel | str | Path | None, shapes: Sequence[Shape] = (), *, task: str | None = None,
    events: EventFn = no_events, load: LoadOptions | None = None,
) -> BenchTarget:
    """A capture as is; a model in memory to capture; an fxbench output folder (its report.json
    names the model and its artifacts); or a Hub id / model folder (None: the bundled demo model)
    to load and capture."""
    if isinstance(target, CapturedProgram):
        return BenchTarget(target)
    if isinstance(target, LoadedModel):
        ex_batch = example_shape(target)[0] if target.example_inputs is not None else None
        dims = DynamicDims(static=True) if target.example_inputs is not None and (ex_batch or 0) < 2 else _capture_dims(shapes)
        return BenchTarget(load_and_capture(target, task=task, batch=2, seq=16, dims=dims, attn_implementation=None, events=events))
    folder = output_folder(target)
    if folder is not None:
        report, artifacts = _folder_artifacts(folder)
        model = report.get("model") or {}
        source = model.get("source")
        if source and not Path(source).exists() and source.startswith((".", "/", "~")) and model.get("model_id"):
            source = model["model_id"]  # the model folder moved; its Hub id still names it
        if not source:
            raise FxbenchError(f"{folder / 'report.json'} names no model source; rerun fxbench optimize")
        captured = load_and_capture(
            source, task=task or model.get("task"), batch=2, seq=16, dims=_capture_dims(shapes),
            attn_implementation=model.get("attn_implementation"), events=events, load=reload_options(model, load),
        )
        return BenchTarget(captured, folder, artifacts)
    source = resolve_model_source(str(target) if target is not None else None)
    captured = load_and_capture(source, task=task, batch=2, seq=16, dims=_capture_dims(shapes), attn_implementation=None, events=events,
                                load=load)
    return BenchTarget(captured)


def _resolve(backends: Sequence[str | Backend] | None, folder: Path | None, artifacts: Sequence[Artifact], device: str) -> list[Backend]:
    if backends is None:
        return folder_backends(folder, artifacts, device) if folder is not None else default_backends(device)
    out: list[Backend] = []
    for b in backends:
        if isinstance(b, Backend):
            b.check_files()
            out.append(b)
        else:
            out.extend(parse_backends([b], device=device, folder=folder, artifacts=artifacts))
    return unique_labels(out)


def workload(captured: CapturedProgram, shapes: Sequence[Shape]) -> Workload:
    """The capture's inputs at every shape and eager fp32's outputs on them; a shape the model cannot
    take fails here, before any backend loads. Models without a sequence axis get one shape per batch."""
    has_seq = captured.loaded.modality == "text" or captured.loaded.is_encoder_decoder
    has_image = captured.inputs.image is not None
    shapes = list(dict.fromkeys(Shape(s.batch, s.seq if has_seq else None, s.image if has_image else None) for s in shapes))
    _check_image_sizes(captured, shapes)
    inputs = {s: captured.make_inputs(s.batch, s.seq if s.seq is not None else 16, image=s.image).tensors for s in shapes}
    return Workload(tuple(shapes), inputs, {s: captured.run_eager(inputs[s]) for s in shapes})


def _check_image_sizes(captured: CapturedProgram, shapes: Sequence[Shape]) -> None:
    """Image sizes the program cannot take are one line before any backend loads: outside the
    captured range, off the model's multiple, or any other size where the capture is static."""
    from fxbench.models.axes import HEIGHT, WIDTH

    for shape in shapes:
        if shape.image is None or shape.image == captured.inputs.image:
            continue
        height, width = captured.axis_range(HEIGHT), captured.axis_range(WIDTH)
        if height is None or width is None:
            why = captured.static_axes.get("image", "the capture is static")
            h, w = captured.inputs.image or (0, 0)
            raise FxbenchError(f"--image-size {shape.image[0]}x{shape.image[1]}: the program takes {h}x{w} only ({why})")
        for side, rec in zip(shape.image, (height, width)):
            if not rec.min <= side <= rec.max or side % rec.multiple:
                step = f" and a multiple of {rec.multiple}" if rec.multiple > 1 else ""
                raise FxbenchError(f"--image-size {shape.image[0]}x{shape.image[1]}: the program takes {rec.name} "
                                   f"{rec.min}..{rec.max}{step}")


def run_benchmark(
    target: CapturedProgram | LoadedModel | str | Path | None,
    backends: Sequence[str | Backend] | None = None,
    shapes: Sequence[Shape] | None = None,
    *,
    device: str = "auto",
    threads: int | None = None,
    warmup: Warmup = Warmup(),
    measure: Measure = Measure(),
    task: str | None = None,
    events: EventFn = no_events,
    command: Sequence[str] | None = None,
    load: LoadOptions | None = None,
) -> BenchResult:
    """Benchmark `backends` (names, NAME@FILE, or Backend records; None: the defaults for a model or
    for an output folder) on `target` (a capture, a model in memory, a Hub id or model folder, an
    output folder) at every shape (default: batch 1, sequence 128), each checked against eager
    fp32 before it is timed, in interleaved rounds (`measure.rounds`, 5 by default). `device`
    "auto" is an output folder's own device, else the GPU when there is one.

    Options, backend names and artifact files are checked before the model is loaded."""
    folder = None if isinstance(target, (CapturedProgram, LoadedModel)) else output_folder(target)
    report = read_report(folder) if folder is not None else {}
    device = resolve_device(device, report.get("device"))
    settings = BenchSettings(device=device, threads=threads, warmup=warmup, measure=measure)
    require_device(device)
    shapes = list(shapes) if shapes else [Shape(1, 128)]
    artifacts = _folder_artifacts(folder)[1] if folder is not None else ()
    chosen = check_labels(_resolve(backends, folder, artifacts, device))
    opened = open_target(target, shapes, task=task, events=events, load=load)
    captured = opened.captured
    work = workload(captured, shapes)
    model = {**model_record(captured.loaded).to_dict(), "inputs_from": captured.inputs.origin}
    if input_warning(captured.loaded):
        model["inputs_warning"] = input_warning(captured.loaded)
    return bench(captured, chosen, work, settings, model=model, source=opened.describe(), events=events, command=command)


def default_report_dir(target: object, result: BenchResult) -> Path:
    """Where `fxbench bench` writes its reports without -o: beside an output folder's artifacts
    (DIR/bench), or fxbench-out/<model name>-bench (beside where optimize writes, not inside it)."""
    folder = output_folder(target)
    if folder is not None:
        return folder / "bench"
    return Path("fxbench-out") / f"{result.model.get('name') or 'model'}-bench"
