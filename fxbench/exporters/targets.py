"""The export targets, one record each: the files it writes per device, what it builds on, where it runs, how it is made."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fxbench.errors import ExportError, FxbenchError
from fxbench.exporters.base import ARTIFACT_KINDS, Artifact

if TYPE_CHECKING:
    from fxbench.exporters.checks import Check, ExportSubject
    from fxbench.exporters.export import ExportOptions

__all__ = [
    "ONNX_SOURCE",
    "TARGETS",
    "ExportContext",
    "ExportTarget",
    "device_targets",
    "parse_targets",
    "preflight",
    "register_target",
    "target_file",
    "target_files",
    "target_names",
]

Make = Callable[["ExportContext"], Artifact]
Preflight = Callable[["ExportOptions"], None]  # raises the FxbenchError that says why the target cannot run here

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
# The target whose file the `needs_onnx` targets consume: made first when they are asked for.
ONNX_SOURCE = "onnx"


def _no_preflight(options: ExportOptions) -> None:
    return None


@dataclass(frozen=True)
class ExportTarget:
    """One export target: everything fxbench knows about it is this record.

    `files` maps a device ("cpu", "cuda", or "any" for every device) to the files the target writes
    there, the artifact first (the file a bench backend loads), then what travels with it (external
    data, a sidecar). `devices` are the --device values whose default artifacts include it (empty:
    made only when asked for). `needs_onnx`: it builds on the `onnx` target's file, made first.
    `preflight` raises, before any work, when the target cannot run on this machine. `make` writes
    the files into `ExportContext.folder` and returns the checked Artifact. `kind` is the artifact
    kind it records (a key of ARTIFACT_KINDS; default its name), which decides the bench backends
    that run it.
    """

    name: str
    summary: str
    files: Mapping[str, tuple[str, ...]]
    make: Make
    needs_onnx: bool = False
    devices: tuple[str, ...] = ()
    preflight: Preflight = _no_preflight
    kind: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"export target name {self.name!r} must be kebab case, such as 'onnx-ort'")
        if not self.kind:
            object.__setattr__(self, "kind", self.name)
        if self.kind not in ARTIFACT_KINDS:
            raise ValueError(f"export target {self.name!r}: artifact kind {self.kind!r} is not one of {', '.join(ARTIFACT_KINDS)}")
        if not self.files or not all(self.files.values()) or set(self.files) - {"cpu", "cuda", "any"}:
            raise ValueError(f"export target {self.name!r}: files must map cpu, cuda or any to one or more file names")

    def files_for(self, device: str) -> tuple[str, ...]:
        files = self.files.get(device) or self.files.get("any")
        if not files:
            raise ExportError(f"export target {self.name!r} writes nothing for --device {device}")
        return files

    def file(self, device: str) -> str:
        """The artifact's file name for `device`."""
        return self.files_for(device)[0]

    def describe(self, device: str = "cpu") -> str:
        return f"{' + '.join(self.files_for(device))}: {self.summary}"


@dataclass(frozen=True)
class ExportContext:
    """What a target's `make` is handed: the subject, the checks every artifact must pass, the
    options, the scratch folder to write into (moved into the output folder when `make` returns)
    and, for a `needs_onnx` target, the ONNX file it builds on."""

    target: ExportTarget
    subject: ExportSubject
    checks: tuple[Check, ...]
    options: ExportOptions
    folder: Path
    onnx_path: Path | None = None

    @property
    def path(self) -> Path:
        """Where the artifact goes: the target's file for the options' device, in `folder`."""
        return self.folder / self.target.file(self.options.device)

    def source(self) -> Path:
        if self.onnx_path is None:
            raise ExportError(f"--to {self.target.name} builds on {target_file(ONNX_SOURCE, self.options.device)}, and none was given")
        return self.onnx_path


# The makers and preflights import their exporter when called: the table is also read for its
# file names (by `fxbench bench`'s backends), which must not load onnx and onnxruntime (over a second).
def _exporter(module: str) -> Any:
    return importlib.import_module(f"fxbench.exporters.{module}")


def _with_past(c: ExportContext) -> bool:
    """A with-past capture (a decoder with its KV cache) exports under Optimum's names (onnx_past)."""
    from fxbench.models.decoder import DecoderCapture  # when a target is made, not when the table is read

    return isinstance(c.subject.captured, DecoderCapture)


def _make_onnx(c: ExportContext) -> Artifact:
    o = c.options
    if _with_past(c):
        return _exporter("onnx_past").export_onnx_with_past(c.subject, c.folder, c.checks, opset=o.opset, device=o.device,
                                                            external_data_threshold=o.external_data_threshold)
    return _exporter("onnx").export_onnx(c.subject, c.folder, c.checks, opset=o.opset, device=o.device,
                                         external_data_threshold=o.external_data_threshold)


def _make_onnx_ort(c: ExportContext) -> Artifact:
    o = c.options
    make = _exporter("onnx_past").export_onnx_ort_with_past if _with_past(c) else _exporter("onnx_ort").export_onnx_ort
    return make(c.subject, c.source(), c.folder, c.checks, device=o.device, level=o.ort_level, fusions=o.fusions,
                external_data_threshold=o.external_data_threshold, nbits_accuracy_level=o.nbits_accuracy_level)


