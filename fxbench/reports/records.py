"""The typed records the jobs return and the renderers read: the optimize report and what it is made of,
an inspection, and the pass catalog; `to_dict()` is exactly what report.json (or --json) holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from torch.fx import GraphModule

from fxbench.exporters import Artifact
from fxbench.numerics import Parity, Tolerance
from fxbench.passes import PassRecord
from fxbench.runtime.bench import BenchResult, Choice

if TYPE_CHECKING:  # the exporters' target table loads onnx: its records are only read here
    from fxbench.exporters.export import ExportFailure

__all__ = [
    "BestArtifact",
    "CaptureRecord",
    "Inspection",
    "ModelRecord",
    "OpHistogram",
    "OptimizeReport",
    "OptionEntry",
    "ParitySummary",
    "PassCatalog",
    "PassEntry",
    "PipelineEntry",
    "PipelineRecord",
    "ReportHeader",
    "SearchCandidate",
]


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Record:
    """A record's JSON form: its fields in order, the records in them by their own `to_dict`, tuples as lists."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelRecord(_Record):
    """The loaded model: where it came from, what it is, and the options it was loaded with."""

    source: str
    model_id: str | None
    name: str
    task: str
    modality: str
    architecture: str
    model_type: str
    parameters: int
    load_options: Mapping[str, Any] = field(default_factory=dict)  # flattened into the record (attn_implementation, ...)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        options = data.pop("load_options")
        return {**data, **options}


@dataclass(frozen=True)
class ReportHeader(_Record):
    """What every report.json of optimize and export opens with."""

    fxbench_version: str
    created: str
    model: ModelRecord
    inputs: Mapping[str, Any]  # the sample inputs (origin, batch, seq, ...) and the capture's dynamic ranges


@dataclass(frozen=True)
class CaptureRecord(_Record):
    """How long the capture took, its size, and its image / time axes: the dynamic ones with the
    ranges the program accepts, and for the kinds kept static, why (one line each)."""

    seconds: float
    nodes: int
    axes: str = ""
    static_axes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineRecord(_Record):
    """The pipeline that produced the program: its name (None: custom), the --passes edits, the passes run."""

    name: str | None
    edits: tuple[str, ...]
    passes: tuple[str, ...]


@dataclass(frozen=True)
class OpHistogram(_Record):
    before: Mapping[str, int]
    after: Mapping[str, int]


@dataclass(frozen=True)
class ParitySummary(_Record):
    """The optimized program against its reference (eager fp32, or the model as surgery changed it)."""

    against: str
    final: Parity
    eager: Parity | None
    tolerance: Tolerance


@dataclass(frozen=True)
class BestArtifact(_Record):
    """The fastest artifact within the accuracy budget (its artifact a file name), and that budget."""

    choice: Choice
    min_cosine: float
    max_abs_error: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.choice.to_dict(), "min_cosine": self.min_cosine, "max_abs_error": self.max_abs_error}


@dataclass(frozen=True)
class SearchCandidate(_Record):
    """One pipeline tried by --search: what it made, how fast its best artifact ran, or why it failed."""

    pipeline: str | None
    passes: tuple[str, ...]
    status: str  # "ok" or "failed"
    error: str | None
    precision: str | None
    parity: Parity | None
    artifacts: tuple[str, ...]
    best: Choice | None  # its artifact a file name
    seconds: float


@dataclass(frozen=True)
class OptimizeReport(_Record):
    """Everything `fxbench optimize` found, in the order report.json lists it."""

    header: ReportHeader
    capture: CaptureRecord
    device: str
    pipeline: PipelineRecord
    passes: tuple[PassRecord, ...]
    op_histogram: OpHistogram
    parity: ParitySummary
    artifacts: tuple[Artifact, ...]  # model.pt2 first
    export_failures: tuple[ExportFailure, ...]
    benchmark: BenchResult | None  # artifacts named by file name (the run's staging folder is gone)
    best: BestArtifact | None
    environment: Mapping[str, Any]
    seconds: Mapping[str, float]
    search: tuple[SearchCandidate, ...] | None = None  # with --search only

    @property
    def model(self) -> ModelRecord:
        return self.header.model

    def files(self) -> list[str]:
        """The files the output folder holds."""
        names = [a.file for a in self.artifacts] + ["report.json", "report.md"]
        return names + (["report.html"] if self.benchmark is not None else [])

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data = {**data.pop("header"), **data}  # the header's keys open the report
        if self.search is None:
            del data["search"]
        return data


@dataclass(frozen=True)
class Inspection(_Record):
    """What a captured or saved program holds; the graph itself stays out of the JSON."""

    source: str
    parameters: int
    buffers: int
    nodes: int
    op_histogram: Mapping[str, int]
    nodes_per_module: Mapping[str, int]
    graph: GraphModule

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if k != "graph"}


@dataclass(frozen=True)
class OptionEntry(_Record):
    name: str
    type: str
    default: Any


@dataclass(frozen=True)
class PassEntry(_Record):
    name: str
    summary: str
    origin: str  # "built-in" or "plugin (distribution)"
    precision: str
    options: tuple[OptionEntry, ...]


@dataclass(frozen=True)
class PipelineEntry(_Record):
    name: str
    summary: str
    passes: tuple[str, ...]
    device: str | None


@dataclass(frozen=True)
class PassCatalog(_Record):
    """`fxbench passes list`: every registered pass, the pipelines, and plugins that failed to load."""

    passes: tuple[PassEntry, ...]
    pipelines: tuple[PipelineEntry, ...]
    plugin_errors: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["pipelines"] = {p.pop("name"): p for p in data["pipelines"]}  # by name, as `passes list --json` has always keyed them
        return data
