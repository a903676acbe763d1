"""What every artifact is checked on: the sample inputs and a second shape, against eager PyTorch."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram

from fxbench.errors import VerificationError
from fxbench.exporters.base import Artifact
from fxbench.models import CapturedProgram, run_module
from fxbench.numerics import Parity, Tolerance, compare

__all__ = ["Check", "ExportSubject", "build_checks", "second_inputs", "second_shape", "verify"]

Runner = Callable[[Mapping[str, torch.Tensor]], Sequence[Any]]


@dataclass(frozen=True)
class ExportSubject:
    """The optimized program to export, the capture it came from, and what it is held to.

    `program` is the optimized graph exported again with the capture's dynamic shapes
    (`fxbench.models.export_graph_module`). `rebased` is True when the pipeline changed the model on
    purpose (layer surgery, new outputs): artifacts are then checked against the optimized
    program itself, since eager PyTorch no longer computes the same function.
    """

    program: ExportedProgram
    captured: CapturedProgram
    output_names: tuple[str, ...]
    precision: str = "fp32"
    tolerance: Tolerance | None = None
    rebased: bool = False

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.captured.input_names

    @property
    def held_to(self) -> Tolerance:
        return self.tolerance or Tolerance.for_precision(self.precision)

    def reference(self, tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if self.rebased:
            return run_module(self.program.module(), tensors)
        return self.captured.run_eager(tensors)

    def artifact(self, kind: str, path: Path, device: str, parity: dict[str, Any], details: dict[str, Any], *,
                 started: float, precision: str | None = None) -> Artifact:
        """The record of `path`, made from this subject and checked (`parity`): the subject's names,
        its precision unless the exporter lowered it, and the time since `started` (perf_counter)."""
        return Artifact(kind=kind, file=Path(path).name, device=device, precision=precision or self.precision,
                        input_names=self.input_names, output_names=self.output_names, parity=parity, details=details,
                        seconds=time.perf_counter() - started)


@dataclass(frozen=True)
class Check:
    """One set of inputs an artifact must reproduce, with the reference outputs."""

    name: str
    inputs: dict[str, torch.Tensor]
    reference: tuple[torch.Tensor, ...]


def _dim_range(captured: CapturedProgram, dim_name: str) -> tuple[int, int] | None:
    for spec in (captured.dynamic_shapes or {}).values():
        for dim in spec.values():
            if dim.__name__ == dim_name:
                return int(dim.min), int(dim.max)
    return None


def second_shape(captured: CapturedProgram, batch: int = 3, seq: int = 40) -> tuple[int, int | None] | None:
    """(batch, seq) for the check that proves the dynamic axes: batch 3 and sequence 40 (the
    decoder length for encoder-decoder models), kept inside the captured ranges; None when the
    program was captured with static shapes."""
    batch_range = _dim_range(captured, "batch")
    if batch_range is None:
        return None
    clamp = lambda value, lo_hi: min(max(value, lo_hi[0]), lo_hi[1])  # noqa: E731
    seq_range = _dim_range(captured, "decoder_seq" if captured.loaded.is_encoder_decoder else "seq")
    if captured.inputs.seq is None or seq_range is None:
        return clamp(batch, batch_range), None
    return clamp(batch, batch_range), clamp(seq, seq_range)


def _check_name(captured: CapturedProgram, batch: int, seq: int | None, sizes: Mapping[str, Any]) -> str:
    name = f"batch{batch}"
    if seq is not None:
        name += f"_{'decoder_seq' if captured.loaded.is_encoder_decoder else 'seq'}{seq}"
    if "image" in sizes:
        name += "_{}x{}".format(*sizes["image"])
    if "audio" in sizes:
        name += f"_len{sizes['audio']}"
    return name


def build_checks(subject: ExportSubject, batch: int = 3, seq: int = 40) -> tuple[Check, ...]:
    """The sample inputs, and (for dynamic programs) inputs at a second shape made the same way (a
    non-square image size and another audio length the capture never saw, where those axes are
    dynamic), each with its reference outputs computed once for every artifact."""
    captured = subject.captured
    sample = dict(captured.inputs.tensors)
    sample_ref = captured.reference if not subject.rebased else subject.reference(sample)
    checks = [Check("sample", sample, tuple(sample_ref))]
    second = second_inputs(captured, batch, seq)
    if second is not None:
        name, inputs = second
        checks.append(Check(name, inputs, subject.reference(inputs)))
    return tuple(checks)


def second_inputs(captured: CapturedProgram, batch: int = 3, seq: int = 40) -> tuple[str, dict[str, torch.Tensor]] | None:
    """The check's name and inputs at the second shape (`second_shape`, plus a non-square image
    size and an audio length the capture never saw where those axes are dynamic); None when static."""
    shape = second_shape(captured, batch, seq)
    if shape is None:
        return None
    sizes = captured.unseen_sizes()
    return _check_name(captured, *shape, sizes), dict(captured.make_inputs(shape[0], shape[1], seed=1, **sizes).tensors)


def verify(run: Runner, checks: Sequence[Check], subject: ExportSubject, what: str,
           tolerance: Tolerance | None = None, *, strict: bool = True) -> dict[str, dict[str, Any]]:
    """Run `run` on every check and compare with the reference; VerificationError if any misses
    the tolerance (the subject's, or `tolerance` for an artifact that lowers precision itself),
    unless `strict` is False (a baseline, recorded whatever it scores)."""
    held_to = tolerance or subject.held_to
    parities: dict[str, Parity] = {}
    for check in checks:
        outputs = run(check.inputs)
        parity = compare(outputs, check.reference, subject.output_names)
        if strict and not held_to.accepts(parity):
            raise VerificationError(
                f"{what} does not match eager PyTorch on the {check.name} inputs: {held_to.explain(parity)}"
            )
        parities[check.name] = parity
    return {name: p.to_dict() for name, p in parities.items()}
