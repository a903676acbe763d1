"""`fxbench export`: artifacts of a saved optimized program, or of a model captured without passes."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fxbench.environment import collect_environment
from fxbench.errors import ExportError, FxbenchError, OutputExistsError
from fxbench.events import EventFn, no_events, step
from fxbench.exporters import Artifact, load_program
from fxbench.jobs.common import default_output_dir, export_plan, load_and_capture, raise_for_failures, reload_options, report_header
from fxbench.jobs.common import require_device, resolve_device, resolve_model_source
from fxbench.jobs.folders import check_output_dir, output_lock, saved_program, staged_directory
from fxbench.models import DynamicDims, LoadedModel, LoadOptions
from fxbench.numerics import Tolerance
from fxbench.reports.files import write_optimize_reports
from fxbench.reports.records import ExportReport, OptimizeReport

if TYPE_CHECKING:
    from fxbench.exporters.export import ExportFailure, ExportOptions, ExportOutcome

__all__ = ["ExportRequest", "ExportResult", "export"]


@dataclass(frozen=True)
class ExportRequest:
    source: str | LoadedModel | None = None  # model id or folder, an output folder, a model.pt2, or a model in memory; None: the demo model
    targets: tuple[str, ...] = ("onnx",)
    output: Path | None = None  # default: the output folder itself, or fxbench-out/<model> for a model
    options: ExportOptions | None = None
    force: bool = False
    task: str | None = None
    dims: DynamicDims = DynamicDims()  # the capture's ranges, for a model (a saved program keeps its own)
    device: str | None = None  # "auto", "cpu", "cuda"; None: the options' device. auto: an output folder's own, else the GPU if any
    load: LoadOptions = LoadOptions()


@dataclass
class ExportResult:
    output_dir: Path
    report: OptimizeReport | ExportReport  # the folder's optimize report, with the new artifacts, when export added to it
    artifacts: tuple[Artifact, ...]
    failures: tuple[ExportFailure, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)

    def raise_for_failures(self) -> None:
        raise_for_failures(self.failures)


def _dims_from_record(dynamic: dict[str, Any]) -> DynamicDims:
    """The DynamicDims that reproduce a report's recorded ranges (batch, seq, image sides; decoder_seq follows seq)."""
    if not dynamic:
        return DynamicDims(static=True)
    ranges: dict[str, tuple[int, int]] = {}
    for spec in dynamic.values():
        for dim in spec.values():
            ranges.setdefault(dim["name"], (int(dim["min"]), int(dim["max"])))
    defaults = DynamicDims()
    sides = [ranges[n] for n in ("height", "width") if n in ranges]
    image = (min(lo for lo, _ in sides), max(hi for _, hi in sides)) if sides else None
    return DynamicDims(batch=ranges.get("batch", defaults.batch), seq=ranges.get("seq", ranges.get("decoder_seq", defaults.seq)),
                       image=image, audio=ranges.get("samples", ranges.get("frames", defaults.audio)))


def _subject_from_folder(program_path: Path, events: EventFn, timings: dict[str, float],
                         load: LoadOptions | None = None) -> tuple[Any, dict[str, Any]]:
    """The saved program with the capture it needs for inputs and eager references: the model named
    in report.json is loaded and captured again with the recorded inputs and ranges."""
    from fxbench.exporters.checks import ExportSubject

    report_path = program_path.parent / "report.json"
    if not report_path.is_file():
        raise ExportError(f"no report.json beside {program_path} to name the model it came from; export from the model instead")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{report_path} is unreadable ({exc}); run fxbench optimize again") from exc
    model, inputs = report.get("model") or {}, report.get("inputs") or {}
    program_record = next((a for a in report.get("artifacts", []) if a.get("kind") == "program"), None)
    if not model.get("source") or program_record is None:
        raise ExportError(f"{report_path} is not an fxbench optimize report (no model source or program record)")
    # The program first: a truncated model.pt2 is one line before minutes of loading the model.
    with step(events, "load program", timings) as d:
        program = load_program(program_path)
        d["detail"] = f"{program_path.name}, {program_record.get('precision', 'fp32')}"
    captured = load_and_capture(
        model["source"], task=model.get("task"), batch=int(inputs.get("batch") or 2), seq=int(inputs.get("seq") or 16),
        dims=_dims_from_record(inputs.get("dynamic") or {}), attn_implementation=model.get("attn_implementation"),
        events=events, timings=timings, load=reload_options(model, load),
    )
    parity = report.get("parity") or {}
    tolerance = parity.get("tolerance")
    subject = ExportSubject(
        program=program,
        captured=captured,
        output_names=tuple(program_record.get("output_names") or captured.output_names),
        precision=program_record.get("precision", "fp32"),
        tolerance=Tolerance.from_dict(tolerance) if tolerance else None,
        rebased=parity.get("against", "eager PyTorch fp32") != "eager PyTorch fp32",
    )
    return subject, report


