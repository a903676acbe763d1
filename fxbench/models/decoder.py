"""Causal LMs captured with their KV cache as explicit tensors: the ONNX "with-past" program form."""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import Dim
from transformers.cache_utils import DynamicCache, DynamicLayer, get_layer_types_and_kwargs
from transformers.configuration_utils import get_head_shapes

from fxbench.errors import CaptureError
from fxbench.models.capture import CapturedProgram, capture_error, eager_failure, run_module
from fxbench.models.inputs import DynamicDims, SampleInputs, forward_parameters, max_positions
from fxbench.models.loading import LoadedModel, LoadOptions, load_model
from fxbench.models.tasks import WITH_PAST_TASK

__all__ = [
    "BATCH",
    "PAST",
    "SEQ",
    "TOTAL",
    "CacheLayout",
    "DecoderCapture",
    "DecoderDims",
    "WithPast",
    "cache_layout",
    "WITH_PAST_TASK",
    "capture_with_past",
    "decoder_inputs",
    "eager_with_cache",
    "load_for_generation",
    "onnx_name",
    "position_ids_from_mask",
    "with_past",
]

# Cache layer kinds the with-past form holds exactly: full attention and sliding-window attention,
# alone or mixed (Gemma 2/3): transformers builds each layer's mask from the config, and the program
# keeps the whole past (see WithPast).
_ATTENTION_LAYERS = ("full_attention", "sliding_attention")
# Axis names of the program and its ONNX artifact, as Optimum's exporter named them (shorter).
BATCH, SEQ, PAST, TOTAL = "batch", "seq", "past_seq", "total_seq"


