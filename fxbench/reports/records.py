"""The typed records the jobs return and the renderers read: the optimize report and what it is made of,
an inspection, and the pass catalog; `to_dict()` is exactly what report.json (or --json) holds."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from torch.fx import GraphModule

from fxbench.exporters import Artifact
from fxbench.numerics import Parity, Tolerance
from fxbench.passes import PassRecord
from fxbench.reports.schema import SCHEMA_VERSION
from fxbench.runtime.bench import BenchResult, Choice
from fxbench.runtime.generation import GenerationResult

if TYPE_CHECKING:  # the exporters' target table loads onnx: its records are only read here
    from fxbench.exporters.export import ExportFailure

__all__ = [
    "BestArtifact",
    "CaptureRecord",
    "ComparedRow",
    "ComparedRun",
    "Comparison",
    "ExportReport",
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelRecord:
        names = [f.name for f in fields(cls) if f.name != "load_options"]
        return cls(**{n: data.get(n) for n in names}, load_options={k: v for k, v in data.items() if k not in names})


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
        # A budget without a bound is null ("no limit"), not the string "inf".
        return {**self.choice.to_dict(), "min_cosine": self.min_cosine,
                "max_abs_error": self.max_abs_error if math.isfinite(self.max_abs_error) else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BestArtifact:
        bound = data.get("max_abs_error")
        return cls(Choice.from_dict(data), float(data["min_cosine"]), math.inf if bound is None else float(bound))


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
    left_out: tuple[str, ...] = ()  # export targets the search did not make (--to names them)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchCandidate:
        return cls(
            pipeline=data.get("pipeline"), passes=tuple(data.get("passes") or ()), status=data["status"], error=data.get("error"),
            precision=data.get("precision"), parity=Parity.from_dict(data["parity"]) if data.get("parity") else None,
            artifacts=tuple(data.get("artifacts") or ()), best=Choice.from_dict(data["best"]) if data.get("best") else None,
            seconds=float(data.get("seconds") or 0.0), left_out=tuple(data.get("left_out") or ()),
        )


def _pass_record(data: Mapping[str, Any]) -> PassRecord:
    names = {f.name for f in fields(PassRecord)}
    values = {k: v for k, v in data.items() if k in names}
    values["parity"] = Parity.from_dict(data["parity"]) if data.get("parity") else None
    values["tolerance"] = Tolerance.from_dict(data["tolerance"])
    return PassRecord(**values)


def _export_failures(data: Any) -> tuple[ExportFailure, ...]:
    from fxbench.exporters.export import ExportFailure

    return tuple(ExportFailure(**f) for f in data or ())


def _nested_benchmark(bench: dict[str, Any]) -> dict[str, Any]:
    """A benchmark inside a report: the report says the environment and fxbench's version once, at its top."""
    return {k: v for k, v in bench.items() if k not in ("environment", "fxbench_version")}


class _FolderReport(_Record):
    """What an output folder's report.json holds: the schema's header (its version and kind, then
    the model and inputs), the artifacts, and report.md / report.html beside it."""

    kind: ClassVar[str]
    header: ReportHeader
    artifacts: tuple[Artifact, ...]

    @property
    def model(self) -> ModelRecord:
        return self.header.model

    def files(self) -> list[str]:
        """The files the output folder holds."""
        return [a.file for a in self.artifacts] + ["report.json", "report.md", "report.html"]

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        # The header's keys open the report, after what it is and which schema it follows.
        return {"schema_version": SCHEMA_VERSION, "kind": self.kind, **data.pop("header"), **data}