def _add_records(report: dict[str, Any], made: ExportOutcome, where: Path) -> OptimizeReport:
    """The folder's report with the new artifacts listed (replacing the records of files made
    again), as a record: report.md and report.html are rendered again from it."""
    try:
        record = OptimizeReport.from_dict(report)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FxbenchError(f"{where} was written by another fxbench ({type(exc).__name__}: {exc}); rerun fxbench optimize") from exc
    new_files = {a.file for a in made.artifacts}
    kept = tuple(a for a in record.artifacts if a.file not in new_files)
    return dataclasses.replace(record, artifacts=kept + tuple(made.artifacts), export_failures=tuple(made.failures))


def export(request: ExportRequest, events: EventFn = no_events) -> ExportResult:
    """`fxbench export`: artifacts of a saved optimized program (an output folder or model.pt2,
    added to that folder by default) or of a model captured without passes (a new folder).

    Targets that fail are reported in the result (and report.json) while the others are kept;
    when none succeeds, nothing is written and the failure is raised.
    """
    from fxbench.exporters.checks import ExportSubject
    from fxbench.exporters.export import ExportOptions, export_artifacts
    from fxbench.exporters.targets import target_file, target_files

    source_arg = None if isinstance(request.source, LoadedModel) else request.source
    program_path = saved_program(source_arg, "export")
    if program_path is not None and request.dims != DynamicDims():
        raise FxbenchError(f"{program_path} keeps the shapes it was captured with; --batch-range/--seq-range/--image-range/--static "
                           "apply to a model being captured (run `fxbench optimize` again to change them)")
    options = request.options or ExportOptions()
    if request.device is not None:
        folder_device = None
        if program_path is not None and (program_path.parent / "report.json").is_file():
            folder_device = json.loads((program_path.parent / "report.json").read_text(encoding="utf-8")).get("device")
        options = dataclasses.replace(options, device=resolve_device(request.device, folder_device))
    targets, options = export_plan(request.targets, options)
    require_device(options.device)
    onnx_file = target_file("onnx", options.device)
    timings: dict[str, float] = {}
    in_place, reusable, source_report = False, False, None
    if program_path is not None:
        folder = program_path.parent
        out_dir = Path(request.output) if request.output else folder
        in_place = out_dir.exists() and out_dir.resolve() == folder.resolve()
    else:
        source: str | LoadedModel = request.source if isinstance(request.source, LoadedModel) else resolve_model_source(request.source)
        name = source.name if isinstance(source, LoadedModel) else source
        out_dir = Path(request.output) if request.output else default_output_dir(name)
    # The output's lock is taken before loading: a second run into the same folder stops at once.
    with output_lock(out_dir):
        if in_place:
            taken = [f for f in target_files(targets, options.device) if (folder / f).exists()]
            # A model.onnx already made is reused by the targets that build on it, not replaced.
            reusable = "onnx" not in targets and onnx_file in taken and not request.force
            taken = [f for f in taken if not (reusable and f.startswith(onnx_file))]
            if taken and not request.force:
                raise OutputExistsError(f"{folder} already has {', '.join(taken)}; pass --force to replace it")
        else:
            check_output_dir(out_dir, request.force)
        if program_path is not None:
            subject, source_report = _subject_from_folder(program_path, events, timings, request.load)
        else:
            batched = not isinstance(source, LoadedModel) or source.example_inputs is None or _batched(source)
            captured = load_and_capture(source, task=request.task, batch=2, seq=16, dims=request.dims if batched else DynamicDims(static=True),
                                        attn_implementation=None, events=events, timings=timings, load=request.load)
            subject = ExportSubject(captured.exported, captured, captured.output_names)
        started = _dt.datetime.now(_dt.timezone.utc)
        with staged_directory(out_dir, request.force, add_to=in_place) as staging:
            made = export_artifacts(subject, targets, staging, options, events, onnx_path=out_dir / onnx_file if reusable else None)
            if not made.artifacts:
                raise_for_failures(made.failures)
            report: OptimizeReport | ExportReport
            if in_place:
                assert source_report is not None
                report = _add_records(source_report, made, out_dir / "report.json")
            else:
                report = ExportReport(
                    header=report_header(subject.captured, started),
                    source={"program": str(program_path) if program_path else None, "passes": source_report is not None},
                    artifacts=tuple(made.artifacts), export_failures=tuple(made.failures),
                    environment=collect_environment(sys.argv), seconds=dict(timings),
                )
            write_optimize_reports(report, staging)  # report.json, .md and .html: rewritten together when added to a folder
    return ExportResult(out_dir, report, made.artifacts, made.failures, timings)


def _batched(loaded: LoadedModel) -> bool:
    from fxbench.models.inputs import example_shape

    return (example_shape(loaded)[0] or 0) >= 2
