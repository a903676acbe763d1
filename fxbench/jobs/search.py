"""`fxbench optimize --search`: each preset that fits the device is a candidate in its own folder;
all candidates' artifacts are timed in one benchmark against one eager baseline, the best artifact
within the accuracy budget wins, and its candidate's files become the output."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fxbench.errors import VerificationError
from fxbench.exporters import Artifact
from fxbench.passes import PipelineResult
from fxbench.reports.records import SearchCandidate
from fxbench.runtime.backends import Backend
from fxbench.runtime.bench import BenchResult, Choice
from fxbench.runtime.generation import GenerationResult
from fxbench.runtime.harness import Measure, Warmup

if TYPE_CHECKING:
    from fxbench.exporters.export import ExportFailure

__all__ = ["SCREEN_MEASURE", "SCREEN_WARMUP", "Candidate", "candidate_folder", "file_named", "keep_winner", "left_out", "pick_winner",
           "relabel"]

# The screen before the full benchmark: a few interleaved runs of every candidate's artifacts, enough
# to tell a 10 ms ONNX Runtime session from a 100 ms program (its times are in report.json's
# `screen`); the finalists then get the request's full warm-up and timing.
SCREEN_WARMUP = Warmup(iters=1, seconds=0.1, window=2, max_seconds=10.0)
SCREEN_MEASURE = Measure(seconds=0.5, min_iters=2, rounds=2)

# Export targets a search does not make unless --to names them or the preset is for them, by device:
# on a CPU, AOTInductor's compile takes minutes per fp32 or int8 candidate, and those packages run
# slower than ONNX Runtime's artifacts (bf16-cpu's package is the exception, and its preset names it).
_LEFT_OUT = {"cpu": ("aoti",)}


def file_named(choice: Choice) -> Choice:
    """`choice` with its artifact as a file name: the run happened in a staging folder that is renamed away."""
    return dataclasses.replace(choice, artifact=Path(choice.artifact).name if choice.artifact else None)


@dataclass
class Candidate:
    """One pipeline's run: its program, artifacts, its labels in the shared benchmark and the
    fastest of its artifacts within budget."""

    pipeline: str | None
    passes: list[str]
    result: PipelineResult | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    failures: tuple[ExportFailure, ...] = ()
    backends: list[Backend] = field(default_factory=list)  # its artifacts in the benchmark (eager is shared)
    bench: BenchResult | None = None
    best: Choice | None = None
    generation: GenerationResult | None = None  # a with-past capture's benchmark, by greedy generation
    error: str | None = None  # the candidate failed as a whole (search goes on with the others)
    timings: dict[str, float] = field(default_factory=dict)  # by step name, without the candidate's prefix
    left_out: tuple[str, ...] = ()  # export targets the search did not make (see `left_out`)

    @property
    def labels(self) -> list[str]:
        return [b.label for b in self.backends]

    def record(self) -> SearchCandidate:
        return SearchCandidate(
            pipeline=self.pipeline, passes=tuple(self.passes), status="failed" if self.error else "ok", error=self.error,
            precision=self.result.precision if self.result else None, parity=self.result.parity if self.result else None,
            artifacts=tuple(a.file for a in self.artifacts), best=file_named(self.best) if self.best else None,
            seconds=round(sum(self.timings.values()), 3), left_out=self.left_out,
        )


def left_out(targets: tuple[str, ...], device: str, own: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Those of `targets` a search on `device` does not make unless they are named, or are among
    `own`, the targets the candidate's preset is for."""
    return tuple(t for t in targets if t in _LEFT_OUT.get(device, ()) and t not in own)


def candidate_folder(staging: Path, pipeline: str | None) -> Path:
    return staging / "search" / str(pipeline)


def relabel(backends: list[Backend], pipeline: str | None) -> list[Backend]:
    """A candidate's artifact backends labelled with its pipeline (ort@int8-cpu/model.onnx), so that
    every candidate's files keep their own name in the one shared benchmark."""
    return [dataclasses.replace(b, label=f"{b.name}@{pipeline}/{Path(b.artifact).name}") if b.artifact else b for b in backends]


def pick_winner(candidates: list[Candidate], best: Choice | None) -> Candidate:
    """The candidate whose artifact is `best` (the best of all candidates' within budget); without
    one, the first that ran; none ran: an error."""
    ok = [c for c in candidates if c.error is None]
    if best is not None:
        owner = next((c for c in ok if best.backend in c.labels), None)
        if owner is not None:
            return owner
    if ok:
        return ok[0]
    raise VerificationError("every candidate pipeline failed: " + "; ".join(f"{c.pipeline}: {c.error}" for c in candidates))


def keep_winner(staging: Path, winner: Candidate) -> None:
    """The winner's files up into the output folder; the other candidates' go."""
    for item in candidate_folder(staging, winner.pipeline).iterdir():
        shutil.move(str(item), staging / item.name)
    shutil.rmtree(staging / "search")
