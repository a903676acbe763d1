"""Run a pass pipeline with torch.fx's PassManager, verifying every pass against eager PyTorch."""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule
from torch.fx.passes.infra.pass_base import PassBase, PassResult
from torch.fx.passes.infra.pass_manager import PassManager

from fxbench.errors import FxbenchError, PassOptionError, VerificationError
from fxbench.numerics import PRECISIONS, Parity, Tolerance, compare
from fxbench.passes._graph import run
from fxbench.passes.base import MANAGED, FxbenchPass, PassContext, set_output_names
from fxbench.passes.base import output_names as graph_output_names

__all__ = ["PassRecord", "PipelineResult", "Verifier", "op_histogram", "run_pipeline"]

ProgressFn = Callable[[str, str], None]  # (pass name, phase: "start" | status)


def op_histogram(gm: GraphModule) -> Counter[str]:
    """How many times each op is called in the graph."""
    return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: status is applied, unchanged, rolled-back or failed."""

    name: str
    options: dict[str, Any]
    status: str
    modified: bool
    nodes_before: int
    nodes_after: int
    op_delta: dict[str, int]
    parity: Parity | None
    tolerance: Tolerance
    seconds: float
    verify_seconds: float
    message: str = ""
    rebased: bool = False
    precision: str = "fp32"  # the precision the pass brings in (its tolerance class)
    details: dict[str, Any] = field(default_factory=dict)  # what the pass reported (FxbenchPass.details)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parity"] = self.parity.to_dict() if self.parity else None
        d["tolerance"] = self.tolerance.to_dict()
        return d


@dataclass
class PipelineResult:
    module: GraphModule
    records: list[PassRecord]
    parity: Parity  # final program against eager
    tolerance: Tolerance
    output_names: tuple[str, ...]
    reference: tuple[torch.Tensor, ...]  # what the final program is checked against
    rebased: bool = False  # True if a deliberate model change (surgery) moved the reference
    eager_parity: Parity | None = None  # final program against the captured eager outputs, when comparable
    precision: str = "fp32"  # the lowest precision an applied pass brought in

    @property
    def rolled_back(self) -> list[PassRecord]:
        return [r for r in self.records if r.status in ("rolled-back", "failed")]


@dataclass
class Verifier:
    """Holds the reference outputs and the tolerance so far; checks one pass's result."""

    inputs: dict[str, torch.Tensor]
    reference: tuple[torch.Tensor, ...]
    names: tuple[str, ...]
    original: GraphModule | None = None  # the captured graph, for references of new outputs
    tolerance: Tolerance = field(default_factory=lambda: Tolerance.for_precision("fp32"))
    strict: bool = False
    records: list[PassRecord] = field(default_factory=list)
    progress: ProgressFn | None = None
    rebased: bool = False

    def reference_for(self, gm: GraphModule, fallback: GraphModule) -> tuple[torch.Tensor, ...]:
        """Reference values for outputs a pass chose anew (extract): the values that the nodes
        feeding `gm`'s output had in the captured graph (eager-exact) if it has them all, else in
        the program before the pass. Passes keep node names, so names identify the nodes."""
        out_node = next(iter(gm.graph.find_nodes(op="output")))
        if not all(isinstance(a, torch.fx.Node) for a in out_node.args[0]):
            raise VerificationError("the new outputs are not all graph nodes")
        wanted = [a.name for a in out_node.args[0]]
        for source in (self.original, fallback):
            if source is None or not set(wanted) <= {n.name for n in source.graph.nodes}:
                continue
            values: dict[str, Any] = {}
            run(source, self.inputs, lambda n, value: values.update({n.name: value}) if n.name in wanted else None)
            return tuple(values[w] for w in wanted)
        raise VerificationError(f"no reference for the new outputs (nodes {', '.join(map(str, wanted))})")