def _make_onnx_int8(c: ExportContext) -> Artifact:
    return _exporter("onnx_quantize").export_onnx_int8(c.subject, c.source(), c.folder, c.checks, device=c.options.device)


def _make_tensorrt(c: ExportContext) -> Artifact:
    o = c.options
    return _exporter("tensorrt").export_tensorrt(c.subject, c.source(), c.folder, c.checks, shapes=o.shapes, precision=o.tensorrt_precision,
                                                 workspace_gib=o.workspace_gib, timing_cache=o.timing_cache)


def _make_aoti(c: ExportContext) -> Artifact:
    return _exporter("aoti").export_aoti(c.subject, c.folder, c.checks, device=c.options.device)


def _ort_for_device(options: ExportOptions) -> None:
    """ONNX targets are made and checked in ONNX Runtime, which needs its CUDA provider for --device cuda."""
    _exporter("onnx").ort_providers(options.device)


def _tensorrt_here(options: ExportOptions) -> None:
    _exporter("tensorrt").require_tensorrt()


def _aoti_here(options: ExportOptions) -> None:
    _exporter("aoti").require_aoti(options.device)


def _with_data(file: str) -> tuple[str, str]:
    """An ONNX file and the external-data file that carries its weights past 2 GB."""
    return file, f"{file}.data"


TARGETS: dict[str, ExportTarget] = {}


def register_target(target: ExportTarget) -> ExportTarget:
    """Add `target` to the table (made after those already there, in table order)."""
    if target.name in TARGETS:
        raise ValueError(f"export target {target.name!r} is already registered")
    TARGETS[target.name] = target
    return target


for _target in (
    ExportTarget("onnx", "torch.onnx (dynamo) export with named dynamic axes, checked in ONNX Runtime",
                 {"any": _with_data("model.onnx")}, _make_onnx, devices=("cpu", "cuda"), preflight=_ort_for_device),
    ExportTarget("onnx-ort", "transformer fusions + ONNX Runtime offline optimization for the --device's provider",
                 {"cpu": _with_data("model.ort.onnx"), "cuda": _with_data("model.ort-cuda.onnx")}, _make_onnx_ort,
                 needs_onnx=True, devices=("cpu", "cuda"), preflight=_ort_for_device),
    # The int8 baseline is a comparison, not an artifact of fxbench's own: made only when asked for.
    ExportTarget("onnx-int8", "ONNX Runtime's dynamic int8 quantization, the baseline for fxbench's int8",
                 {"any": _with_data("model.int8-dynamic.onnx")}, _make_onnx_int8, needs_onnx=True, preflight=_ort_for_device),
    ExportTarget("tensorrt", "a TensorRT engine built from model.onnx (needs tensorrt and a GPU)",
                 {"any": ("model.engine", "model.engine.json")}, _make_tensorrt, needs_onnx=True, devices=("cuda",),
                 preflight=_tensorrt_here),
    ExportTarget("aoti", "an AOTInductor package for the --device",
                 {"cpu": ("model.aoti.pt2",), "cuda": ("model.aoti-cuda.pt2",)}, _make_aoti, devices=("cpu", "cuda"),
                 preflight=_aoti_here),
):
    register_target(_target)


def target_names() -> tuple[str, ...]:
    """The registered targets, in the order they are made."""
    return tuple(TARGETS)


def _get(name: str) -> ExportTarget:
    try:
        return TARGETS[name]
    except KeyError:
        raise ExportError(f"unknown export target {name!r}; expected one of {', '.join(TARGETS)}") from None


def target_file(name: str, device: str = "cpu") -> str:
    """The file target `name` writes its artifact to for `device` (onnx-ort, cuda: model.ort-cuda.onnx)."""
    return _get(name).file(device)


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
    """The files the targets write (the ONNX source's too, for any target that builds on it)."""
    wanted = set(targets) | ({ONNX_SOURCE} if any(_get(t).needs_onnx for t in targets) else set())
    return [f for t in TARGETS.values() if t.name in wanted for f in t.files_for(device)]


def preflight(targets: Sequence[str], options: ExportOptions) -> dict[str, FxbenchError]:
    """Targets that cannot run on this machine (no tensorrt, no GPU, no compiler), found before
    any work is done."""
    problems: dict[str, FxbenchError] = {}
    for name in targets:
        target = _get(name)
        try:
            target.preflight(options)
        except FxbenchError as exc:
            problems[name] = exc
    return problems


def device_targets(options: ExportOptions) -> tuple[str, ...]:
    """The targets that fit `options.device` and can be made on this machine (a CUDA machine
    without tensorrt still gets its ONNX and AOTInductor artifacts)."""
    wanted = tuple(t.name for t in TARGETS.values() if options.device in t.devices)
    blocked = preflight(wanted, options)
    return tuple(t for t in wanted if t not in blocked)
