"""Image and time axes: which a model lets vary (with the multiple it needs), and what its captured program really accepts."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import Dim, ExportedProgram

from fxbench.models.inputs import DynamicDims, SampleInputs, dynamic_axis, forward_parameters, image_size_of
from fxbench.models.loading import LoadedModel

__all__ = [
    "AxisPlan",
    "AxisRecord",
    "HEIGHT",
    "WIDTH",
    "accepts",
    "axis_records",
    "image_plan",
    "image_sample_size",
    "image_spec",
    "probe_image_size",
    "time_plan",
    "time_spec",
    "unseen_length",
]

HEIGHT, WIDTH, SAMPLES, FRAMES = "height", "width", "samples", "frames"


@dataclass(frozen=True)
class AxisPlan:
    """Whether an input's image (or time) axes are captured dynamic, the multiple they must be, and
    why not when they are static (one line, for the report and the step line)."""

    dynamic: bool
    multiple: int = 1
    reason: str = ""


@dataclass(frozen=True)
class AxisRecord:
    """One dynamic axis as the captured program accepts it."""

    name: str
    min: int
    max: int
    multiple: int = 1


def _swin_multiple(config: Any) -> int:
    # Each stage pads its map to the window and patch merging halves it: sizes that are multiples of
    # patch * window * 2^(stages-1) never pad, so every branch on the size resolves the same way.
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    window = config.window_size if isinstance(config.window_size, int) else config.window_size[0]
    return int(patch) * int(window) * 2 ** (len(config.depths) - 1)


def _mobilevit_multiple(config: Any) -> int:
    # Output stride 32, and every MobileViT block unfolds its map into patch_size patches.
    return 32 * int(config.patch_size)


# model type -> the multiple its image sides must be (the model pads or branches on anything else).
_MULTIPLES = {
    "swin": _swin_multiple,
    "donut-swin": _swin_multiple,
    "maskformer-swin": _swin_multiple,
    "swinv2": _swin_multiple,
    "mobilevit": _mobilevit_multiple,
}


def _has_position_table(model: torch.nn.Module) -> bool:
    """Whether the model holds an absolute position table (ViT's position_embeddings, CLIP's
    position_embedding); a Swin without absolute embeddings has only relative bias tables."""
    return any("position_embedding" in name or "pos_embed" in name for name, _ in model.named_parameters())


def _fixed_reason(loaded: LoadedModel) -> str | None:
    """Why a model takes one image size only, known from its config and forward without a capture."""
    model, config = loaded.model, loaded.config
    h, w = image_size_of(config, loaded.preprocessor)
    name = type(model).__name__
    if loaded.task == "image-text-to-text":
        return f"{name} turns each image into a fixed number of placeholder tokens in input_ids, set by the {h}x{w} image size"
    if "interpolate_pos_encoding" in forward_parameters(model) and _has_position_table(model):
        return f"{name} keeps its {h}x{w} position table (interpolate_pos_encoding is off, as in eager use)"
    if config.model_type == "dpt" and not getattr(config, "is_hybrid", False) and getattr(config, "backbone_config", None) is None:
        return f"{name} reshapes its tokens to a square grid of sqrt(tokens) (modeling_dpt.py), which fixes the image size"
    return None


def image_plan(loaded: LoadedModel, dims: DynamicDims) -> AxisPlan | None:
    """The plan for a vision or multimodal model's height and width; None for models without images."""
    if loaded.modality not in ("vision", "multimodal"):
        return None
    if dims.static:
        return AxisPlan(False, reason="--static")
    reason = _fixed_reason(loaded)
    if reason is not None:
        return AxisPlan(False, reason=reason)
    multiple = _MULTIPLES.get(loaded.config.model_type)
    return AxisPlan(True, multiple(loaded.config) if multiple else 1)


