"""The machine and library versions that a report's numbers were measured with."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["collect_environment", "cpu_isa", "package_version"]

_PACKAGES = (
    "fxbench", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "torchao", "tensorrt",
    "tensorrt-cu12", "tensorrt-cu13", "triton",
)


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# The instruction-set flags that decide which kernels run (int8 GEMMs need VNNI or AMX to be fast).
_ISA_FLAG = re.compile(r"^(sse4_[12]|avx|avx2|fma|f16c|avx_vnni|avx512.*|amx.*)$")


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def cpu_isa() -> dict[str, Any]:
    """What the CPU can run: torch's kernel level (DEFAULT, AVX2, AVX512, ...) and the ISA flags
    behind it, with the four that explain int8 and bf16 speed named."""
    flags = _cpu_flags()
    isa = sorted(f for f in flags if _ISA_FLAG.match(f))
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch
        capability = None
    return {
        "capability": capability,
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "vnni": any(f in flags for f in ("avx512_vnni", "avx_vnni", "avx512vnni")),
        "amx": any(f.startswith("amx") for f in flags),
        "flags": isa,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect_environment(command: list[str] | None = None) -> dict[str, Any]:
    """Versions, CPU, thread count and GPU; `command` is the exact command line that produced the numbers."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_isa": cpu_isa(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        # Other work on the machine while measuring makes timings noisy; the load says how busy it was.
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "packages": {name: v for name in _PACKAGES if (v := package_version(name)) is not None},
        "torch_cuda": torch.version.cuda,
        "onnxruntime_providers": _ort_providers(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "driver": _nvidia_driver(),
            "cudnn": torch.backends.cudnn.version(),
        }
    if command is not None:
        command = _redacted(list(command))
        if command and Path(command[0]).name in ("__main__.py", "fxbench"):  # `python -m fxbench` or the script
            command[0] = "fxbench"
        env["command"] = " ".join(command)
    return env


# Options whose values are secrets: the command line a report records says they were given, not what.
_SECRET_OPTIONS = ("--token",)


def _redacted(command: list[str]) -> list[str]:
    out = []
    hide = False
    for arg in command:
        if hide:
            out.append("***")
            hide = False
        elif arg in _SECRET_OPTIONS:
            out.append(arg)
            hide = True
        elif arg.startswith(tuple(f"{o}=" for o in _SECRET_OPTIONS)):
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out


def _nvidia_driver() -> str | None:
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            first = f.readline()
        return next((tok for tok in first.split() if tok[:1].isdigit() and "." in tok), None)
    except OSError:
        return None


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def _ort_providers() -> list[str] | None:
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except ImportError:
        return None
