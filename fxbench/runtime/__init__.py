"""Measurement: one session per backend behind one interface, the harness, agreement metrics, and
`bench` over what it is handed. It loads no models and renders nothing (fxbench.jobs and fxbench.reports do)."""

from fxbench.runtime.backends import BACKENDS, Backend, BackendSpec, create_session, default_backends, folder_backends, parse_backends
from fxbench.runtime.bench import (
    BackendRecord,
    BenchResult,
    BenchSettings,
    Choice,
    Measurement,
    ParityRecord,
    Shape,
    Workload,
    best_artifact,
    bench,
    parse_image_sizes,
    shapes_from,
)
from fxbench.runtime.harness import LatencyStats, Measure, Warmup

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendRecord",
    "BackendSpec",
    "BenchResult",
    "BenchSettings",
    "Choice",
    "LatencyStats",
    "Measure",
    "Measurement",
    "ParityRecord",
    "Shape",
    "Warmup",
    "Workload",
    "bench",
    "best_artifact",
    "create_session",
    "default_backends",
    "folder_backends",
    "parse_backends",
    "parse_image_sizes",
    "shapes_from",
]
