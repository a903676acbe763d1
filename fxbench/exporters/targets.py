"""Export targets and their order: `export_artifacts` makes each, keeps what succeeded, reports what failed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fxbench.errors import ExportError, FxbenchError
from fxbench.exporters.aoti import aoti_file_name, export_aoti, require_aoti
from fxbench.exporters.base import Artifact
from fxbench.exporters.checks import ExportSubject, build_checks
from fxbench.exporters.onnx import DEFAULT_OPSET, EXTERNAL_DATA_THRESHOLD, export_onnx, ort_providers, validate_opset
from fxbench.exporters.onnx_ort import DEFAULT_LEVEL, ORT_LEVELS, export_onnx_ort, ort_file_name
from fxbench.exporters.onnx_quantize import INT8_DYNAMIC_FILE, export_onnx_int8
from fxbench.exporters.tensorrt import DEFAULT_WORKSPACE_GIB, ENGINE_FILE, SIDECAR_FILE, export_tensorrt, parse_shapes, require_tensorrt
from fxbench.numerics import PRECISIONS

__all__ = [
    "TARGETS",
    "device_targets",
    "ExportFailure",
    "ExportOptions",
    "ExportOutcome",
    "export_artifacts",
    "parse_targets",
    "preflight",
    "target_files",
]

TARGETS = {
    "onnx": "model.onnx: torch.onnx (dynamo) export with named dynamic axes, checked in ONNX Runtime",
    "onnx-ort": "model.ort.onnx: transformer fusions + ONNX Runtime offline optimization for the --device's provider",
    "onnx-int8": f"{INT8_DYNAMIC_FILE}: ONNX Runtime's dynamic int8 quantization, the baseline for fxbench's int8",
    "tensorrt": f"{ENGINE_FILE} + {SIDECAR_FILE}: a TensorRT engine built from model.onnx (needs tensorrt and a GPU)",
    "aoti": "model.aoti.pt2: an AOTInductor package for the --device",
}
_NEEDS_ONNX = ("onnx-ort", "onnx-int8", "tensorrt")

EventFn = Callable[[str, str, str], None]  # (step, status: start|done|fail, detail), as the workflow's


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


def parse_targets(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`onnx,aoti` (or a list of such) as target names in the order they are made."""
    items = spec.split(",") if isinstance(spec, str) else [t for s in spec for t in s.split(",")]
    names = {t.strip().lower() for t in items if t.strip()}
    unknown = sorted(names - set(TARGETS))
    if unknown:
        raise ExportError(f"unknown export target {', '.join(map(repr, unknown))}; expected some of {', '.join(TARGETS)}")
    if not names:
        raise ExportError(f"no export target given; expected some of {', '.join(TARGETS)}")
    return tuple(t for t in TARGETS if t in names)


def target_files(targets: Sequence[str], device: str = "cpu") -> list[str]:
    """The files the targets write (model.onnx for any target that builds on it)."""
    files = {
        "onnx": ["model.onnx", "model.onnx.data"],
        "onnx-ort": [ort_file_name(device), f"{ort_file_name(device)}.data"],
        "onnx-int8": [INT8_DYNAMIC_FILE, f"{INT8_DYNAMIC_FILE}.data"],
        "tensorrt": [ENGINE_FILE, SIDECAR_FILE],
        "aoti": [aoti_file_name(device)],
    }
    wanted = set(targets) | ({"onnx"} if set(targets) & set(_NEEDS_ONNX) else set())
    return [f for t in TARGETS if t in wanted for f in files[t]]


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


def preflight(targets: Sequence[str], options: ExportOptions) -> dict[str, FxbenchError]:
    """Targets that cannot run on this machine (no tensorrt, no GPU, no compiler), found before
    any work is done."""
    problems: dict[str, FxbenchError] = {}
    for target in targets:
        try:
            if target == "tensorrt":
                require_tensorrt()
            elif target == "aoti":
                require_aoti(options.device)
            elif options.device == "cuda":
                ort_providers("cuda")
        except FxbenchError as exc:
            problems[target] = exc
    return problems


# What a deployment on each device runs. The int8 baseline (onnx-int8) is a comparison, not an
# artifact of fxbench's own, so it is made only when asked for.
_DEVICE_TARGETS = {"cpu": ("onnx", "onnx-ort", "aoti"), "cuda": ("onnx", "onnx-ort", "tensorrt", "aoti")}


def device_targets(options: ExportOptions) -> tuple[str, ...]:
    """The targets that fit `options.device` and can be made on this machine (a CUDA machine
    without tensorrt still gets its ONNX and AOTInductor artifacts)."""
    wanted = _DEVICE_TARGETS[options.device]
    blocked = preflight(wanted, options)
    return tuple(t for t in wanted if t not in blocked)


def _failure(target: str, exc: FxbenchError) -> ExportFailure:
    return ExportFailure(target, " ".join(str(exc).split()), type(exc).__name__, exc.exit_code)


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

    Targets that consume ONNX (onnx-ort, onnx-int8, tensorrt) build on model.onnx, which is
    exported (and listed) first unless `onnx_path` names an export of the same program to reuse.
    A target that fails leaves no file behind and is reported; the others still run.
    """
    targets = parse_targets(targets)
    events = events or (lambda step, status, detail: None)
    out_dir = Path(out_dir)
    checks = build_checks(subject, options.check_batch, options.check_seq)
    blocked = preflight(targets, options)
    artifacts: list[Artifact] = []
    failures: list[ExportFailure] = []
    plan = list(targets)
    if onnx_path is None and "onnx" not in plan and any(t in plan and t not in blocked for t in _NEEDS_ONNX):
        plan.insert(0, "onnx")

    def run(target: str, make: Callable[[Path], Artifact]) -> Artifact | None:
        step = f"export {target}"
        events(step, "start", "")
        scratch = out_dir / f".{target}.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            artifact = make(scratch)
            for f in scratch.iterdir():
                os.replace(f, out_dir / f.name)
        except FxbenchError as exc:
            events(step, "fail", str(exc))
            failures.append(_failure(target, exc))
            return None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        events(step, "done", _brief(artifact))
        artifacts.append(artifact)
        return artifact

    for target in plan:
        if target in blocked:
            events(f"export {target}", "start", "")
            events(f"export {target}", "fail", str(blocked[target]))
            failures.append(_failure(target, blocked[target]))
            continue
        if target == "onnx":
            made = run("onnx", lambda d: export_onnx(subject, d, checks, opset=options.opset, device=options.device,
                                                     external_data_threshold=options.external_data_threshold))
            onnx_path = out_dir / made.file if made else None
            continue
        if target in _NEEDS_ONNX and onnx_path is None:
            failures.append(ExportFailure(target, "it builds on model.onnx, whose export failed", "ExportError", ExportError.exit_code))
            continue
        source = onnx_path
        if target == "onnx-ort":
            run(target, lambda d: export_onnx_ort(subject, source, d, checks, device=options.device, level=options.ort_level,
                                                  fusions=options.fusions, external_data_threshold=options.external_data_threshold))
        elif target == "onnx-int8":
            run(target, lambda d: export_onnx_int8(subject, source, d, checks, device=options.device))
        elif target == "tensorrt":
            run(target, lambda d: export_tensorrt(subject, source, d, checks, shapes=options.shapes, precision=options.tensorrt_precision,
                                                  workspace_gib=options.workspace_gib, timing_cache=options.timing_cache))
        elif target == "aoti":
            run(target, lambda d: export_aoti(subject, d, checks, device=options.device))
    return ExportOutcome(tuple(artifacts), tuple(failures))
