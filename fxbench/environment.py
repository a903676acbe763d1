"""The machine and library versions that a report's numbers were measured with."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

import torch

__all__ = ["collect_environment", "package_version"]

_PACKAGES = ("fxbench", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "torchao", "tensorrt")


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


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
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": {name: v for name in _PACKAGES if (v := package_version(name)) is not None},
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
        }
    if command is not None:
        env["command"] = " ".join(command)
    return env


def _nvidia_driver() -> str | None:
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            first = f.readline()
        return next((tok for tok in first.split() if tok[:1].isdigit() and "." in tok), None)
    except OSError:
        return None
