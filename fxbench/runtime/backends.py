"""The registry of backend names the CLI and the harness accept, and how names become sessions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fxbench.errors import ArtifactMissingError, BackendUnavailableError, UnknownBackendError
from fxbench.exporters import PROGRAM_FILE, Artifact, target_file
from fxbench.models import CapturedProgram
from fxbench.runtime.sessions import (
    AotiSession,
    CompileSession,
    EagerSession,
    OrtSession,
    ProgramSession,
    Session,
    SessionOptions,
    TensorRTSession,
    sidecar_path,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendSpec",
    "create_session",
    "default_backends",
    "folder_backends",
    "parse_backends",
    "unique_labels",
]


Factory = Callable[[CapturedProgram, SessionOptions], Session]


@dataclass(frozen=True)
class BackendSpec:
    """A backend name: what it runs, where, and which artifact kinds it loads.

    `devices` lists where it can run; a backend tied to one device (ort-cuda, tensorrt, eager-fp16)
    runs there whatever the run's --device, the others follow --device. `artifacts` are the artifact
    kinds it loads; `needs_artifact` is False where it can also be built from the captured model.
    """

    name: str
    summary: str
    devices: tuple[str, ...]
    factory: Factory
    artifacts: tuple[str, ...] = ()
    needs_artifact: bool = False
    precision: str = "fp32"
    default_files: tuple[tuple[str, str], ...] = ()  # (device, file name in an output folder)

    def device_for(self, run_device: str) -> str:
        return run_device if run_device in self.devices else self.devices[0]

    def default_file(self, device: str) -> str | None:
        return dict(self.default_files).get(device)


def _eager(precision: str) -> Factory:
    return lambda captured, options: EagerSession(captured, replace(options, precision=precision))


def _compile(mode: str) -> Factory:
    return lambda captured, options: CompileSession(captured, replace(options, extra={**options.extra, "mode": mode}))


def _ort(provider: str, cuda_graph: bool = False) -> Factory:
    return lambda captured, options: OrtSession(captured, options, provider=provider, cuda_graph=cuda_graph)


def _trt(cuda_graph: bool) -> Factory:
    return lambda captured, options: TensorRTSession(captured, options, cuda_graph=cuda_graph)


_ANY = ("cpu", "cuda")


def _files_of(target: str, devices: tuple[str, ...] = _ANY) -> tuple[tuple[str, str], ...]:
    """(device, file) for each device, from the export target table."""
    return tuple((d, target_file(target, d)) for d in devices)


_ONNX_FILES = _files_of("onnx")

BACKENDS: dict[str, BackendSpec] = {
    s.name: s
    for s in (
        BackendSpec("eager", "the Hugging Face model in eager PyTorch, fp32 (the baseline)", _ANY, _eager("fp32")),
        BackendSpec("eager-fp16", "eager PyTorch with weights and activations in fp16", ("cuda",), _eager("fp16"), precision="fp16"),
        BackendSpec("eager-bf16", "eager PyTorch with weights and activations in bf16", _ANY, _eager("bf16"), precision="bf16"),
        BackendSpec("program", "the torch.export program (fxbench's model.pt2, or the capture)", _ANY, ProgramSession,
                    artifacts=("program",), default_files=tuple((d, PROGRAM_FILE) for d in _ANY)),
        BackendSpec("compile", "torch.compile, default mode (Inductor)", _ANY, _compile("default")),
        BackendSpec("compile-max-autotune", "torch.compile mode=max-autotune (CUDA graphs on a GPU)", _ANY, _compile("max-autotune")),
        BackendSpec("compile-max-autotune-no-cudagraphs", "torch.compile mode=max-autotune-no-cudagraphs", _ANY,
                    _compile("max-autotune-no-cudagraphs")),
        BackendSpec("compile-reduce-overhead", "torch.compile mode=reduce-overhead (CUDA graphs on a GPU)", _ANY, _compile("reduce-overhead")),
        BackendSpec("aoti", "an AOTInductor package (aoti_load_package)", _ANY, AotiSession, artifacts=("aoti",), needs_artifact=True,
                    default_files=_files_of("aoti")),
        BackendSpec("ort", "ONNX Runtime, CPU execution provider", ("cpu",), _ort("ort"), artifacts=("onnx", "onnx-ort"),
                    needs_artifact=True, default_files=_ONNX_FILES),
        BackendSpec("ort-cuda", "ONNX Runtime, CUDA execution provider, IO binding", ("cuda",), _ort("ort-cuda"),
                    artifacts=("onnx", "onnx-ort"), needs_artifact=True, default_files=_ONNX_FILES),
        BackendSpec("ort-cuda-graph", "ONNX Runtime, CUDA execution provider, IO binding, enable_cuda_graph", ("cuda",),
                    _ort("ort-cuda", cuda_graph=True), artifacts=("onnx", "onnx-ort"), needs_artifact=True, default_files=_ONNX_FILES),
        BackendSpec("ort-trt", "ONNX Runtime, TensorRT execution provider (CUDA fallback), IO binding", ("cuda",), _ort("ort-trt"),
                    artifacts=("onnx",), needs_artifact=True, default_files=_ONNX_FILES),
        BackendSpec("tensorrt", "a TensorRT engine, execute_async_v3 on torch buffers", ("cuda",), _trt(False), artifacts=("tensorrt",),
                    needs_artifact=True, default_files=_files_of("tensorrt", ("cuda",))),
        BackendSpec("tensorrt-graph", "a TensorRT engine replayed from a CUDA graph", ("cuda",), _trt(True), artifacts=("tensorrt",),
                    needs_artifact=True, default_files=_files_of("tensorrt", ("cuda",))),
    )
}

# Which backends run an artifact kind, per device, when a whole output folder is benchmarked.
_RUNNERS = {
    ("program", "cpu"): ("program",), ("program", "cuda"): ("program",),
    ("onnx", "cpu"): ("ort",), ("onnx", "cuda"): ("ort-cuda", "ort-cuda-graph", "ort-trt"),
    ("onnx-ort", "cpu"): ("ort",), ("onnx-ort", "cuda"): ("ort-cuda", "ort-cuda-graph"),
    ("onnx-int8", "cpu"): ("ort",),
    ("aoti", "cpu"): ("aoti",), ("aoti", "cuda"): ("aoti",),
    ("tensorrt", "cpu"): ("tensorrt",), ("tensorrt", "cuda"): ("tensorrt", "tensorrt-graph"),
}


@dataclass(frozen=True)
class Backend:
    """One column of a benchmark: a registered backend, on an artifact file where it loads one.

    `label` names it in reports (default `name` or `name@file`); `precision` overrides the
    registry's (an int8 ONNX file runs on `ort` but is held to int8's tolerance); `skip` records
    why it will not run, decided before any work (an artifact for another device).
    """

    name: str
    artifact: Path | None = None
    label: str = ""
    precision: str | None = None
    skip: str | None = None

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise UnknownBackendError(f"unknown backend {self.name!r}; choose from: {', '.join(BACKENDS)}")
        if not self.label:
            object.__setattr__(self, "label", self.name if self.artifact is None else f"{self.name}@{Path(self.artifact).name}")

    @property
    def spec(self) -> BackendSpec:
        return BACKENDS[self.name]

    @property
    def effective_precision(self) -> str:
        return self.precision or self.spec.precision

    def check_files(self) -> None:
        """The artifact (and a TensorRT engine's sidecar) exist: a clear error before any work."""
        if self.skip:
            return
        if self.artifact is None:
            if self.spec.needs_artifact:
                raise ArtifactMissingError(
                    f"backend {self.name!r} runs an artifact ({'/'.join(self.spec.artifacts)}): bench an fxbench output folder that has one, "
                    f"or name the file as {self.name}@FILE"
                )
            return
        if not Path(self.artifact).is_file():
            raise ArtifactMissingError(f"{self.label}: no artifact file at {self.artifact}; run the export that writes it, or fix the path")
        if self.name.startswith("tensorrt") and not sidecar_path(Path(self.artifact)).is_file():
            raise ArtifactMissingError(f"{self.label}: {sidecar_path(Path(self.artifact)).name} is missing; the engine's sidecar records where it was built")


def create_session(backend: Backend, captured: CapturedProgram, *, device: str, threads: int | None) -> Session:
    """The backend's session; raises BackendUnavailableError (skipped, with the reason) when the
    backend cannot run here."""
    if backend.skip:
        raise BackendUnavailableError(backend.skip)
    spec = backend.spec
    options = SessionOptions(device=spec.device_for(device), threads=threads, artifact=backend.artifact,
                             precision=backend.effective_precision)
    return spec.factory(captured, options)


def _artifact_precision(artifacts: Iterable[Artifact], file: str) -> str | None:
    return next((a.precision for a in artifacts if a.file == file), None)


def parse_backends(names: Sequence[str], *, device: str, folder: Path | None = None, artifacts: Sequence[Artifact] = ()) -> list[Backend]:
    """Backends from CLI names: NAME, or NAME@FILE (FILE relative to the output folder when one is
    benchmarked). A bare artifact backend takes the folder's file for the device (ort: model.onnx)."""
    out: list[Backend] = []
    for raw in names:
        text = raw.strip()
        if not text:
            continue
        name, _, file = text.partition("@")
        if name not in BACKENDS:
            raise UnknownBackendError(f"unknown backend {name!r}; choose from: {', '.join(BACKENDS)}")
        spec = BACKENDS[name]
        path: Path | None = None
        if file:
            path = Path(file).expanduser()
            if folder is not None and not path.is_absolute() and (folder / path).exists():
                path = folder / path
        elif folder is not None and spec.artifacts:
            default = spec.default_file(spec.device_for(device))
            if default and (folder / default).is_file():
                path = folder / default
            elif spec.needs_artifact:
                have = ", ".join(a.file for a in artifacts) or "none"
                raise ArtifactMissingError(f"{folder} has no {default or spec.artifacts[0]} for backend {name!r} (its artifacts: {have}); name one as {name}@FILE")
        precision = _artifact_precision(artifacts, path.name) if path is not None and folder is not None else None
        backend = Backend(name, path, precision=precision)
        backend.check_files()
        out.append(backend)
    return unique_labels(out)


def unique_labels(backends: Sequence[Backend]) -> list[Backend]:
    """`backends` with labels that tell them apart: the same backend on files of one name in different
    folders is labelled with as much of each path as differs (ort@run1/model.onnx, ort@run2/model.onnx).
    The same backend on the same file twice is an error."""
    out = list(backends)
    groups: dict[str, list[int]] = {}
    for i, b in enumerate(out):
        groups.setdefault(b.label, []).append(i)
    for label, members in groups.items():
        if len(members) == 1:
            continue
        paths = [Path(out[i].artifact).expanduser().resolve() if out[i].artifact is not None else None for i in members]
        keys = [(out[i].name, p) for i, p in zip(members, paths)]
        if None in paths or len(set(keys)) != len(keys):
            raise UnknownBackendError(f"backend listed twice: {label}")
        depth = 1
        while True:
            labels = [f"{out[i].name}@{'/'.join(p.parts[-depth - 1:])}" for i, p in zip(members, paths)]  # type: ignore[union-attr]
            if len(set(labels)) == len(labels) or depth > 64:
                break
            depth += 1
        for i, new in zip(members, labels):
            out[i] = replace(out[i], label=new)
    return out


def default_backends(device: str) -> list[Backend]:
    """What `fxbench bench MODEL` runs without --backends: the ones that need no artifact."""
    names = ["eager", "program", "compile"] if device == "cpu" else ["eager", "eager-fp16", "program", "compile", "compile-reduce-overhead"]
    return [Backend(n) for n in names]


def folder_backends(folder: Path, artifacts: Sequence[Artifact], device: str) -> list[Backend]:
    """What `fxbench bench DIR` runs without --backends: eager, and each artifact on the backends
    that run its kind on `device`. Artifacts for another device are listed as skipped, with why."""
    out = [Backend("eager")]
    for art in artifacts:
        path = folder / art.file
        if art.device not in ("any", device):
            for name in _RUNNERS.get((art.kind, art.device), ()):
                out.append(Backend(name, path, precision=art.precision, skip=f"{art.file} is built for {art.device}; bench with --device {art.device}"))
            continue
        for name in _RUNNERS.get((art.kind, device), ()):
            backend = Backend(name, path, precision=art.precision)
            backend.check_files()
            out.append(backend)
    return out
