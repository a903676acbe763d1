"""Capture a loaded model as an FX graph with torch.export (non-strict, dynamic shapes), beside its eager reference."""

from __future__ import annotations

import contextlib
import inspect
import re
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch.export import ExportedProgram
from torch.fx import GraphModule

from fxbench.errors import CaptureError
from fxbench.models import axes as _axes
from fxbench.models.axes import HEIGHT, WIDTH, AxisPlan, AxisRecord
from fxbench.models.inputs import DynamicDims, SampleInputs, dynamic_axis, dynamic_shapes_for, example_shape, image_token_count, make_inputs
from fxbench.models.loading import LoadedModel
from fxbench.models.shims import capture_shims

__all__ = [
    "CapturedProgram", "FlatOutputs", "GraphFault", "ReexportError", "capture", "capture_error", "eager_failure",
    "export_graph_module", "failing_node", "unlift", "run_module",
]

OutputPath = tuple[Any, ...]


def _output_paths(out: Any, prefix: OutputPath = ()) -> list[OutputPath]:
    """Paths to every tensor in a model output (ModelOutput, dict, tuple), in the output's own order;
    not into lists (see below).
    A top-level `loss` is left out: no labels are passed, and a head that computes one from its
    inputs anyway (a forecaster's teacher-forced likelihood) is not what is deployed."""
    if isinstance(out, torch.Tensor):
        return [prefix]
    if isinstance(out, Mapping):
        return [p for k, v in out.items() if v is not None and (prefix or k != "loss") for p in _output_paths(v, prefix + (k,))]
    if isinstance(out, tuple):
        return [p for i, v in enumerate(out) for p in _output_paths(v, prefix + (i,))]
    # A list in a model output is one entry per image (a VLM's per-image features): its length is
    # the batch, which a program with a dynamic batch cannot have as a fixed number of outputs.
    return []


def _path_name(path: OutputPath) -> str:
    return ".".join(str(p) for p in path) or "output"


class FlatOutputs(torch.nn.Module):
    """The model behind named inputs, returning its tensor outputs as a flat tuple in a fixed order.

    Export names the graph's placeholders after forward's parameters, so each instance gets a
    signature listing the model's own input names (input_ids, attention_mask, ...), and ONNX and
    AOTInductor artifacts keep them.
    """

    def __init__(self, model: torch.nn.Module, input_names: list[str], output_paths: list[OutputPath],
                 align: Mapping[str, int] | None = None):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_paths = [tuple(p) for p in output_paths]
        self.output_names = tuple(_path_name(p) for p in self.output_paths)
        # input name -> the multiple its last two (image) axes are: see _aligned.
        self.align = dict(align or {})

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, args), **kwargs)
        for name, multiple in self.align.items():
            if name in named:
                named[name] = _aligned(named[name], multiple)
        out = self.model(**named)
        result = []
        for path in self.output_paths:
            value = out
            for key in path:
                value = value[key]
            result.append(value)
        return tuple(result)