@dataclass(frozen=True)
class OptimizeReport(_FolderReport):
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
    generation: GenerationResult | None = None  # a with-past capture's benchmark (greedy generation), instead of `benchmark`
    # A search's short screen of every candidate's artifacts (`benchmark` then times each candidate's fastest).
    screen: BenchResult | None = None

    kind: ClassVar[str] = "optimize"

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if data["benchmark"] is not None:
            data["benchmark"] = _nested_benchmark(data["benchmark"])
        if self.search is None:
            del data["search"]
        if self.generation is None:
            del data["generation"]
        if self.screen is None:
            del data["screen"]
        else:
            data["screen"] = _nested_benchmark(data["screen"])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizeReport:
        """From report.json (this schema's major version), for the renderers: `fxbench export` adding
        to a folder rewrites its report.md and report.html from it."""
        parity = data["parity"]
        bench = data.get("benchmark")
        return cls(
            header=ReportHeader(data.get("fxbench_version", ""), data.get("created", ""), ModelRecord.from_dict(data["model"]),
                                dict(data.get("inputs") or {})),
            capture=CaptureRecord(float(data["capture"]["seconds"]), int(data["capture"]["nodes"])),
            device=data["device"],
            pipeline=PipelineRecord(data["pipeline"].get("name"), tuple(data["pipeline"].get("edits") or ()),
                                    tuple(data["pipeline"].get("passes") or ())),
            passes=tuple(_pass_record(p) for p in data.get("passes") or ()),
            op_histogram=OpHistogram(dict(data["op_histogram"]["before"]), dict(data["op_histogram"]["after"])),
            parity=ParitySummary(parity["against"], Parity.from_dict(parity["final"]),
                                 Parity.from_dict(parity["eager"]) if parity.get("eager") else None, Tolerance.from_dict(parity["tolerance"])),
            artifacts=tuple(Artifact.from_dict(a) for a in data.get("artifacts") or ()),
            export_failures=_export_failures(data.get("export_failures")),
            benchmark=BenchResult.from_dict(bench, environment=data.get("environment")) if bench else None,
            best=BestArtifact.from_dict(data["best"]) if data.get("best") else None,
            environment=dict(data.get("environment") or {}),
            seconds=dict(data.get("seconds") or {}),
            search=tuple(SearchCandidate.from_dict(c) for c in data["search"]) if data.get("search") is not None else None,
            screen=BenchResult.from_dict(data["screen"], environment=data.get("environment")) if data.get("screen") else None,
        )


@dataclass(frozen=True)
class ExportReport(_FolderReport):
    """What `fxbench export` of a model (or of a model.pt2 into a new folder) found."""

    header: ReportHeader
    source: Mapping[str, Any]  # {"program": path of the model.pt2 exported, or None for a model; "passes": whether it had any}
    artifacts: tuple[Artifact, ...]
    export_failures: tuple[ExportFailure, ...]
    environment: Mapping[str, Any]
    seconds: Mapping[str, float]

    kind: ClassVar[str] = "export"


@dataclass(frozen=True)
class ComparedRun(_Record):
    """One run of a comparison: its letter in the table, where its report is, and what it measured."""

    key: str
    path: str
    kind: str
    model: str
    created: str
    device: str
    threads: int
    best: str | None  # the best artifact it named, with the budget met


@dataclass(frozen=True)
class ComparedRow(_Record):
    """One backend at one shape across the runs (None where a run did not measure it)."""

    backend: str
    shape: str
    median_ms: tuple[float | None, ...]
    spread: tuple[float | None, ...]  # IQR / median
    speedup: tuple[float | None, ...]  # against that run's own eager
    cosine: tuple[float | None, ...]
    ratio: tuple[float | None, ...]  # the first run's median / this run's: above 1, faster than the first (None for the first)
    beyond_noise: tuple[bool | None, ...]  # the change from the first run is larger than the noise of both

    @property
    def present(self) -> int:
        return sum(m is not None for m in self.median_ms)


@dataclass(frozen=True)
class Comparison(_Record):
    """`fxbench compare`: the same backends and shapes of several runs side by side, and what differs
    in the machines, versions and settings they ran with."""

    runs: tuple[ComparedRun, ...]
    rows: tuple[ComparedRow, ...]
    differences: Mapping[str, tuple[Any, ...]]  # a dotted key (packages.torch, cpu_isa.vnni, settings.measure.rounds) -> per run


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
