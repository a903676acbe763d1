"""Measurement: one session per backend behind one interface, the harness, agreement metrics, and
`bench` over what it is handed. It loads no models and renders nothing (fxbench.jobs and fxbench.reports do)."""

from fxbench.runtime.backends import (
    BACKENDS, Backend, BackendSpec, create_session, default_backends, folder_backends, parse_backends, register_backend,
)
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
from fxbench.runtime.generation import (
    GenerationResult,
    GenerationSettings,
    GenerationSubject,
    best_generation,
    greedy_generate,
    measure_generation,
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
    "GenerationResult",
    "GenerationSettings",
    "GenerationSubject",
    "LatencyStats",
    "Measure",
    "Measurement",
    "ParityRecord",
    "Shape",
    "Warmup",
    "Workload",
    "bench",
    "best_artifact",
    "best_generation",
    "create_session",
    "default_backends",
    "folder_backends",
    "greedy_generate",
    "measure_generation",
    "parse_backends",
    "parse_image_sizes",
    "register_backend",
    "shapes_from",
]