def _aligned(tensor: torch.Tensor, multiple: int) -> torch.Tensor:
    """`tensor` cropped to the multiple on its last two axes: the identity on every input the program
    accepts (its height and width are derived dims, multiples of `multiple`), written so that the
    model sees sizes of the form multiple * k. torch.export's solver then settles a Swin's padding
    arithmetic at once (a tiny two-stage Swin: 15 s instead of 200 s, one stage 7 s instead of 60 s)."""
    h, w = tensor.shape[-2:]
    return tensor[..., : (h // multiple) * multiple, : (w // multiple) * multiple]


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
    which breaks subgraph rewriting (`check_guards` is absent before torch 2.9), and with in-place
    `detach_` made functional (see _functional_detach)."""
    try:
        module = exported.module(check_guards=False)
    except TypeError:
        module = exported.module()
    return _functional_detach(module)


def _functional_detach(module: GraphModule) -> GraphModule:
    """`aten.detach_` as `aten.detach`. Models that detach a constant in place (LLaVA's and
    Informer's attention scalars) are captured with `detach_` on a lifted tensor constant; once the
    graph is exported again, that constant is a view, and the in-place detach raises "Can't detach
    views in-place" on every later run. Without autograd the two are the same function."""
    changed = False
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.detach_.default:
            node.target = torch.ops.aten.detach.default
            changed = True
    if changed:
        module.recompile()
    return module


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
    # The image and time axes as the program accepts them (input -> axis -> record), and for the
    # kinds of axes kept static ("image", "audio"), why: one line each, for the report and step line.
    axes: dict[str, dict[int, AxisRecord]] = field(default_factory=dict, kw_only=True)
    static_axes: dict[str, str] = field(default_factory=dict, kw_only=True)
    shims: tuple[str, ...] = field(default=(), kw_only=True)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.inputs.tensors)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.eager.output_names

    def graph_module(self) -> GraphModule:
        """A fresh GraphModule of the captured program (each call unlifts anew)."""
        return unlift(self.exported)

    def make_inputs(self, batch: int, seq: int | None = None, *, seed: int = 0, image: tuple[int, int] | None = None,
                    audio: int | None = None, choices: int | None = None) -> SampleInputs:
        """Inputs at another shape, made the same way as the sample's (image size, audio length and
        choices default to the sample's)."""
        return make_inputs(
            self.loaded, batch, seq if seq is not None else (self.inputs.seq or 16), seed=seed,
            image=image or self.inputs.image, audio=audio or self.inputs.audio, choices=choices or self.inputs.choices,
            use_preprocessor=self.inputs.origin != "config",
        )

    def axis_range(self, name: str) -> AxisRecord | None:
        """The range of the dynamic image or time axis `name` (height, width, samples, frames)."""
        return next((r for spec in self.axes.values() for r in spec.values() if r.name == name), None)

    def describe_axes(self) -> str:
        """The image and time axes in a few words, for the capture's step line."""
        parts = []
        for name in (HEIGHT, WIDTH, _axes.SAMPLES, _axes.FRAMES):
            rec = self.axis_range(name)
            if rec is not None:
                parts.append(f"{name} {rec.min}..{rec.max}" + (f" (x{rec.multiple})" if rec.multiple > 1 else ""))
        parts += [f"{kind} static: {reason}" for kind, reason in self.static_axes.items() if reason != "--static"]
        return "; ".join(parts)

    def unseen_sizes(self) -> dict[str, Any]:
        """Sizes of the dynamic image and time axes the capture never saw, inside the ranges the
        program accepts, as `make_inputs` keywords: a non-square image (on the model's multiple),
        another audio length. Empty when those axes are static or absent."""
        out: dict[str, Any] = {}
        height, width = self.axis_range(HEIGHT), self.axis_range(WIDTH)
        if height is not None and width is not None and self.inputs.image is not None:
            lo, hi = max(height.min, width.min), min(height.max, width.max)
            out["image"] = _axes.probe_image_size(self.inputs.image, max(height.multiple, width.multiple), lo, hi)
        length = self.axis_range(_axes.SAMPLES) or self.axis_range(_axes.FRAMES)
        if length is not None and self.inputs.audio is not None:
            out["audio"] = _axes.unseen_length(self.inputs.audio, length.min, length.max)
        return out

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
    # The fixes run to the first blank line; torch.export's advice about draft_export follows it.
    fixes = [ln.strip() for ln in text.split("Suggested fixes:", 1)[1].strip().split("\n\n", 1)[0].splitlines() if ln.strip()]
    tried: list[str] = []
    for fix in fixes:
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
    return f"torch.export needs {'; '.join(fixes)}: try {' '.join(tried)}" if tried else None


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


@contextlib.contextmanager
def _capturing(loaded: LoadedModel) -> Iterator[list[str]]:
    """What the forward runs under while fxbench captures it and computes its reference: the capture
    shims of its model type; torch.distributions without argument validation (a forecaster's head
    builds a distribution, whose checks on the values torch.export can only fail on)."""
    import torch.distributions as distributions

    validate = distributions.Distribution._validate_args
    distributions.Distribution.set_default_validate_args(False)
    try:
        with capture_shims(loaded.config.model_type) as names:
            yield names
    finally:
        distributions.Distribution.set_default_validate_args(validate)


def _eager(loaded: LoadedModel, inputs: SampleInputs, align: Mapping[str, int]) -> tuple[FlatOutputs, tuple[torch.Tensor, ...]]:
    """The flat-output wrapper of the model and its reference outputs on the sample, run twice: a model
    whose outputs change between two identical calls cannot be checked against eager at all."""
    try:
        with torch.no_grad(), _capturing(loaded):
            raw = loaded.model(**inputs.tensors)
    except Exception as exc:  # noqa: BLE001 - any failure here is the model's, reported in one line
        raise eager_failure(exc, _model_type(loaded), list(inputs.tensors)) from exc
    paths = _output_paths(raw)
    if not paths:
        raise CaptureError(f"the model returned no tensors ({type(raw).__name__}); pick another --task")
    eager = _with_signature(FlatOutputs(loaded.model, list(inputs.tensors), paths, align))
    reference = run_module(eager, inputs.tensors)
    again = run_module(eager, inputs.tensors)
    for name, a, b in zip(eager.output_names, reference, again):
        if a.is_floating_point() and not torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True):
            raise CaptureError(
                f"{type(loaded.model).__name__} gives different {name} on two identical calls (random sampling in its forward, "
                f"e.g. Informer's ProbSparse attention when its factor does not cover the sequence); fxbench can only check a "
                f"deterministic forward: change the config (attention_type='full') or pick another --task"
            )
    return eager, reference


def _downgrade(plans: dict[str, AxisPlan | None], kind: str, reason: str) -> None:
    plans[kind] = AxisPlan(False, reason=reason)


_AXIS_NAMES = {"image": (HEIGHT, WIDTH), "audio": (_axes.SAMPLES, _axes.FRAMES)}


def _refined_spec(spec: dict[str, dict[int, Any]] | None, records: dict[str, dict[int, AxisRecord]]) -> dict[str, dict[int, Any]] | None:
    """The capture's dynamic_shapes with the image and time axes at the ranges the program accepts:
    what re-exports use, and what reports, checks and TensorRT profiles read."""
    if spec is None:
        return None
    out = {name: dict(axes) for name, axes in spec.items()}
    for name, axes in records.items():
        for axis, rec in axes.items():
            if rec.multiple > 1:
                root = torch.export.Dim(f"_{rec.name}", min=max(1, rec.min // rec.multiple), max=max(2, rec.max // rec.multiple))
                derived = rec.multiple * root
                derived.__name__ = rec.name
                out[name][axis] = derived
            else:
                out[name][axis] = dynamic_axis(rec.name, rec.min, rec.max)
    # Inputs sharing an axis name share the spec object, as torch.export requires of equal dims.
    shared: dict[str, Any] = {}
    for axes in out.values():
        for axis, dim in axes.items():
            axes[axis] = shared.setdefault(dim.__name__, dim)
    return out


def _probe(exported: ExportedProgram, inputs: SampleInputs, records: dict[str, dict[int, AxisRecord]], kind: str) -> str | None:
    """The failed guard, if the program refuses a size of `kind`'s axes it never saw (a non-square
    image, another length): torch.export keeps some specializations as guards, not errors."""
    names = _AXIS_NAMES[kind]
    found = {r.name: r for axes in records.values() for r in axes.values() if r.name in names}
    if not found:
        return None
    if kind == "image":
        rec = found.get(HEIGHT) or next(iter(found.values()))
        assert inputs.image is not None
        size = _axes.probe_image_size(inputs.image, rec.multiple, rec.min, rec.max)
        want = {HEIGHT: size[0], WIDTH: size[1]}
    else:
        rec = next(iter(found.values()))
        want = {rec.name: _axes.unseen_length(int(inputs.audio or rec.min), rec.min, rec.max)}
    sizes = {name: {a: want[r.name] for a, r in axes.items() if r.name in want} for name, axes in records.items()}
    return _axes.accepts(exported, inputs.tensors, sizes)


def capture(
    loaded: LoadedModel,
    *,
    batch: int = 2,
    seq: int = 16,
    dims: DynamicDims = DynamicDims(),
    use_preprocessor: bool = True,
) -> CapturedProgram:
    """Export `loaded` on sample inputs of (batch, seq) with dynamic batch and sequence dimensions,
    and dynamic image height and width (audio length) where the model allows them.

    The eager model runs first on the same inputs: its outputs are the reference every pass and
    artifact is checked against, and they fix the names and order of the graph's outputs.

    Image and time axes: fxbench.models.axes plans them (static with a reason for models known to
    fix them, a multiple for those that pad to one). When torch.export specializes them, or the
    captured program's guards refuse a size it never saw, they are captured again static, and
    `static_axes` says why; the ranges the program accepts are read back into `axes`.
    """
    if loaded.example_inputs is not None:  # a module handed in with examples is captured on them
        ex_batch, ex_seq = example_shape(loaded)
        batch, seq = ex_batch or batch, ex_seq or seq
    plans: dict[str, AxisPlan | None] = {"image": _axes.image_plan(loaded, dims), "audio": _axes.time_plan(loaded, dims)}
    for _attempt in range(3):
        image, audio = plans["image"], plans["audio"]
        size = _axes.image_sample_size(loaded, image)
        if loaded.task == "image-text-to-text" and size is not None:
            # The sample text must hold one image's placeholder tokens, and some text after them.
            seq = max(seq, image_token_count(loaded, size) + 8)
        try:
            inputs = make_inputs(loaded, batch, seq, image=size, use_preprocessor=use_preprocessor)
        except CaptureError as exc:
            raise CaptureError(f"sample inputs for {_model_type(loaded)}: {exc}") from exc
        image_dynamic = image is not None and image.dynamic and not dims.static
        audio_dynamic = audio is not None and audio.dynamic and not dims.static
        align = {n: image.multiple for n in inputs.tensors if n in ("pixel_values", "pixel_mask")} if image_dynamic and image.multiple > 1 else {}
        eager, reference = _eager(loaded, inputs, align)
        dynamic = dynamic_shapes_for(
            loaded, inputs, dims,
            image=_axes.image_spec(image, dims, size) if image_dynamic and size else None,
            time=_axes.time_spec(loaded, dims, inputs) if audio_dynamic else None,
        )
        start = time.perf_counter()
        try:
            with _capturing(loaded) as shims:
                exported = torch.export.export(eager, (), dict(inputs.tensors), dynamic_shapes=dynamic, strict=False)
        except Exception as exc:  # noqa: BLE001 - torch.export raises many types; all become one line
            retried = False
            for kind, dyn in (("image", image_dynamic), ("audio", audio_dynamic)):
                reason = _axes.violation_reason(str(exc), _AXIS_NAMES[kind]) if dyn else None
                if reason:
                    _downgrade(plans, kind, reason)
                    retried = True
            if retried:
                continue
            raise capture_error(exc, dims.static, _model_type(loaded)) from exc
        seconds = time.perf_counter() - start
        names = tuple(n for kind, dyn in (("image", image_dynamic), ("audio", audio_dynamic)) if dyn for n in _AXIS_NAMES[kind])
        multiples = {HEIGHT: image.multiple, WIDTH: image.multiple} if image_dynamic and image else {}
        records = _axes.axis_records(exported, dynamic, multiples)
        records = {n: {a: r for a, r in axes.items() if r.name in names} for n, axes in records.items()}
        records = _axes.tighten(exported, inputs.tensors, {n: a for n, a in records.items() if a}, names)
        refused = {kind: _probe(exported, inputs, records, kind) for kind, dyn in (("image", image_dynamic), ("audio", audio_dynamic)) if dyn}
        refused = {k: v for k, v in refused.items() if v}
        if refused:
            for kind, guard in refused.items():
                _downgrade(plans, kind, f"the captured program only accepts the sample's {kind} size ({guard})")
            continue
        return CapturedProgram(
            loaded=loaded,
            eager=eager,
            exported=exported,
            inputs=inputs,
            dims=dims,
            dynamic_shapes=_refined_spec(dynamic, records),
            reference=reference,
            seconds=seconds,
            axes=records,
            static_axes={kind: plan.reason for kind, plan in plans.items() if plan is not None and not plan.dynamic},
            shims=tuple(shims),
        )
    raise CaptureError(f"{type(loaded.model).__name__}: its image or audio axes could not be captured dynamic nor static; try --static")


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