@dataclass(frozen=True)
class CacheLayout:
    """The shape of a decoder's KV cache: per layer [batch, kv_heads, past_seq, head_dim] keys and values."""

    model_type: str
    kv_heads: tuple[int, ...]  # per layer
    head_dims: tuple[int, ...]  # per layer
    layer_types: tuple[str, ...]
    sliding_window: int | None = None

    @property
    def num_layers(self) -> int:
        return len(self.kv_heads)

    def past_names(self) -> tuple[str, ...]:
        """Program input names (Python identifiers): past_key_values_{i}_key, past_key_values_{i}_value."""
        return tuple(f"past_key_values_{i}_{kv}" for i in range(self.num_layers) for kv in ("key", "value"))

    def present_names(self) -> tuple[str, ...]:
        return tuple(f"present_{i}_{kv}" for i in range(self.num_layers) for kv in ("key", "value"))

    def shape(self, layer: int, batch: int, length: int) -> tuple[int, int, int, int]:
        return (batch, self.kv_heads[layer], length, self.head_dims[layer])

    def past(self, batch: int, length: int, *, dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Past keys/values of `length` tokens (random, scaled like real k/v) or empty when length is 0."""
        out = {}
        for name in self.past_names():
            layer = int(name.split("_")[3])
            shape = self.shape(layer, batch, length)
            out[name] = torch.randn(shape, generator=generator).to(dtype) if length else torch.zeros(shape, dtype=dtype)
        return out


def onnx_name(name: str) -> str:
    """Optimum's ONNX name of a program input or output: past_key_values.{i}.key, present.{i}.value."""
    for prefix in ("past_key_values_", "present_"):
        if name.startswith(prefix):
            layer, kv = name[len(prefix):].split("_")
            return f"{prefix[:-1]}.{layer}.{kv}"
    return name


def _per_layer(value: int | list[int], layers: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, list) else (int(value),) * layers


def _read_config(reader: Any, text: Any, what: str) -> Any:
    """`reader(text)`, one of transformers' config readers, or a one-line CaptureError naming `what` it could not read."""
    try:
        return reader(text)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise CaptureError(
            f"cannot read {what} of model type {text.model_type!r} from its config ({exc}); use --task text-generation (no cache)"
        ) from exc


def cache_layout(model: torch.nn.Module, config: Any) -> CacheLayout:
    """The cache's layout from the config, with transformers' own readers (the ones `generate()` and
    its StaticCache use): `get_layer_types_and_kwargs` for what each layer caches and
    `get_head_shapes` for the kv heads and head size per layer. They know every architecture
    transformers builds, where Optimum's normalized configs need a table entry per model type and
    its past-key-value generators a choice per model (that choice lived in optimum-onnx, which does
    not install beside transformers 5).

    A one-line CaptureError for caches the with-past form cannot hold.
    """
    if getattr(config, "is_encoder_decoder", False):
        raise CaptureError(
            f"model type {config.model_type!r} is an encoder-decoder; text-generation-with-past captures decoder-only "
            f"language models: use --task text2text-generation (no cache)"
        )
    text = config.get_text_config(decoder=True)
    recurrent = (
        f"model type {text.model_type!r} keeps recurrent layer states (state-space or linear attention), not a "
        f"key/value cache; fxbench captures attention KV caches only: use --task text-generation (no cache)"
    )
    if getattr(model, "_is_stateful", False):  # transformers' flag for models whose state cannot be rewound
        raise CaptureError(recurrent)
    supports_dynamic = getattr(type(model), "_supports_default_dynamic_cache", None)
    if supports_dynamic is not None and not supports_dynamic():
        raise CaptureError(
            f"{type(model).__name__} ({text.model_type!r}) keeps its own cache class, not a DynamicCache; "
            f"use --task text-generation (no cache)"
        )
    layer_types, _ = _read_config(get_layer_types_and_kwargs, text, "the cache layout")
    kinds = set(layer_types)
    if kinds & {"linear_attention", "mamba", "recurrent", "conv"}:
        raise CaptureError(recurrent)
    if not kinds <= set(_ATTENTION_LAYERS):
        raise CaptureError(
            f"model type {text.model_type!r} has cache layers of kind {', '.join(sorted(kinds - set(_ATTENTION_LAYERS)))}, "
            f"which the with-past form does not hold (only full and sliding-window attention); use --task text-generation (no cache)"
        )
    if any(getattr(c, "qk_head_dim", None) is not None for c in text.per_layer_config):
        raise CaptureError(
            f"model type {text.model_type!r} caches keys and values of different sizes (latent attention); "
            f"use --task text-generation (no cache)"
        )
    heads, head_dim = _read_config(get_head_shapes, text, "the kv heads and head size")
    layers = len(layer_types)
    sliding = getattr(text, "sliding_window", None) if "sliding_attention" in kinds else None
    return CacheLayout(text.model_type, _per_layer(heads, layers), _per_layer(head_dim, layers), tuple(layer_types), sliding)


class _PastLayer(DynamicLayer):
    """A DynamicLayer that starts from given past tensors and never crops them.

    Its length is the keys' size on axis -2, with no `numel() == 0` test (DynamicLayer's), which
    would make torch.export guard on the past being non-empty and refuse a past of length 0.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.device, self.dtype = keys.device, keys.dtype
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.keys.shape[-2]


class _PastCache(DynamicCache):
    """A DynamicCache over flat past tensors, one _PastLayer per layer (no sliding-window cropping)."""

    def __init__(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.layers = [_PastLayer(k, v) for k, v in pairs]


class WithPast(torch.nn.Module):
    """The model behind flat inputs (input_ids, attention_mask, position_ids, every layer's past
    key and value), returning (logits, every layer's present key and value).

    Why this and not `transformers.integrations.executorch`: its `TorchExportableModuleForDecoderOnlyLM`
    exports a StaticCache held as buffers inside the program (ExecuTorch's form: fixed max length,
    mutated in place, no past in the signature), and `export_with_dynamic_cache` exports an empty
    DynamicCache through `register_dynamic_cache_export_support`'s pytree flattening, so the past
    length cannot be dynamic (an empty cache flattens to no tensors at all). The ONNX with-past form
    needs the past as ordinary inputs of any length, zero included: this module builds a
    DynamicCache from them inside forward, as Optimum's exporter did.

    Sliding-window layers (Mistral, Phi-3, the hybrid Gemma 2/3) keep their whole past here, with
    no crop to the window: a crop is a shape that depends on the length, and the with-past form of
    Optimum kept the whole past too. transformers builds their sliding mask from the config, so the
    logits are those of the model's own cropping cache (tested past the window), at the cost of a
    cache that grows beyond the window.
    """

    def __init__(self, model: torch.nn.Module, layout: CacheLayout, input_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.layout = layout
        self.token_names = tuple(input_names)
        self.input_names = (*self.token_names, *layout.past_names())
        self.output_names = ("logits", *layout.present_names())
        params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in self.input_names]
        # torch.export names the program's placeholders after forward's parameters: give this
        # instance's class a forward whose signature lists them.
        cls = type(f"WithPast_{layout.model_type}_{layout.num_layers}", (WithPast,), {})

        def forward(self, *args, **kwargs):  # noqa: ANN001, ANN202 - signature set below
            return WithPast._forward(self, *args, **kwargs)

        forward.__signature__ = inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *params])  # type: ignore[attr-defined]
        cls.forward = forward
        self.__class__ = cls

    def _forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, args), **kwargs)
        past = [named[n] for n in self.layout.past_names()]
        pairs = list(zip(past[0::2], past[1::2]))
        ids = named["input_ids"]
        # The mask covers past and new tokens. Said up front, this lets torch.export relate the
        # mask's length to the other two (it would otherwise infer bounds from the traced sizes).
        for k, v in pairs:
            torch._check(k.shape[-2] == pairs[0][0].shape[-2])
            torch._check(v.shape[-2] == pairs[0][0].shape[-2])
        if "attention_mask" in named:
            torch._check(named["attention_mask"].shape[-1] == pairs[0][0].shape[-2] + ids.shape[-1])
        tokens = {n: named[n] for n in self.token_names}
        out = self.model(**tokens, cache=_PastCache(pairs), use_cache=True)
        presents = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *presents)


def position_ids_from_mask(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
    """Positions of the last `new` tokens as `generate()` makes them: running count of real tokens
    (left padding gets 0)."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 0)
    return positions[:, -new:].contiguous()  # a view would carry its base into torch.export


def decoder_inputs(
    wrapper: WithPast,
    vocab_size: int,
    batch: int,
    seq: int,
    past: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Named inputs of one step: `seq` new random tokens after `past` cached ones (random k/v)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    tokens = {
        "input_ids": torch.randint(0, vocab_size, (batch, seq), generator=gen),
        "attention_mask": mask,
        "position_ids": position_ids_from_mask(mask, seq),
    }
    tensors = {n: tokens[n] for n in wrapper.token_names}
    tensors.update(wrapper.layout.past(batch, past, dtype=dtype, generator=gen))
    return tensors


@dataclass(frozen=True)
class DecoderDims:
    """Ranges of the with-past program: batch, new tokens per call (1 = decode) and past length (0 = prefill).

    torch.export specializes dimensions of size 0 and 1: the sample has batch >= 2, seq >= 2 and
    past >= 2, and the program still accepts 1 and 0 where the range says so. An upper bound of
    None is the model's positions.
    """

    batch: tuple[int, int] = (1, 64)
    seq: tuple[int, int | None] = (1, None)
    past: tuple[int, int | None] = (0, None)

    def __post_init__(self) -> None:
        for name, (lo, hi), least in (("batch", self.batch, 1), ("seq", self.seq, 1), ("past", self.past, 0)):
            if lo < least or (hi is not None and hi < lo):
                raise CaptureError(f"bad {name} range {lo}:{hi}; expected {least} <= MIN <= MAX")


@dataclass
class DecoderCapture(CapturedProgram):
    """A with-past capture: a CapturedProgram whose inputs include the past and outputs the present,
    so that passes, checks and exporters written for CapturedProgram take it as it is."""

    layout: CacheLayout
    decoder_dims: DecoderDims = DecoderDims()

    @property
    def vocab_size(self) -> int:
        return int(self.loaded.config.get_text_config(decoder=True).vocab_size)

    def make_inputs(self, batch: int, seq: int | None = None, *, seed: int = 0, past: int = 0) -> SampleInputs:  # type: ignore[override]
        """Inputs of one step at (batch, seq new tokens, past cached tokens); a prefill by default."""
        seq = seq if seq is not None else (self.inputs.seq or 16)
        tensors = decoder_inputs(self.eager, self.vocab_size, batch, seq, past, seed=seed, dtype=self.cache_dtype)
        return SampleInputs(tensors=tensors, origin="config", batch=batch, seq=seq)

    @property
    def cache_dtype(self) -> torch.dtype:
        return next(t for n, t in self.inputs.tensors.items() if n.startswith("past_key_values_")).dtype

    def step_inputs(self, batch: int, seq: int, past: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
        return dict(self.make_inputs(batch, seq, seed=seed, past=past).tensors)


def load_for_generation(source: str | LoadedModel, *, attn_implementation: str | None = None, trust_remote_code: bool = False,
                        options: LoadOptions | None = None) -> LoadedModel:
    """`source` (Hub id or folder, or a model already loaded) as a causal LM for the with-past
    capture; a one-line CaptureError here, before any export, if its cache cannot be captured."""
    loaded = source if isinstance(source, LoadedModel) else load_model(
        source, WITH_PAST_TASK, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code, options=options)
    cache_layout(loaded.model, loaded.config)
    return loaded


def with_past(loaded: LoadedModel) -> WithPast:
    """The eager with-past wrapper of a causal LM (what the capture exports, and the reference it is
    checked against); a one-line CaptureError when its cache cannot be held."""
    model = loaded.model
    layout = cache_layout(model, loaded.config)
    accepted = set(forward_parameters(model))
    if "cache" not in accepted:
        raise CaptureError(f"{type(model).__name__} takes no cache argument; use --task text-generation (no cache)")
    return WithPast(model, layout, [n for n in ("input_ids", "attention_mask", "position_ids") if n in accepted])


def _dynamic_shapes(wrapper: WithPast, dims: DecoderDims, limit: int) -> dict[str, dict[int, Dim]]:
    seq_max = min(dims.seq[1] or limit, limit)
    past_max = min(dims.past[1] or limit - 1, limit - 1)
    batch = Dim(BATCH, min=dims.batch[0], max=dims.batch[1])
    seq = Dim(SEQ, min=dims.seq[0], max=seq_max)
    past = Dim(PAST, min=dims.past[0], max=past_max)
    total = Dim(TOTAL, min=max(1, dims.seq[0] + dims.past[0]), max=seq_max + past_max)
    shapes: dict[str, dict[int, Dim]] = {}
    for name in wrapper.token_names:
        shapes[name] = {0: batch, 1: total if name == "attention_mask" else seq}
    for name in wrapper.layout.past_names():
        shapes[name] = {0: batch, 2: past}
    return shapes


def capture_with_past(
    loaded: LoadedModel,
    *,
    batch: int = 2,
    seq: int = 5,
    past: int = 3,
    dims: DecoderDims = DecoderDims(),
) -> DecoderCapture:
    """Export `loaded` (a causal LM) as the with-past program, dynamic in batch, seq and past_seq.

    The sample (batch, seq new tokens, past cached tokens) must avoid 0 and 1 on every dynamic
    axis. The eager wrapper runs first: its outputs are the reference, and a model that fails in
    eager PyTorch fails here in one line.
    """
    if min(batch, seq, past) < 2:
        raise CaptureError("the with-past sample needs batch, seq and past of at least 2 (torch.export specializes 0 and 1)")
    model = loaded.model
    wrapper = with_past(loaded)
    layout = wrapper.layout
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    vocab = int(loaded.config.get_text_config(decoder=True).vocab_size)
    limit = max_positions(loaded.config.get_text_config(decoder=True)) or 4096
    if seq + past > limit:
        raise CaptureError(f"sample seq {seq} + past {past} exceeds the model's {limit} positions")
    tensors = decoder_inputs(wrapper, vocab, batch, seq, past, dtype=dtype)
    try:
        reference = run_module(wrapper, tensors)
    except Exception as exc:  # noqa: BLE001 - any failure here is the model's, reported in one line
        raise eager_failure(exc, f"{layout.model_type} with a cache") from exc
    shapes = _dynamic_shapes(wrapper, dims, limit)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            exported = torch.export.export(wrapper, (), dict(tensors), dynamic_shapes=shapes, strict=False)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; all become one line
        raise capture_error(exc, False) from exc
    return DecoderCapture(
        loaded=loaded,
        eager=wrapper,  # type: ignore[arg-type] - duck-types FlatOutputs (input_names, output_names, forward)
        exported=exported,
        inputs=SampleInputs(tensors=tensors, origin="config", batch=batch, seq=seq),
        dims=DynamicDims(batch=dims.batch, seq=(max(1, dims.seq[0]), min(dims.seq[1] or limit, limit))),
        dynamic_shapes=shapes,
        reference=reference,
        seconds=time.perf_counter() - start,
        layout=layout,
        decoder_dims=dims,
    )


def eager_with_cache(model: torch.nn.Module, layout: CacheLayout, tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The model itself on one step's inputs, with its own DynamicCache (built from the config, so
    with its sliding-window layers) filled from the same past: the reference the program must equal."""
    config = model.config
    names = layout.past_names()
    past = [tensors[n] for n in names]
    length = past[0].shape[-2]
    cache = DynamicCache(config=config)
    if length:
        for i, (k, v) in enumerate(zip(past[0::2], past[1::2])):
            cache.layers[i].update(k, v)
    tokens = {n: t for n, t in tensors.items() if n not in names}
    with torch.no_grad():
        out = model(**tokens, cache=cache, use_cache=True)
    presents = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
    return (out.logits, *presents)