def time_plan(loaded: LoadedModel, dims: DynamicDims) -> AxisPlan | None:
    """The plan for an audio model's time axis; None for models without audio."""
    if loaded.modality != "audio":
        return None
    if dims.static:
        return AxisPlan(False, reason="--static")
    if loaded.config.model_type == "whisper":
        frames = 2 * int(getattr(loaded.config, "max_source_positions", 1500))
        return AxisPlan(False, reason=f"Whisper's encoder takes exactly {frames} mel frames (30 s of audio: its position table "
                                      f"has max_source_positions={frames // 2} after a stride-2 conv)")
    return AxisPlan(True)


def image_sample_size(loaded: LoadedModel, plan: AxisPlan | None) -> tuple[int, int] | None:
    """The image size to capture at: the model's own, rounded up to the plan's multiple and to at
    least twice it (torch.export specializes a multiplier of 1, as it does sizes 0 and 1)."""
    if plan is None:
        return None
    h, w = image_size_of(loaded.config, loaded.preprocessor)
    m = plan.multiple
    if not plan.dynamic or m == 1:
        return h, w
    return max(2 * m, -(-h // m) * m), max(2 * m, -(-w // m) * m)


def image_spec(plan: AxisPlan, dims: DynamicDims, sample: tuple[int, int]) -> tuple[Any, Any]:
    """The torch.export specs of (height, width): DYNAMIC hints in the range, or, with a multiple,
    Dims derived from a root (so that the program refuses sizes the model would pad or branch on)."""
    lo, hi = dims.image_range
    lo, hi = min(lo, *sample), max(hi, *sample)
    m = plan.multiple
    if m == 1:
        return dynamic_axis(HEIGHT, lo, hi), dynamic_axis(WIDTH, lo, hi)
    specs = []
    for name in (HEIGHT, WIDTH):
        root = Dim(f"_{name}", min=max(1, -(-lo // m)), max=max(2, hi // m))
        derived = m * root
        derived.__name__ = name  # the axis name in ONNX and the reports
        specs.append(derived)
    return specs[0], specs[1]


def time_spec(loaded: LoadedModel, dims: DynamicDims, inputs: SampleInputs) -> Any:
    lo, hi = dims.audio
    sample = inputs.audio or lo
    name = FRAMES if loaded.main_input_name == "input_features" else SAMPLES
    return dynamic_axis(name, min(lo, sample), max(hi, sample))


def axis_records(exported: ExportedProgram, spec: Mapping[str, Mapping[int, Any]] | None,
                 multiples: Mapping[str, int] | None = None) -> dict[str, dict[int, AxisRecord]]:
    """Every dynamic axis of the program's inputs, with the range torch.export settled on (it narrows
    DYNAMIC hints to what the model accepts), named as the capture named them."""
    if not spec:
        return {}
    user_inputs = list(exported.graph_signature.user_inputs)
    placeholders = {n.name: n for n in exported.graph.nodes if n.op == "placeholder"}
    records: dict[str, dict[int, AxisRecord]] = {}
    for name, node_name in zip(spec, user_inputs):
        val = placeholders[node_name].meta.get("val")
        if val is None:
            continue
        for axis, dim in spec[name].items():
            size = val.shape[axis]
            if not isinstance(size, torch.SymInt):
                continue
            vr = exported.range_constraints.get(size.node.expr)
            lo, hi = int(dim.min), int(dim.max)
            if vr is not None:
                lo = max(lo, _int_or(vr.lower, lo))
                hi = min(hi, _int_or(vr.upper, hi))
            records.setdefault(name, {})[axis] = AxisRecord(dim.__name__, lo, hi, (multiples or {}).get(dim.__name__, 1))
    return records


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # torch's int_oo
        return default


def _guards(exported: ExportedProgram) -> Any | None:
    """The program's input guards as a callable on (meta) tensors, where torch provides one (2.9+)."""
    try:
        module = exported.module(check_guards=True)
    except TypeError:
        return None
    return getattr(module, "_guards_fn", None)


def accepts(exported: ExportedProgram, inputs: Mapping[str, torch.Tensor], sizes: Mapping[str, Mapping[int, int]]) -> str | None:
    """None if the program's guards accept `inputs` with `sizes` put on their axes, else the failed
    guard's text. Checked on meta tensors: no computation, microseconds a shape."""
    guards = _guards(exported)
    if guards is None:
        return None
    args = []
    for name, tensor in inputs.items():
        shape = list(tensor.shape)
        for axis, size in sizes.get(name, {}).items():
            shape[axis] = size
        args.append(torch.empty(shape, dtype=tensor.dtype, device="meta"))
    try:
        guards(*args)
    except Exception as exc:  # noqa: BLE001 - a failed guard raises AssertionError / RuntimeError
        return " ".join(str(exc).split())[:200] or type(exc).__name__
    return None


def tighten(exported: ExportedProgram, inputs: Mapping[str, torch.Tensor], records: dict[str, dict[int, AxisRecord]],
            names: tuple[str, ...]) -> dict[str, dict[int, AxisRecord]]:
    """Raise each named axis's minimum to the smallest size the program's guards accept (torch keeps
    some lower bounds as guards, not ranges: a ResNet's final map must be larger than 1 x 1), found
    by bisection over the multiples between the recorded minimum and the sample."""
    out = {k: dict(v) for k, v in records.items()}
    for name, axes in records.items():
        for axis, rec in axes.items():
            if rec.name not in names:
                continue
            sample = int(inputs[name].shape[axis])
            m = rec.multiple

            def ok(size: int, name: str = name, axis: int = axis) -> bool:
                # The same axis of every input that shares it (pixel_mask with pixel_values) moves too.
                sizes = {n: {a: size for a, r in ax.items() if r.name == records[name][axis].name} for n, ax in records.items()}
                return accepts(exported, inputs, sizes) is None

            lo_k, hi_k = -(-rec.min // m), sample // m
            if ok(lo_k * m):
                continue
            while hi_k - lo_k > 1:
                mid = (lo_k + hi_k) // 2
                lo_k, hi_k = (lo_k, mid) if ok(mid * m) else (mid, hi_k)
            out[name][axis] = AxisRecord(rec.name, hi_k * m, rec.max, m)
    return out


def probe_image_size(sample: tuple[int, int], multiple: int, lo: int, hi: int) -> tuple[int, int]:
    """A non-square size the capture never saw, inside [lo, hi]: a little taller and clearly wider
    than the sample (or smaller where the sample sits at the top), on the multiple."""
    step = max(multiple, 8)

    def fit(value: int) -> int:
        value = min(max(value, lo), hi)
        return max(multiple, (value // multiple) * multiple)

    h, w = fit(sample[0] + step), fit(sample[1] + 2 * step)
    if (h, w) == tuple(sample) or h == w:
        h, w = fit(sample[0] - step), fit(sample[1] + step)
    return h, w


def unseen_length(sample: int, lo: int, hi: int) -> int:
    """A time length the capture never saw: about 0.7 of the sample, odd, inside [lo, hi]."""
    value = min(max(int(sample * 0.7) | 1, lo), hi)
    return value if value != sample else min(hi, sample + 1)


_SPECIALIZED = re.compile(r"You marked (\S+) as dynamic but your code specialized it to be a constant \((\d+)\)")
_NOT_ALL = re.compile(r"Not all values of (\S+) = \S+ in the specified range .*? satisfy the generated guard (.+?)\.?$")


def violation_reason(message: str, names: tuple[str, ...]) -> str | None:
    """From torch.export's constraint-violation message: why `names` (height, width, samples) cannot
    stay dynamic, in one line; None if the violation is about other dimensions."""
    for line in message.splitlines():
        line = line.strip(" -")
        found = _SPECIALIZED.search(line)
        if found and any(found.group(1).endswith(n) for n in names):
            return f"the model specializes {found.group(1).lstrip('0123456789*_')} to {found.group(2)} at capture"
        found = _NOT_ALL.search(line)
        if found and any(found.group(1).endswith(n) for n in names):
            return f"the model only accepts {found.group(1).lstrip('0123456789*_')} where {found.group(2)[:120]}"
    return None

