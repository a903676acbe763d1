"""`export_artifacts`: makes the asked-for targets of the table in order, keeps what succeeded, reports what failed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fxbench.errors import ExportError, FxbenchError, OutputWriteError, StageError, one_line, show_traceback, write_error
from fxbench.exporters.base import Artifact
from fxbench.exporters.checks import ExportSubject, build_checks
from fxbench.events import EventFn, count
from fxbench.exporters.onnx import DEFAULT_OPSET, EXTERNAL_DATA_THRESHOLD, validate_opset
from fxbench.exporters.onnx_ort import DEFAULT_LEVEL, ORT_LEVELS
from fxbench.exporters.targets import ONNX_SOURCE, TARGETS, ExportContext, ExportTarget, parse_targets, preflight, target_file
from fxbench.exporters.tensorrt import DEFAULT_WORKSPACE_GIB, parse_shapes
from fxbench.numerics import PRECISIONS

__all__ = ["ExportFailure", "ExportOptions", "ExportOutcome", "export_artifacts"]



@dataclass(frozen=True)
class ExportOptions:
    """Options of every target; validated on construction, before any model is loaded."""

    opset: int = DEFAULT_OPSET
    device: str = "cpu"
    shapes: str | None = None  # TensorRT profiles: NAME:MIN,OPT,MAX;...
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD
    ort_level: str = DEFAULT_LEVEL
    fusions: bool = True
    tensorrt_precision: str | None = None  # None: the graph's own precision
    workspace_gib: float = DEFAULT_WORKSPACE_GIB
    timing_cache: Path | None = None
    check_batch: int = 3
    check_seq: int = 40

    def __post_init__(self) -> None:
        validate_opset(self.opset)
        if self.device not in ("cpu", "cuda"):
            raise ExportError(f"--device {self.device!r} is not one of cpu, cuda")
        parse_shapes(self.shapes)
        if self.ort_level not in ORT_LEVELS:
            raise ExportError(f"unknown ONNX Runtime level {self.ort_level!r}; expected one of {', '.join(ORT_LEVELS)}")
        if self.tensorrt_precision is not None and self.tensorrt_precision not in PRECISIONS:
            raise ExportError(f"unknown precision {self.tensorrt_precision!r}; expected one of {', '.join(PRECISIONS)}")
        if self.check_batch < 1 or self.check_seq < 1:
            raise ExportError("the check shape must be positive")


@dataclass(frozen=True)
class ExportFailure:
    """A target that produced nothing, and the one line saying why."""

    target: str
    error: str
    error_type: str
    exit_code: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportOutcome:
    artifacts: tuple[Artifact, ...] = ()
    failures: tuple[ExportFailure, ...] = ()

    def error(self) -> FxbenchError | None:
        """One error for all failures (the CLI's exit): of their common type, or ExportError."""
        if not self.failures:
            return None
        message = "; ".join(f.error if f.error.startswith(f"--to {f.target} ") else f"--to {f.target} failed: {f.error}"
                            for f in self.failures)
        types = {f.error_type for f in self.failures}
        cls = _error_types().get(types.pop(), ExportError) if len(types) == 1 else ExportError
        error = cls(message)
        error.exit_code = max(f.exit_code for f in self.failures)
        return error


def _error_types() -> dict[str, type[FxbenchError]]:
    """FxbenchError and its subclasses by name, to raise a failure again as its own type."""
    found: dict[str, type[FxbenchError]] = {}
    stack: list[type[FxbenchError]] = [FxbenchError]
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return found


def _failure(target: str, exc: FxbenchError) -> ExportFailure:
    return ExportFailure(target, " ".join(str(exc).split()), type(exc).__name__, exc.exit_code)


def _unforeseen(target: str, subject: ExportSubject, exc: Exception) -> StageError:
    from fxbench.models import failing_node

    config = subject.captured.loaded.config
    where = failing_node(exc)
    return StageError(
        f"--to {target} failed on this {config.model_type} model{' at ' + str(where) if where else ''}: {one_line(exc)}; "
        f"drop {target} from --to / --target, or try --static or a pipeline without the pass that made that op (-v shows the traceback)"
    )


def _brief(artifact: Artifact) -> str:
    worst = min(artifact.parity.values(), key=lambda p: p["cosine"]) if artifact.parity else None
    checks = ", ".join(artifact.parity)
    if worst is None:
        return artifact.file
    below = "; below its tolerance, kept as a baseline" if artifact.details.get("meets_tolerance") is False else ""
    return (f"{artifact.file}: {checks} cos>={worst['cosine']:.6f} "
            f"max_rel<={max(p['max_rel_error'] for p in artifact.parity.values()):.2g}{below}")


def export_artifacts(
    subject: ExportSubject,
    targets: Sequence[str],
    out_dir: Path,
    options: ExportOptions = ExportOptions(),
    events: EventFn | None = None,
    *,
    onnx_path: Path | None = None,
) -> ExportOutcome:
    """Make every target's artifact in `out_dir`, each checked against eager before it is kept.

    Targets that consume ONNX (`needs_onnx` in the table: onnx-ort, onnx-int8, tensorrt) build on
    model.onnx, which is exported (and listed) first unless `onnx_path` names an export of the same
    program to reuse. A target that fails leaves no file behind and is reported; the others still run.
    """
    targets = parse_targets(targets)
    events = events or (lambda step, status, detail: None)
    out_dir = Path(out_dir)
    checks = build_checks(subject, options.check_batch, options.check_seq)
    blocked = preflight(targets, options)
    artifacts: list[Artifact] = []
    failures: list[ExportFailure] = []
    plan = list(targets)
    if onnx_path is None and ONNX_SOURCE not in plan and any(TARGETS[t].needs_onnx and t not in blocked for t in plan):
        plan.insert(0, ONNX_SOURCE)

    def run(target: ExportTarget, source: Path | None, place: str) -> Artifact | None:
        step = f"export {target.name}"
        events(step, "start", place)
        scratch = out_dir / f".{target.name}.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            artifact = target.make(ExportContext(target, subject, checks, options, scratch, source))
            for f in scratch.iterdir():
                os.replace(f, out_dir / f.name)
        except OutputWriteError:
            raise  # the disk, not the target: the run stops, and nothing of it is kept
        except FxbenchError as exc:
            show_traceback(exc)
            events(step, "fail", str(exc))
            failures.append(_failure(target.name, exc))
            return None
        except Exception as exc:  # noqa: BLE001 - a target's unforeseen failure is its failure, in one line
            disk = write_error(exc, out_dir)
            if disk is not None:
                raise disk from exc
            show_traceback(exc)
            error = _unforeseen(target.name, subject, exc)
            events(step, "fail", str(error))
            failures.append(_failure(target.name, error))
            return None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        events(step, "done", _brief(artifact))
        artifacts.append(artifact)
        return artifact

    for k, name in enumerate(plan):
        target = TARGETS[name]
        place = count(k + 1, len(plan))
        if name in blocked:
            events(f"export {name}", "start", place)
            events(f"export {name}", "fail", str(blocked[name]))
            failures.append(_failure(name, blocked[name]))
            continue
        if target.needs_onnx and onnx_path is None:
            failures.append(ExportFailure(name, f"it builds on {target_file(ONNX_SOURCE, options.device)}, whose export failed",
                                          "ExportError", ExportError.exit_code))
            continue
        made = run(target, onnx_path if target.needs_onnx else None, place)
        if name == ONNX_SOURCE:
            onnx_path = out_dir / made.file if made else None
    return ExportOutcome(tuple(artifacts), tuple(failures))
