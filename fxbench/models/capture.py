"""Capture a loaded model as an FX graph with torch.export (non-strict, dynamic shapes), beside its eager reference."""

from __future__ import annotations

import inspect
import re
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.export import ExportedProgram
from torch.fx import GraphModule

from fxbench.errors import CaptureError
from fxbench.models.inputs import DynamicDims, SampleInputs, dynamic_shapes_for, make_inputs
from fxbench.models.loading import LoadedModel

__all__ = [
    "CapturedProgram", "FlatOutputs", "GraphFault", "ReexportError", "capture", "capture_error", "eager_failure",
    "export_graph_module", "failing_node", "unlift", "run_module",
]

OutputPath = tuple[Any, ...]


def _output_paths(out: Any, prefix: OutputPath = ()) -> list[OutputPath]:
    """Paths to every tensor in a model output (ModelOutput, dict, tuple), in the output's own order."""
    if isinstance(out, torch.Tensor):
        return [prefix]
    if isinstance(out, Mapping):
        return [p for k, v in out.items() if v is not None for p in _output_paths(v, prefix + (k,))]
    if isinstance(out, (tuple, list)):
        return [p for i, v in enumerate(out) for p in _output_paths(v, prefix + (i,))]
    return []


def _path_name(path: OutputPath) -> str:
    return ".".join(str(p) for p in path) or "output"


class FlatOutputs(torch.nn.Module):
    """The model behind named inputs, returning its tensor outputs as a flat tuple in a fixed order.

    Export names the graph's placeholders after forward's parameters, so each instance gets a
    signature listing the model's own input names (input_ids, attention_mask, ...), and ONNX and
    AOTInductor artifacts keep them.
    """

    def __init__(self, model: torch.nn.Module, input_names: list[str], output_paths: list[OutputPath]):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_paths = [tuple(p) for p in output_paths]
        self.output_names = tuple(_path_name(p) for p in self.output_paths)

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, args), **kwargs)
        out = self.model(**named)
        result = []
        for path in self.output_paths:
            value = out
            for key in path:
                value = value[key]
            result.append(value)
        return tuple(result)


def _with_signature(wrapper: FlatOutputs) -> FlatOutputs:
    """Give this instance's forward an explicit signature of its input names (export reads it)."""
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in wrapper.input_names]
    cls = type(f"FlatOutputs_{len(params)}", (FlatOutputs,), {})

    def forward(self, *args, **kwargs):  # noqa: ANN001, ANN202 - signature set below
        return FlatOutputs.forward(self, *args, **kwargs)

    forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *params]
    )
    cls.forward = forward
    wrapper.__class__ = cls
    return wrapper


def unlift(exported: ExportedProgram) -> GraphModule:
    """The exported program as a GraphModule fit for passes: without the guard-checking node,
    which breaks subgraph rewriting (`check_guards` is absent before torch 2.9)."""
    try:
        return exported.module(check_guards=False)
    except TypeError:
        return exported.module()


