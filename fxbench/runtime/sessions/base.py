"""The one interface every backend session implements, and the helpers they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fxbench.errors import ArtifactMissingError, BackendUnavailableError

__all__ = [
    "Bound",
    "Session",
    "SessionOptions",
    "cuda_unavailable_reason",
    "flat_float32",
    "require_device",
    "require_file",
]

@dataclass(frozen=True)
class SessionOptions:
    """What every session is built with: the device, the CPU thread count and, for artifact
    backends, the file to load."""

    device: str = "cpu"  # "cpu" or "cuda"
    threads: int | None = None  # intra-op threads (torch.set_num_threads is process-wide and set by the harness)
    artifact: Path | None = None
    precision: str = "fp32"  # the precision the artifact was made in; sets the parity tolerance
    extra: Mapping[str, object] = field(default_factory=dict)  # backend-specific knobs


@dataclass(frozen=True)
class Bound:
    """Inputs placed once where the backend reads them, so the timed loop holds only the run.

    `step()` runs one inference and may return before the device is done (the harness
    synchronizes); `fetch()` returns the latest outputs as CPU tensors, floats in fp32, in the
    capture's output order.
    """

    step: Callable[[], object]
    fetch: Callable[[], tuple[torch.Tensor, ...]]
    # Buffers whose addresses a backend was handed (IO binding, TensorRT): they must outlive it.
    keepalive: tuple[object, ...] = ()


class Session(ABC):
    """A loaded backend: the capture's named inputs in, its outputs out as a flat tuple.

    Subclasses set the class attributes below and implement `bind`; `close` frees what the
    session holds (device memory, compiled caches) before the next backend loads.
    """

    backend: str = ""
    device: str = "cpu"
    precision: str = "fp32"
    cuda_graphs: bool = False
    # Whether peak memory can be read from torch's CUDA allocator; ONNX Runtime and TensorRT
    # allocate outside it, so for them the harness reads the device's used memory instead.
    torch_allocator: bool = True
    io: str = "inputs placed on the device before timing; outputs left on the device"

    def __init__(self, input_names: tuple[str, ...], output_names: tuple[str, ...]):
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)

    @abstractmethod
    def bind(self, inputs: Mapping[str, torch.Tensor]) -> Bound:
        """Place `inputs` for repeated runs; the returned Bound runs and fetches."""

    def run(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """One inference on `inputs`, outputs on the CPU (for checks, not for timing)."""
        bound = self.bind(inputs)
        bound.step()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return bound.fetch()

    def suspend(self) -> None:
        """In interleaved rounds, after each of this backend's blocks: let go of what would slow the
        other backends while this one waits (CTranslate2's live thread pool slows PyTorch in the same
        process 2.6x). The default holds on to everything."""

    def resume(self) -> bool:
        """Before each block after the first: take back what `suspend` let go; True when something
        was rebuilt (the harness then runs it a few times untimed before timing it again)."""
        return False

    def close(self) -> None:
        """Release what the session holds; the default drops nothing but CUDA's cached blocks."""
        if self.device == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def describe(self) -> dict[str, object]:
        return {"backend": self.backend, "device": self.device, "precision": self.precision, "cuda_graphs": self.cuda_graphs, "io": self.io}


def cuda_unavailable_reason() -> str | None:
    """Why CUDA cannot be used here, or None when it can."""
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return "no CUDA GPU: this torch is a CPU build"
        return "no CUDA GPU: torch.cuda.is_available() is False"
    return None


def require_device(device: str) -> None:
    """Refuse, as unavailable here, a device this machine cannot run (CUDA without a GPU)."""
    if device == "cuda":
        reason = cuda_unavailable_reason()
        if reason:
            raise BackendUnavailableError(reason)
    elif device != "cpu":
        raise BackendUnavailableError(f"unknown device {device!r}")


def require_file(path: Path | None, what: str) -> Path:
    """The artifact file, or one clear error naming what is missing and how to make it."""
    if path is None:
        raise ArtifactMissingError(f"{what} needs an artifact file: bench an fxbench output folder that has one, or name it as BACKEND@FILE")
    path = Path(path)
    if not path.is_file():
        raise ArtifactMissingError(f"{what}: no artifact file at {path}; run the export that writes it, or fix the path")
    return path


def flat_float32(outputs: object) -> tuple[torch.Tensor, ...]:
    """A backend's outputs as CPU tensors, floating ones in fp32 (parity is computed in fp64 anyway,
    but fp16 / bf16 outputs would otherwise not compare with numpy)."""
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    flat = []
    for out in outputs:  # type: ignore[union-attr]
        t = out if isinstance(out, torch.Tensor) else torch.as_tensor(out)
        # A copy: CUDA-graph backends overwrite their output buffers on the next run.
        t = t.detach().to("cpu", copy=True)
        flat.append(t.float() if t.is_floating_point() else t)
    return tuple(flat)