class VerifiedPass(PassBase):
    """One fxbench pass run on a module that can be restored: lint, run on the sample inputs,
    compare with the reference, roll back if the tolerance is broken or the pass raised. The graph
    is run as it stands (an Interpreter): the PassManager recompiles it once, after."""

    def __init__(self, inner: FxbenchPass, verifier: Verifier):
        super().__init__()
        self.inner = inner
        self.verifier = verifier

    def call(self, graph_module: GraphModule) -> PassResult:
        v, p = self.verifier, self.inner
        if v.progress:
            v.progress(p.name, "start")
        snapshot = copy.deepcopy(graph_module)
        before_hist, before_nodes = op_histogram(graph_module), len(graph_module.graph.nodes)
        tolerance = v.tolerance.loosest(Tolerance.for_precision(p.precision))
        notes = p.context.notes if p.context is not None else []
        first_note = len(notes)  # what the pass notes about its work goes into its record

        def record(status: str, gm: GraphModule, modified: bool, parity: Parity | None, seconds: float,
                   verify_seconds: float, message: str = "", rebased: bool = False) -> None:
            after = op_histogram(gm)
            delta = {op: after[op] - before_hist[op] for op in set(after) | set(before_hist) if after[op] != before_hist[op]}
            rec = PassRecord(p.name, p.options_dict(), status, modified, before_nodes, len(gm.graph.nodes),
                             dict(sorted(delta.items())), parity, tolerance, seconds, verify_seconds, message, rebased,
                             p.precision, dict(p.details))
            v.records.append(rec)
            if v.progress:
                v.progress(p.name, status)

        start = time.perf_counter()
        try:
            result = p(graph_module)
            gm = result.graph_module
            gm.graph.lint()
        except Exception as exc:  # noqa: BLE001 - a failing pass is rolled back and reported, not fatal
            if isinstance(exc, PassOptionError):
                raise  # options this model cannot take (layer 20 of 12) are the user's to fix, not a rollback
            seconds = time.perf_counter() - start
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            record("failed", snapshot, False, None, seconds, 0.0, message)
            if v.strict:
                raise VerificationError(f"pass {p.name} failed on {_model(p)}{_at(exc)}: {message}; {_without(p)}") from exc
            return PassResult(snapshot, False)
        seconds = time.perf_counter() - start
        if not result.modified:
            record("unchanged", gm, False, None, seconds, 0.0)
            return PassResult(gm, False)

        start = time.perf_counter()
        names = graph_output_names(gm) or v.names
        try:
            outputs = run(gm, v.inputs)
            reference = v.reference if names == v.names else v.reference_for(gm, snapshot)
            parity = compare(outputs, reference, names)
        except Exception as exc:  # noqa: BLE001 - the transformed graph does not run: roll back
            verify_seconds = time.perf_counter() - start
            message = f"the graph no longer runs: {type(exc).__name__}: {exc}".splitlines()[0][:300]
            record("failed", snapshot, True, None, seconds, verify_seconds, message)
            if v.strict:
                raise VerificationError(f"pass {p.name} on {_model(p)}{_at(exc)}: {message}; {_without(p)}") from exc
            return PassResult(snapshot, False)
        verify_seconds = time.perf_counter() - start

        if (p.exact and not tolerance.accepts(parity)) or not parity.finite:
            why = tolerance.explain(parity)
            record("rolled-back", snapshot, True, parity, seconds, verify_seconds, why)
            if v.strict:
                raise VerificationError(f"pass {p.name} broke the tolerance on {_model(p)} ({why}); {_without(p)}")
            return PassResult(snapshot, False)

        rebased = not p.exact or names != v.names
        if rebased:
            # A deliberate change of the model (or of what it outputs): what follows is checked
            # against the changed model, and the change itself is in this record.
            v.reference, v.names, v.rebased = outputs, names, True
        v.tolerance = tolerance
        record("applied", gm, True, parity, seconds, verify_seconds, "; ".join(notes[first_note:]), rebased=rebased)
        return PassResult(gm, True)


def _model(p: FxbenchPass) -> str:
    config = p.context.config if p.context is not None else None
    return f"this {config.model_type} model" if getattr(config, "model_type", None) else "this model"


def _at(exc: BaseException) -> str:
    from fxbench.models import failing_node  # the graph node the error came from, where it came from one

    node = failing_node(exc)
    return f" at {node}" if node else ""


def _without(p: FxbenchPass) -> str:
    return f"run without --strict to roll it back, or leave it out: --passes -{p.name}"


def _unwrap(exc: BaseException) -> FxbenchError | None:
    """PassManager wraps every pass exception in a bare Exception; find ours inside."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, FxbenchError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def run_pipeline(
    graph_module: GraphModule,
    passes: Sequence[FxbenchPass],
    *,
    inputs: dict[str, torch.Tensor],
    reference: Sequence[torch.Tensor],
    output_names: Sequence[str],
    context: PassContext | None = None,
    strict: bool = False,
    tolerance: Tolerance | None = None,
    progress: ProgressFn | None = None,
) -> PipelineResult:
    """Run `passes` in order on `graph_module` (changed in place where the passes are in-place).

    After each pass: graph lint, a run on `inputs`, and a comparison with `reference` at the
    loosest tolerance of the precisions applied so far (or `tolerance`, if given, as the floor).
    A pass that raises or breaks the tolerance is rolled back and recorded; with `strict`, it
    raises VerificationError instead.
    """
    names = tuple(output_names)
    if graph_output_names(graph_module) is None:
        set_output_names(graph_module, names)
    original = copy.deepcopy(graph_module)
    verifier = Verifier(
        inputs=inputs,
        reference=tuple(reference),
        names=names,
        original=original,
        tolerance=tolerance or Tolerance.for_precision("fp32"),
        strict=strict,
        progress=progress,
    )
    ctx = context or PassContext(inputs=inputs)
    for p in passes:
        p.context = ctx
    manager = PassManager(passes=[VerifiedPass(p, verifier) for p in passes], run_checks_after_each_pass=False)
    managed = MANAGED.set(True)
    try:
        result = manager(graph_module) if passes else PassResult(graph_module, False)
    except Exception as exc:
        ours = _unwrap(exc)
        if ours is not None:
            raise ours from exc
        raise
    finally:
        MANAGED.reset(managed)
    final = result.graph_module
    final_names = graph_output_names(final) or verifier.names
    outputs = run(final, inputs)
    parity = compare(outputs, verifier.reference, final_names)
    eager_parity = compare(outputs, tuple(reference), final_names) if final_names == names else None
    applied = [PRECISIONS.index(r.precision) for r in verifier.records if r.status == "applied"]
    precision = PRECISIONS[max(applied, default=0)]
    return PipelineResult(final, verifier.records, parity, verifier.tolerance, final_names, verifier.reference,
                          verifier.rebased, eager_parity, precision)
