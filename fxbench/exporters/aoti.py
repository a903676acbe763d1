"""An AOTInductor package of the optimized program, compiled for CPU or CUDA and checked after loading it back."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch.export.passes import move_to_device_pass

from fxbench.errors import BackendUnavailableError, ExportError, OutputWriteError, write_error
from fxbench.exporters.base import Artifact
from fxbench.exporters.checks import Check, ExportSubject, verify
from fxbench.exporters.storage import ensure_space, guarded_file, program_bytes
from fxbench.exporters.targets import target_file

__all__ = ["export_aoti", "require_aoti"]


def require_aoti(device: str) -> None:
    """AOTInductor compiles C++ (and CUDA for a GPU package): fail fast, in one line, without them."""
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("--to aoti --device cuda needs a CUDA GPU and a CUDA build of torch; none is visible")
    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        raise BackendUnavailableError("--to aoti needs a C++ compiler (g++ or clang++) on PATH for AOTInductor")


def _configs(device: str) -> dict[str, object]:
    """Inductor's settings for the package. On a CPU, freezing: the weights become constants that
    Inductor lays out for oneDNN once, at compile time (bf16 and fp32 linears run as prepacked
    oneDNN/AMX GEMMs with their GELU fused, int8 Q/DQ around a linear as one qlinear); MiniLM's
    bf16 package runs 1.3x faster with it. Freezing needs grad off, hence no_grad around the compile."""
    return {"freezing": True} if device == "cpu" else {}


def export_aoti(subject: ExportSubject, folder: Path, checks: Sequence[Check], *, device: str = "cpu") -> Artifact:
    """Compile `subject.program` with `torch._inductor.aoti_compile_and_package` (dynamic shapes as
    captured) into `folder` as the aoti target's file (model.aoti.pt2; model.aoti-cuda.pt2), load it
    back with `aoti_load_package` and check it against eager on every check's inputs."""
    require_aoti(device)
    start = time.perf_counter()
    program = subject.program if device == "cpu" else move_to_device_pass(subject.program, device)
    path = Path(folder) / target_file("aoti", device)
    ensure_space(path.parent, program_bytes(program) + 2**20, path.name)  # the weights go into the package
    try:
        # Through a guarded file: torch's C++ archive writer aborts the process on a full disk.
        with guarded_file(path, path.name) as f, torch.no_grad():
            torch._inductor.aoti_compile_and_package(program, package_path=f, inductor_configs=_configs(device))
    except OutputWriteError:
        raise
    except Exception as exc:  # noqa: BLE001 - inductor raises many types; all become one line
        disk = write_error(exc)
        if disk is not None:
            raise disk from exc
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        raise ExportError(f"AOTInductor compile failed: {type(exc).__name__}: {first[:240]}") from exc
    compile_seconds = time.perf_counter() - start
    runner = torch._inductor.aoti_load_package(str(path))

    def run(tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            out = runner(**{name: t.to(device) for name, t in tensors.items()})
        return (out,) if isinstance(out, torch.Tensor) else tuple(out)

    parity = verify(run, checks, subject, f"{path.name} (AOTInductor)")
    details = {
        "bytes": path.stat().st_size,
        "inductor_configs": _configs(device),
        "compile_seconds": round(compile_seconds, 2),
        "torch": torch.__version__,
        "dynamic": {name: {str(a): d.__name__ for a, d in spec.items()} for name, spec in (subject.captured.dynamic_shapes or {}).items()},
        "load_with": f"torch._inductor.aoti_load_package('{path.name}')",
    }
    return subject.artifact("aoti", path, device, parity, details, started=start)