def run_module(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Run a captured or transformed module on named inputs; the result is always a flat tuple."""
    with torch.no_grad():
        out = module(**tensors)
    if isinstance(out, torch.Tensor):
        return (out,)
    return tuple(out)


@dataclass
class CapturedProgram:
    """The exported program, the eager model it came from, its sample inputs and reference outputs."""

    loaded: LoadedModel
    eager: FlatOutputs
    exported: ExportedProgram
    inputs: SampleInputs
    dims: DynamicDims
    dynamic_shapes: dict[str, dict[int, Any]] | None
    reference: tuple[torch.Tensor, ...]
    seconds: float

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.inputs.tensors)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.eager.output_names

    def graph_module(self) -> GraphModule:
        """A fresh GraphModule of the captured program (each call unlifts anew)."""
        return unlift(self.exported)

    def make_inputs(self, batch: int, seq: int | None = None, *, seed: int = 0) -> SampleInputs:
        """Inputs at another shape, made the same way as the sample's."""
        return make_inputs(
            self.loaded, batch, seq if seq is not None else (self.inputs.seq or 16), seed=seed,
            use_preprocessor=self.inputs.origin != "config",
        )

    def run_eager(self, tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return run_module(self.eager, tensors)


def _model_frame(exc: BaseException) -> str | None:
    """The innermost traceback line outside torch and fxbench: the model's own line that broke."""
    frames: list[traceback.FrameSummary] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        frames.extend(traceback.extract_tb(e.__traceback__))
        e = e.__cause__ or e.__context__
    for fs in reversed(frames):
        fname = fs.filename.replace("\\", "/")
        if "/torch/" in fname or "/fxbench/" in fname or fname.startswith("<"):
            continue
        short = "/".join(fname.split("/")[-3:])
        return f"{short}:{fs.lineno} ({(fs.line or '').strip()[:80]})"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


class GraphFault(NamedTuple):
    """Where in a graph something failed: `op` as the op histograms name it (str of the target),
    `text` as an error line names it: "aten.op (node name, module path)"."""

    op: str
    text: str

    def __str__(self) -> str:
        return self.text


def _fault(node: torch.fx.Node) -> GraphFault:
    stack = node.meta.get("nn_module_stack") or {}
    path = str(list(stack.values())[-1][0]).removeprefix("model.") if stack else ""
    module = f", module {path}" if path and path != "model" and not path.startswith("_empty") else ""
    name = str(node.target) if isinstance(node.target, torch._ops.OpOverload) else getattr(node.target, "__name__", str(node.target))
    return GraphFault(str(node.target), f"{name} (node {node.name}{module})")


def failing_node(exc: BaseException) -> GraphFault | None:
    """The graph node an exception was raised at: found from the traceback's frames in FX-generated
    code (each maps its line to a node), or from the "While executing %node" that torch's
    interpreters add. None when the failure is outside a graph."""
    found: torch.fx.Node | None = None
    for e in _chain(exc):
        tb = e.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            gm = frame.f_locals.get("self")
            lines = getattr(gm, "_lineno_map", None)
            if isinstance(gm, GraphModule) and lines and frame.f_code.co_filename.startswith("<eval_with_key>"):
                index = lines.get(tb.tb_lineno - getattr(gm, "_prologue_start", 0))
                nodes = list(gm.graph.nodes)
                if index is not None and 0 <= index < len(nodes):
                    found = nodes[index]  # the innermost graph frame wins
            elif frame.f_code.co_name == "run_node" and isinstance(frame.f_locals.get("n"), torch.fx.Node):
                found = frame.f_locals["n"]  # torch.fx.Interpreter (export runs a GraphModule through one)
            tb = tb.tb_next
        if found is not None:
            return _fault(found)
    for e in _chain(exc):
        match = re.search(r"While executing %(\w+) : .*?target=([\w.]+)", str(e))
        if match:
            op = match.group(2).removeprefix("torch.ops.")
            return GraphFault(op, f"{op} (node {match.group(1)})")
    return None


def _model_type(loaded: LoadedModel) -> str:
    return f"{loaded.config.model_type} ({type(loaded.model).__name__})"


def eager_failure(exc: BaseException, what: str = "the model", inputs: Sequence[str] = ()) -> CaptureError:
    """One line for a model that fails in eager PyTorch on its sample inputs, at the model's own line;
    `inputs` names what it was given, for a model that wants others."""
    where = _model_frame(exc)
    given = f"; fxbench gave it {', '.join(inputs)}: try another --task, or a model folder with its tokenizer / processor" if inputs else ""
    return CaptureError(
        f"{what} failed in eager PyTorch on its sample inputs{' at ' + where if where else ''}: "
        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}{given}"
    )


_RANGE_FLAGS = {"batch": "--batch-range", "seq": "--seq-range", "decoder_seq": "--seq-range"}


def _suggested_fixes(text: str) -> str | None:
    """torch.export's "Suggested fixes" for a dynamic dimension (`seq = Dim('seq', max=8)`, `seq = 16`)
    as the flags that make them: --seq-range 2:8, or --static with that size."""
    if "Suggested fixes:" not in text:
        # A guard that excludes the range's top only (GPT-Neo: seq != 128, its positions): stop below it.
        top = re.search(r"values of (\w+) = .*? in the specified range .*?\1 <= (\d+) satisfy the generated guard .*? != (\d+)\.", text)
        if top and top.group(1) in _RANGE_FLAGS and top.group(2) == top.group(3):
            name, hi = top.group(1), int(top.group(2))
            return f"torch.export needs {name} != {hi}: try {_RANGE_FLAGS[name]} {1 if name == 'batch' else 2}:{hi - 1}"
        return None
    tried: list[str] = []
    for fix in text.split("Suggested fixes:", 1)[1].strip().splitlines():
        fix = fix.strip()
        ranged = re.fullmatch(r"(\w+) = Dim\('\w+'(?:, min=(\d+))?(?:, max=(\d+))?\)", fix)
        pinned = re.fullmatch(r"(\w+) = (\d+)", fix)
        if ranged and ranged.group(1) in _RANGE_FLAGS:
            name, lo, hi = ranged.groups()
            low = lo or ("1" if name == "batch" else "2")
            tried.append(f"{_RANGE_FLAGS[name]} {low}:{hi}" if hi else f"{_RANGE_FLAGS[name]} {low}:N")
        elif pinned and pinned.group(1) in _RANGE_FLAGS:
            name, size = pinned.groups()
            tried.append(f"--static{' --seq ' + size if name != 'batch' else ' --batch ' + size}")
        elif fix:
            tried.append(f"({fix})")
    return f"torch.export needs {'; '.join(ln.strip() for ln in text.split('Suggested fixes:', 1)[1].strip().splitlines())}: try {' '.join(tried)}" if tried else None


def capture_error(exc: BaseException, static: bool, what: str = "the model") -> CaptureError:
    """One line for a capture that failed: where in the model, why, and what to try."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    head = lines[0].replace(' For more information, run with TORCH_LOGS="+dynamic".', "")[:240] if lines else type(exc).__name__
    low = str(exc).lower()
    fixes = _suggested_fixes(str(exc))
    if "data-dependent" in low or "data dependent" in low:
        hint = "the model branches on tensor values; try --static or another --task"
    elif fixes and not static:
        hint = f"a dynamic dimension cannot span its range: {fixes}" + ("" if "--static" in fixes else ", or --static")
    elif not static and ("constraint" in low or "specializ" in low or "guard" in low or "dim" in low):
        hint = "a dynamic dimension could not stay dynamic; try --static or narrower --batch-range/--seq-range"
    else:
        hint = "try --static, another --task, or --attn eager"
    where = _model_frame(exc)
    at = f" at {where}" if where else ""
    return CaptureError(f"capture of {what} failed{at}: {type(exc).__name__}: {head}; {hint}")


class ReexportError(CaptureError):
    """The transformed graph would not export again, or its saved program does not run; `node`
    says where, for the pass that made it."""

    def __init__(self, message: str, node: GraphFault | None):
        super().__init__(message)
        self.node = node


def capture(
    loaded: LoadedModel,
    *,
    batch: int = 2,
    seq: int = 16,
    dims: DynamicDims = DynamicDims(),
    use_preprocessor: bool = True,
) -> CapturedProgram:
    """Export `loaded` on sample inputs of (batch, seq) with dynamic batch and sequence dimensions.

    The eager model runs first on the same inputs: its outputs are the reference every pass and
    artifact is checked against, and they fix the names and order of the graph's outputs.
    """
    try:
        inputs = make_inputs(loaded, batch, seq, use_preprocessor=use_preprocessor)
    except CaptureError as exc:
        raise CaptureError(f"sample inputs for {_model_type(loaded)}: {exc}") from exc
    try:
        with torch.no_grad():
            raw = loaded.model(**inputs.tensors)
    except Exception as exc:  # noqa: BLE001 - any failure here is the model's, reported in one line
        raise eager_failure(exc, _model_type(loaded), list(inputs.tensors)) from exc
    paths = _output_paths(raw)
    if not paths:
        raise CaptureError(f"the model returned no tensors ({type(raw).__name__}); pick another --task")
    eager = _with_signature(FlatOutputs(loaded.model, list(inputs.tensors), paths))
    reference = run_module(eager, inputs.tensors)
    dynamic = dynamic_shapes_for(loaded, inputs, dims)

    start = time.perf_counter()
    try:
        exported = torch.export.export(eager, (), dict(inputs.tensors), dynamic_shapes=dynamic, strict=False)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; all become one line
        raise capture_error(exc, dims.static, _model_type(loaded)) from exc
    return CapturedProgram(
        loaded=loaded,
        eager=eager,
        exported=exported,
        inputs=inputs,
        dims=dims,
        dynamic_shapes=dynamic,
        reference=reference,
        seconds=time.perf_counter() - start,
    )


def export_graph_module(module: torch.nn.Module, captured: CapturedProgram) -> ExportedProgram:
    """Export a transformed GraphModule again, with the capture's inputs and dynamic shapes, so
    that it can be saved, or lowered to ONNX or AOTInductor."""
    try:
        return torch.export.export(module, (), dict(captured.inputs.tensors), dynamic_shapes=captured.dynamic_shapes, strict=False)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; all become one line
        node = failing_node(exc)
        hint = "try --static" if captured.dynamic_shapes else "try a pipeline without the pass that made that op"
        raise ReexportError(
            f"re-export of the optimized graph of {_model_type(captured.loaded)} failed{' at ' + str(node) if node else ''}: "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}; {hint}",
            node,
        ) from exc
