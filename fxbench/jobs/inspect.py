"""`fxbench inspect`: what a captured or saved program holds (parameters, ops, nodes per module)."""

from __future__ import annotations

from collections import Counter

import torch
from torch.fx import GraphModule

from fxbench.events import EventFn, no_events, step
from fxbench.exporters import load_program
from fxbench.jobs.common import load_and_capture, resolve_model_source
from fxbench.jobs.folders import saved_program
from fxbench.models import DynamicDims, unlift
from fxbench.passes import op_histogram, read_tensors
from fxbench.passes.base import module_path
from fxbench.reports.records import Inspection

__all__ = ["inspect_program", "inspect_target"]


def _weight_counts(gm: GraphModule) -> tuple[int, int]:
    """(parameters, buffer and constant elements) the graph reads; tied weights count once."""
    seen: set[int] = set()
    params = others = 0
    for t in read_tensors(gm).values():
        if t.device.type == "meta" or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        if isinstance(t, torch.nn.Parameter):
            params += t.numel()
        else:
            others += t.numel()
    return params, others


def inspect_program(gm: GraphModule, source: str, depth: int = 3) -> Inspection:
    """Count what `gm` holds; modules are grouped by the first `depth` parts of their path."""
    per_module: Counter[str] = Counter()
    for n in gm.graph.nodes:
        if n.op == "call_function":
            path = module_path(n)
            per_module[".".join(path.split(".")[:depth]) if path else "(top level)"] += 1
    params, buffers = _weight_counts(gm)
    return Inspection(
        source=source,
        parameters=params,
        buffers=buffers,
        nodes=len(gm.graph.nodes),
        op_histogram=dict(op_histogram(gm).most_common()),
        nodes_per_module=dict(sorted(per_module.items())),
        graph=gm,
    )


def inspect_target(target: str | None, *, task: str | None = None, depth: int = 3, events: EventFn = no_events) -> Inspection:
    """Inspect a saved program (a .pt2 file, or an output folder's model.pt2) or a model to capture."""
    program = saved_program(target, "inspect")
    if program is not None:
        with step(events, "load program", {}):
            gm = unlift(load_program(program))
        return inspect_program(gm, str(program), depth)
    source = resolve_model_source(target)
    captured = load_and_capture(source, task=task, batch=2, seq=16, dims=DynamicDims(), attn_implementation=None, events=events)
    return inspect_program(captured.graph_module(), source, depth)
