"""Sample inputs for every modality, and the dynamic dimensions (batch, sequence) they may vary along."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.export import Dim

from fxbench.errors import CaptureError
from fxbench.models.loading import LoadedModel
from fxbench.models.sentences import SENTENCES

__all__ = ["DynamicDims", "SampleInputs", "make_inputs", "dynamic_shapes_for", "forward_parameters", "max_positions"]

# Inputs whose axis 1 is the (encoder) token sequence.
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
_DECODER_INPUTS = ("decoder_input_ids", "decoder_attention_mask")
_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class DynamicDims:
    """Ranges the exported program accepts; `static` pins every dimension to the sample's.

    torch.export specializes dimensions of size 0 and 1, so a dynamic batch is captured from a
    sample batch of at least 2 and still accepts batch 1 afterwards.
    """

    batch: tuple[int, int] = (1, 64)
    seq: tuple[int, int] = (2, 512)
    static: bool = False

    def __post_init__(self) -> None:
        for name, (lo, hi) in (("batch", self.batch), ("seq", self.seq)):
            if not 1 <= lo <= hi:
                raise CaptureError(f"bad {name} range {lo}:{hi}; expected 1 <= MIN <= MAX")


@dataclass(frozen=True)
class SampleInputs:
    """Named input tensors for one forward pass, and where they came from."""

    tensors: dict[str, torch.Tensor]
    origin: str  # "tokenizer", "image processor", "feature extractor" or "config"
    batch: int
    seq: int | None

    def shapes(self) -> dict[str, list[int]]:
        return {k: list(v.shape) for k, v in self.tensors.items()}

    def describe(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "batch": self.batch,
            "seq": self.seq,
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in self.tensors.items()},
        }


def forward_parameters(model: torch.nn.Module) -> list[str]:
    return list(inspect.signature(model.forward).parameters)


def _text_config(config: Any) -> Any:
    """The config of the text tower: the config itself, or a multimodal model's `text_config` (CLIP, SigLIP)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def max_positions(config: Any) -> int | None:
    """The longest sequence the model's config allows (its position table), or None if it names none."""
    for cfg in (config, _text_config(config)):  # the model's own first, then its text tower's
        for attr in ("max_position_embeddings", "n_positions", "max_target_positions"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _text_from_tokenizer(tokenizer: Any, batch: int, seq: int) -> dict[str, torch.Tensor]:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    return {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}


def _text_from_config(config: Any, batch: int, seq: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    config = _text_config(config)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab <= 0:
        raise CaptureError("the config has no vocab_size to draw token ids from; the model needs its tokenizer")
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    out = {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    if getattr(config, "type_vocab_size", 0):
        out["token_type_ids"] = torch.zeros(batch, seq, dtype=torch.long)
    return out


def _synthetic_images(batch: int, size: int) -> list[np.ndarray]:
    """Deterministic RGB images, different per sample: smooth gradients with a bright square."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = []
    for i in range(batch):
        phase = i / max(batch, 1)
        img = np.stack([xx, yy, (xx + yy + phase) % 1.0], axis=-1)
        lo, hi = int(size * (0.2 + 0.3 * phase)), int(size * (0.5 + 0.3 * phase))
        img[lo:hi, lo:hi, :] = 1.0
        images.append((img * 255).astype(np.uint8))
    return images


def _synthetic_waves(batch: int, seconds: float = 2.0) -> list[np.ndarray]:
    """Deterministic speech-band audio: a chirp plus a tone, different per sample."""
    t = np.arange(int(_SAMPLE_RATE * seconds), dtype=np.float32) / _SAMPLE_RATE
    waves = []
    for i in range(batch):
        f0 = 200.0 + 50.0 * i
        chirp = np.sin(2 * np.pi * (f0 * t + 400.0 * t**2))
        waves.append((0.5 * chirp + 0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32))
    return waves


def _image_size(config: Any, preprocessor: Any | None) -> int:
    size = getattr(config, "image_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0]
    if isinstance(size, int):
        return size
    psize = getattr(preprocessor, "crop_size", None) or getattr(preprocessor, "size", None)
    if isinstance(psize, dict):
        return int(psize.get("height") or psize.get("shortest_edge") or 224)
    return 224


def make_inputs(loaded: LoadedModel, batch: int = 2, seq: int = 16, *, seed: int = 0, use_preprocessor: bool = True) -> SampleInputs:
    """Inputs for `loaded` at (batch, seq): from its own tokenizer / processor where it has one
    (fixed real sentences, synthetic images or audio), else drawn from the config."""
    gen = torch.Generator().manual_seed(seed)
    config, pre = loaded.config, (loaded.preprocessor if use_preprocessor else None)
    accepted = set(forward_parameters(loaded.model))
    tensors: dict[str, torch.Tensor]
    seq_out: int | None = seq

    if loaded.modality == "text":
        limit = max_positions(config)
        if limit is not None and seq > limit:
            raise CaptureError(f"sequence length {seq} exceeds the model's {limit} positions; use a smaller --seq")
        if pre is not None and callable(pre):
            tensors, origin = _text_from_tokenizer(pre, batch, seq), "tokenizer"
        else:
            tensors, origin = _text_from_config(config, batch, seq, gen), "config"
    elif loaded.modality == "vision":
        seq_out = None
        size = _image_size(config, pre)
        tensors = {}
        if pre is not None:
            try:
                out = pre(images=_synthetic_images(batch, size), return_tensors="pt")
                tensors, origin = {"pixel_values": out["pixel_values"].float()}, "image processor"
            except (ImportError, ValueError, TypeError):
                tensors = {}
        if not tensors:
            channels = int(getattr(config, "num_channels", 3))
            tensors, origin = {"pixel_values": torch.randn(batch, channels, size, size, generator=gen)}, "config"
    elif loaded.modality == "audio":
        tensors = {}
        main = loaded.main_input_name
        if pre is not None:
            try:
                out = pre(_synthetic_waves(batch), sampling_rate=_SAMPLE_RATE, return_tensors="pt")
                tensors, origin = {main: out[main].float()}, "feature extractor"
            except (ImportError, ValueError, TypeError, KeyError):
                tensors = {}
        if not tensors:
            if main == "input_features":
                if not isinstance(getattr(config, "num_mel_bins", None), int):  # Speech2Text: features per channel, time first
                    raise CaptureError(f"the config names no num_mel_bins to draw {main} from; the model needs its feature "
                                       f"extractor (preprocessor_config.json in its folder)")
                frames = 2 * int(getattr(config, "max_source_positions", 1500))
                tensors = {main: torch.randn(batch, int(config.num_mel_bins), frames, generator=gen)}
            else:
                tensors = {main: torch.randn(batch, _SAMPLE_RATE, generator=gen)}
            origin = "config"
        if not loaded.is_encoder_decoder:
            seq_out = None
    else:  # pragma: no cover - modality comes from a closed table
        raise CaptureError(f"no sample inputs for modality {loaded.modality!r}")

    vision = getattr(config, "vision_config", None)
    if loaded.modality == "text" and vision is not None and "pixel_values" in accepted:
        # A text-and-image model (CLIP, SigLIP): its image tower's input beside the tokens.
        size = _image_size(vision, None)
        tensors["pixel_values"] = torch.randn(batch, int(getattr(vision, "num_channels", 3)), size, size, generator=gen)

    if loaded.is_encoder_decoder and "decoder_input_ids" in accepted:
        limit = getattr(config, "max_target_positions", None) or max_positions(config)
        if limit is not None and seq > limit:
            raise CaptureError(f"decoder length {seq} exceeds the model's {limit} positions; use a smaller --seq")
        start = getattr(config, "decoder_start_token_id", None)
        start = 0 if start is None else int(start)
        ids = torch.randint(0, int(config.vocab_size), (batch, seq), generator=gen)
        ids[:, 0] = start
        tensors["decoder_input_ids"] = ids

    tensors = {k: v for k, v in tensors.items() if k in accepted}
    return SampleInputs(tensors=tensors, origin=origin, batch=batch, seq=seq_out)


def dynamic_shapes_for(loaded: LoadedModel, inputs: SampleInputs, dims: DynamicDims) -> dict[str, dict[int, Dim]] | None:
    """torch.export dynamic_shapes for `inputs`: batch on axis 0 of every input, sequence on axis 1
    of token inputs (encoder and decoder each their own), capped at the model's positions."""
    if dims.static:
        return None
    if inputs.batch < 2:
        raise CaptureError("a dynamic batch needs a sample batch of at least 2 (torch.export specializes 0 and 1); use --batch 2 or --static")
    # The sample must lie inside each range, or export rejects it.
    batch = Dim("batch", min=min(dims.batch[0], inputs.batch), max=max(dims.batch[1], inputs.batch))
    sample_seq = inputs.seq or 2
    seq_min = min(max(dims.seq[0], 2), sample_seq)
    limit = max_positions(loaded.config) or dims.seq[1]
    seq = Dim("seq", min=seq_min, max=max(min(dims.seq[1], limit), sample_seq))
    dec_limit = getattr(loaded.config, "max_target_positions", None) or limit
    dec_seq = Dim("decoder_seq", min=seq_min, max=max(min(dims.seq[1], dec_limit), sample_seq))

    shapes: dict[str, dict[int, Dim]] = {}
    for name, tensor in inputs.tensors.items():
        spec: dict[int, Dim] = {0: batch}
        if name in _TEXT_INPUTS and tensor.dim() >= 2:
            spec[1] = seq
        elif name in _DECODER_INPUTS and tensor.dim() >= 2:
            spec[1] = dec_seq
        shapes[name] = spec
    return shapes
