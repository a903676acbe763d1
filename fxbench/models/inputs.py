"""Sample inputs for every modality, and the dynamic dimensions (batch, sequence, image, time) they may vary along."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.export import Dim

from fxbench.errors import CaptureError, one_line
from fxbench.models.loading import LoadedModel
from fxbench.models.sentences import SENTENCES

__all__ = [
    "DEFAULT_AUDIO_RANGE",
    "DEFAULT_IMAGE_RANGE",
    "DynamicDims",
    "SampleInputs",
    "dynamic_axis",
    "dynamic_shapes_for",
    "example_shape",
    "forward_parameters",
    "image_size_of",
    "make_inputs",
    "max_positions",
]

# Inputs whose axis 1 is the (encoder) token sequence.
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
_DECODER_INPUTS = ("decoder_input_ids", "decoder_attention_mask")
_IMAGE_INPUTS = ("pixel_values", "pixel_mask")
_SAMPLE_RATE = 16_000
# Image sides the capture accepts when --image-range is not given (the model's own guards narrow it:
# a ResNet needs more than 32 px). Detection runs near 800 x 1333, so the top is well above that.
DEFAULT_IMAGE_RANGE = (32, 2048)
# Waveform samples (16 kHz) or feature frames the capture accepts: up to 30 s of speech.
DEFAULT_AUDIO_RANGE = (2, 30 * _SAMPLE_RATE)


@dataclass(frozen=True)
class DynamicDims:
    """Ranges the exported program accepts; `static` pins every dimension to the sample's.

    torch.export specializes dimensions of size 0 and 1, so a dynamic batch is captured from a
    sample batch of at least 2 and still accepts batch 1 afterwards. `image` bounds the height and
    width of vision inputs (None: DEFAULT_IMAGE_RANGE, narrowed to what the model accepts).
    """

    batch: tuple[int, int] = (1, 64)
    seq: tuple[int, int] = (2, 512)
    static: bool = False
    image: tuple[int, int] | None = None
    audio: tuple[int, int] = DEFAULT_AUDIO_RANGE

    def __post_init__(self) -> None:
        for name, pair in (("batch", self.batch), ("seq", self.seq), ("image", self.image), ("audio", self.audio)):
            if pair is None:
                continue
            lo, hi = pair
            if not 1 <= lo <= hi:
                raise CaptureError(f"bad {name} range {lo}:{hi}; expected 1 <= MIN <= MAX")

    @property
    def image_range(self) -> tuple[int, int]:
        return self.image or DEFAULT_IMAGE_RANGE


@dataclass(frozen=True)
class SampleInputs:
    """Named input tensors for one forward pass, the shape they were made at, and where they came from."""

    tensors: dict[str, torch.Tensor]
    origin: str  # "tokenizer", "image processor", "feature extractor", "processor" or "config"
    batch: int
    seq: int | None
    image: tuple[int, int] | None = None  # (height, width) of image inputs
    audio: int | None = None  # waveform samples (or feature frames) of audio inputs
    choices: int | None = None  # multiple choice: choices per example

    def shapes(self) -> dict[str, list[int]]:
        return {k: list(v.shape) for k, v in self.tensors.items()}

    def describe(self) -> dict[str, Any]:
        extra = {k: v for k, v in (("image", list(self.image) if self.image else None), ("audio", self.audio),
                                    ("choices", self.choices)) if v is not None}
        return {
            "origin": self.origin,
            "batch": self.batch,
            "seq": self.seq,
            **extra,
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


def dynamic_axis(name: str, lo: int, hi: int) -> Any:
    """A torch.export DYNAMIC hint for an image or time axis, named like a Dim (`__name__`, `min`,
    `max`) for ONNX axis names and reports. Unlike a strict Dim, torch refines its range to what
    the model accepts (a ResNet needs more than 32 px, a wav2vec2 at least one conv window) and
    keeps guards it cannot prove; capture reads the real range back from the program."""
    hint = Dim.DYNAMIC(min=lo, max=hi)
    hint.__name__ = name
    return hint


# --- text ---------------------------------------------------------------------------------------

def _vocab_size(config: Any) -> int:
    return int(getattr(_text_config(config), "vocab_size", 0) or 0)


def _give_pad_token(tokenizer: Any) -> None:
    # Decoder tokenizers (GPT-2, Llama) ship without a pad token; padding a fixed batch needs one.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


def _text_from_tokenizer(tokenizer: Any, batch: int, seq: int, offset: int = 0) -> dict[str, torch.Tensor]:
    _give_pad_token(tokenizer)
    texts = [SENTENCES[(i + offset) % len(SENTENCES)] for i in range(batch)]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    return {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}


def _text_from_config(config: Any, batch: int, seq: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    vocab = _vocab_size(config)
    if vocab <= 0:
        raise CaptureError("the config has no vocab_size to draw token ids from; the model needs its tokenizer")
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    out = {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    if getattr(config, "type_vocab_size", 0):
        out["token_type_ids"] = torch.zeros(batch, seq, dtype=torch.long)
    return out


def _tokenizer_of(pre: Any) -> Any | None:
    tok = getattr(pre, "tokenizer", pre)
    return tok if tok is not None and callable(tok) and hasattr(tok, "pad_token") else None


def _text(loaded: LoadedModel, pre: Any, batch: int, seq: int, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], str]:
    limit = max_positions(loaded.config)
    if limit is not None and seq > limit:
        raise CaptureError(f"sequence length {seq} exceeds the model's {limit} positions; use a smaller --seq")
    tok = _tokenizer_of(pre)
    if tok is not None:
        return _text_from_tokenizer(tok, batch, seq), "tokenizer"
    return _text_from_config(loaded.config, batch, seq, gen), "config"


# --- images -------------------------------------------------------------------------------------

def _synthetic_images(batch: int, height: int, width: int | None = None) -> list[np.ndarray]:
    """Deterministic RGB images, different per sample: smooth gradients with a bright square."""
    width = width or height
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    images = []
    for i in range(batch):
        phase = i / max(batch, 1)
        img = np.stack([xx, yy, (xx + yy + phase) % 1.0], axis=-1)
        top, bottom = int(height * (0.2 + 0.3 * phase)), int(height * (0.5 + 0.3 * phase))
        left, right = int(width * (0.2 + 0.3 * phase)), int(width * (0.5 + 0.3 * phase))
        img[top:bottom, left:right, :] = 1.0
        images.append((img * 255).astype(np.uint8))
    return images


def _vision_config(config: Any) -> Any:
    return getattr(config, "vision_config", None) or config


def image_size_of(config: Any, preprocessor: Any | None = None) -> tuple[int, int]:
    """The (height, width) a model is made for: its config's image_size, else its processor's, else 224."""
    size = getattr(_vision_config(config), "image_size", None)
    if isinstance(size, (list, tuple)) and size:
        return int(size[0]), int(size[-1])
    if isinstance(size, int):
        return size, size
    image_processor = getattr(preprocessor, "image_processor", preprocessor)
    psize = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None)
    if isinstance(psize, dict):
        h = psize.get("height") or psize.get("shortest_edge")
        w = psize.get("width") or h
        if h:
            return int(h), int(w)
    return 224, 224


def _images(loaded: LoadedModel, pre: Any, batch: int, size: tuple[int, int], gen: torch.Generator) -> tuple[dict[str, torch.Tensor], str | None]:
    """pixel_values (and pixel_mask where the processor makes one) at exactly `size`: synthetic images
    drawn at that size and normalized by the model's processor without resizing or cropping."""
    image_processor = getattr(pre, "image_processor", pre)
    if image_processor is not None and hasattr(image_processor, "preprocess"):
        try:
            out = image_processor(images=_synthetic_images(batch, *size), do_resize=False, do_center_crop=False, return_tensors="pt")
            tensors = {"pixel_values": out["pixel_values"].float()}
            if "pixel_mask" in out:
                tensors["pixel_mask"] = out["pixel_mask"].long()
            if tuple(tensors["pixel_values"].shape[-2:]) == tuple(size):
                return tensors, "image processor"
        except (ImportError, ValueError, TypeError, KeyError):
            pass
    channels = int(getattr(_vision_config(loaded.config), "num_channels", 3))
    return {"pixel_values": torch.randn(batch, channels, *size, generator=gen)}, None


# --- audio --------------------------------------------------------------------------------------

def _synthetic_waves(batch: int, samples: int) -> list[np.ndarray]:
    """Deterministic speech-band audio: a chirp plus a tone, different per sample."""
    t = np.arange(samples, dtype=np.float32) / _SAMPLE_RATE
    waves = []
    for i in range(batch):
        f0 = 200.0 + 50.0 * i
        chirp = np.sin(2 * np.pi * (f0 * t + 400.0 * t**2))
        waves.append((0.5 * chirp + 0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32))
    return waves


def _audio(loaded: LoadedModel, pre: Any, batch: int, length: int | None, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], str, int]:
    config, main = loaded.config, loaded.main_input_name
    if pre is not None:
        try:
            samples = length or 2 * _SAMPLE_RATE
            out = pre(_synthetic_waves(batch, samples), sampling_rate=_SAMPLE_RATE, return_tensors="pt")
            tensor = out[main].float()
            return {main: tensor}, "feature extractor", samples
        except (ImportError, ValueError, TypeError, KeyError):
            pass
    if main == "input_features":
        bins = int(getattr(config, "num_mel_bins", 0) or getattr(config, "input_feat_per_channel", 80))
        if config.model_type == "whisper":
            frames = 2 * int(getattr(config, "max_source_positions", 1500))
            return {main: torch.randn(batch, bins, frames, generator=gen)}, "config", frames
        frames = length or 200
        return {main: torch.randn(batch, frames, bins, generator=gen)}, "config", frames
    samples = length or _SAMPLE_RATE
    return {main: torch.randn(batch, samples, generator=gen)}, "config", samples


# --- multimodal ---------------------------------------------------------------------------------

def image_token_count(loaded: LoadedModel, size: tuple[int, int]) -> int:
    """How many placeholder tokens one image becomes in a vision-language model's text: the length of
    its image features, from the model's own get_image_features on one blank image (cached)."""
    cache = loaded.__dict__.setdefault("_image_tokens", {})
    if size not in cache:
        get = getattr(loaded.model, "get_image_features", None)
        if get is None:
            raise CaptureError(f"{type(loaded.model).__name__} has no get_image_features to count its image tokens; pass --task feature-extraction")
        channels = int(getattr(_vision_config(loaded.config), "num_channels", 3))
        with torch.no_grad():
            feats = get(pixel_values=torch.zeros(1, channels, *size))
        feats = getattr(feats, "pooler_output", feats)
        if isinstance(feats, (list, tuple)):
            feats = feats[0]
        cache[size] = int(feats.shape[-2]) if feats.dim() >= 2 else int(feats.numel())
    return cache[size]


def _image_token_id(config: Any) -> int | None:
    for attr in ("image_token_id", "image_token_index"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return None


def example_shape(loaded: LoadedModel) -> tuple[int | None, int | None]:
    """(batch, sequence length) of a module's example inputs: the first axis they all share, and
    the token inputs' second axis (None where there is none)."""
    ex = loaded.example_inputs or {}
    firsts = {t.shape[0] for t in ex.values() if t.dim() > 0}
    batch = firsts.pop() if len(firsts) == 1 and all(t.dim() > 0 for t in ex.values()) else None
    tokens = [t for n, t in ex.items() if n in _TEXT_INPUTS and t.dim() >= 2]
    return batch, (tokens[0].shape[1] if tokens and loaded.modality != "tensor" else None)


def _from_examples(loaded: LoadedModel, batch: int, seq: int) -> SampleInputs | None:
    """The example inputs at (batch, seq): themselves at their own shape; for a plain module, their
    rows repeated to another batch; None for a transformers model at another shape (made as usual)."""
    ex = dict(loaded.example_inputs or {})
    ex_batch, ex_seq = example_shape(loaded)
    if batch == ex_batch and (ex_seq is None or seq == ex_seq):
        return SampleInputs(ex, "example inputs", batch, ex_seq)
    if loaded.modality != "tensor":
        return None
    if ex_batch is None:
        raise CaptureError("the example inputs share no first (batch) axis: this module runs at its example shape only")
    rows = torch.arange(batch) % ex_batch
    return SampleInputs({k: v[rows] for k, v in ex.items()}, "example inputs", batch, None)


def _vlm_from_processor(loaded: LoadedModel, pre: Any, batch: int, seq: int, size: tuple[int, int], token: int, count: int) -> dict[str, torch.Tensor] | None:
    """Token ids and pixels made by a vision-language processor (LlavaProcessor, AyaVisionProcessor),
    None when `pre` is not one: each text is the processor's image placeholder and then real sentences,
    which the processor expands to the image's tokens (and the markers around them); the ids are then
    cut to `seq` (the processor's own truncation refuses to cut a text it expanded). The synthetic images
    are normalized at `size`. The processor and the model must agree on the image token and on how many
    tokens one image makes, or the sample would not be what users feed."""
    placeholder, tok = getattr(pre, "image_token", None), _tokenizer_of(pre)
    if not isinstance(placeholder, str) or tok is None or getattr(pre, "image_processor", None) is None:
        return None
    # Each text has more tokens than `seq` (a token is rarely over 16 characters) and is made on its own,
    # so that no row is padded.
    rounds = -(-16 * seq // len(" ".join(SENTENCES)))
    images = _synthetic_images(batch, *size)
    rows = []
    for i in range(batch):
        text = " ".join([placeholder, *(SENTENCES[(i + j) % len(SENTENCES)] for j in range(rounds * len(SENTENCES)))])
        try:
            rows.append(pre(images=[images[i]], text=[text], do_resize=False, do_center_crop=False, return_tensors="pt"))
        except (ValueError, TypeError, KeyError) as exc:
            raise CaptureError(f"the model's processor ({type(pre).__name__}) cannot make a sample at image {size[0]}x{size[1]}: {one_line(exc, 200)}") from exc
    name, kind = type(loaded.model).__name__, type(pre).__name__
    if getattr(pre, "image_token_id", token) != token:
        raise CaptureError(f"the processor's image token id {pre.image_token_id} is not {name}'s image_token_id {token}; the folder's processor belongs to another model")
    made = sorted({int((row["input_ids"] == token).sum()) for row in rows})
    if made != [count]:
        raise CaptureError(f"the processor ({kind}) expands one image to {'/'.join(map(str, made))} tokens but {name} makes "
                           f"{count} image features at {size[0]}x{size[1]}; its patch_size / num_additional_image_tokens do not fit the model")
    if min(row["input_ids"].shape[1] for row in rows) < seq:
        raise CaptureError(f"the model's processor ({kind}) made fewer than --seq {seq} tokens of text; use a smaller --seq")
    held = max(int((row["input_ids"][0] == token).nonzero().max()) + 1 for row in rows)  # up to the last image token
    if seq < held + 1:
        raise CaptureError(f"sequence length {seq} cannot hold the {held} tokens {kind} opens a text with for one image; use --seq {held + 8} or more")
    out = {k: torch.cat([row[k][:, :seq] if k in _TEXT_INPUTS else row[k] for row in rows])
           for k, v in rows[0].items() if isinstance(v, torch.Tensor)}
    pixels = out["pixel_values"]
    if pixels.shape[0] != batch or tuple(pixels.shape[-2:]) != tuple(size):
        raise CaptureError(f"the processor ({kind}) made pixel_values {list(pixels.shape)} for {batch} images of {size[0]}x{size[1]}; "
                           "fxbench needs one image per row at the model's size")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in out.items()}


def _vlm_inputs(loaded: LoadedModel, pre: Any, batch: int, seq: int, size: tuple[int, int], gen: torch.Generator) -> tuple[dict[str, torch.Tensor], str]:
    """A vision-language model's token ids, attention mask and pixels: from its processor where the
    folder has one (`_vlm_from_processor`), else one image's placeholder tokens after the first token
    of the tokenizer's (or the config's) ids, with the image processor's (or random) pixels."""
    token = _image_token_id(loaded.config)
    if token is None:
        raise CaptureError(f"{type(loaded.model).__name__}'s config names no image token id; pass --task feature-extraction")
    count = image_token_count(loaded, size)
    if seq < count + 2:
        raise CaptureError(f"sequence length {seq} cannot hold the {count} image tokens of one image; use --seq {count + 8} or more")
    limit = max_positions(loaded.config)
    if limit is not None and seq > limit:
        raise CaptureError(f"sequence length {seq} exceeds the model's {limit} positions; use a smaller --seq")
    made = _vlm_from_processor(loaded, pre, batch, seq, size, token, count)
    if made is not None:
        return made, "processor"
    pixels, from_images = _images(loaded, pre, batch, size, gen)
    tensors, origin = _text(loaded, pre, batch, seq, gen)
    ids = tensors["input_ids"].clone()
    ids[ids == token] = 0 if token else 1  # a sentence's own tokens must not read as image placeholders
    ids[:, 1:1 + count] = token
    tensors["input_ids"] = ids
    tensors["attention_mask"] = torch.ones_like(ids)
    tensors.update(pixels)
    return tensors, "processor" if from_images and origin == "tokenizer" else origin


# --- time series --------------------------------------------------------------------------------

def _time_series(loaded: LoadedModel, batch: int, gen: torch.Generator, accepted: set[str]) -> dict[str, torch.Tensor]:
    """The windows a forecasting model reads, from its config: the past (context plus the largest lag)
    with its time features and observed mask, and the future's time features and values (teacher forcing)."""
    c = loaded.config
    if "past_time_features" in accepted:  # Informer, Autoformer, Time Series Transformer
        past = int(c.context_length) + max(c.lags_sequence)
        future = int(c.prediction_length)
        channels = () if int(getattr(c, "input_size", 1)) == 1 else (int(c.input_size),)
        feats = int(c.num_time_features)
        out = {
            "past_values": torch.randn(batch, past, *channels, generator=gen),
            "past_time_features": torch.randn(batch, past, feats, generator=gen),
            "past_observed_mask": torch.ones(batch, past, *channels),
            "future_time_features": torch.randn(batch, future, feats, generator=gen),
            "future_values": torch.randn(batch, future, *channels, generator=gen),
        }
        if int(getattr(c, "num_static_categorical_features", 0)):
            out["static_categorical_features"] = torch.stack(
                [torch.randint(0, k, (batch,), generator=gen) for k in c.cardinality], dim=1)
        if int(getattr(c, "num_static_real_features", 0)):
            out["static_real_features"] = torch.randn(batch, int(c.num_static_real_features), generator=gen)
        return out
    channels = int(getattr(c, "num_input_channels", 1))  # PatchTST, PatchTSMixer
    return {"past_values": torch.randn(batch, int(c.context_length), channels, generator=gen)}


# --- all ----------------------------------------------------------------------------------------

def make_inputs(
    loaded: LoadedModel, batch: int = 2, seq: int = 16, *, image: tuple[int, int] | None = None, audio: int | None = None,
    choices: int | None = None, seed: int = 0, use_preprocessor: bool = True,
) -> SampleInputs:
    """Inputs for `loaded` at (batch, seq, image size, audio length): from its own tokenizer / processor
    where it has one (fixed real sentences, synthetic images or audio), else drawn from the config.

    `image` is (height, width), default the model's own size; `audio` is waveform samples (or feature
    frames), default 1 s (2 s through a feature extractor); `choices` the choices per example of a
    multiple-choice head (default 2). A dual encoder (zero-shot image classification) gets one more
    text than images, so that the two batches are told apart.
    """
    if loaded.example_inputs is not None:  # a module handed in with example inputs runs on those (see `_from_examples`)
        made = _from_examples(loaded, batch, seq)
        if made is not None:
            return made
    gen = torch.Generator().manual_seed(seed)
    config, pre = loaded.config, (loaded.preprocessor if use_preprocessor else None)
    accepted = set(forward_parameters(loaded.model))
    tensors: dict[str, torch.Tensor] = {}
    seq_out: int | None = seq
    size_out: tuple[int, int] | None = None
    audio_out: int | None = None
    choices_out: int | None = None
    origin = "config"

    if loaded.modality == "text":
        if loaded.task == "multiple-choice":
            choices_out = choices or 2
            flat, origin = _text(loaded, pre, batch * choices_out, seq, gen)
            tensors = {k: v.reshape(batch, choices_out, seq) for k, v in flat.items()}
        else:
            tensors, origin = _text(loaded, pre, batch, seq, gen)
    elif loaded.modality == "vision":
        seq_out = None
        size_out = image or image_size_of(config, pre)
        tensors, made = _images(loaded, pre, batch, size_out, gen)
        origin = made or "config"
    elif loaded.modality == "audio":
        tensors, origin, audio_out = _audio(loaded, pre, batch, audio, gen)
        if not loaded.is_encoder_decoder:
            seq_out = None
    elif loaded.modality == "multimodal":
        size_out = image or image_size_of(config, pre)
        if loaded.task == "image-text-to-text":
            tensors, origin = _vlm_inputs(loaded, pre, batch, seq, size_out, gen)
        else:  # a dual encoder: texts and images are two batches
            pixels, made = _images(loaded, pre, batch, size_out, gen)
            tensors, origin = _text(loaded, pre, batch + 1, seq, gen)
            tensors.update(pixels)
            origin = "processor" if made and origin == "tokenizer" else origin
    elif loaded.modality == "time-series":
        seq_out = None
        tensors = _time_series(loaded, batch, gen, accepted)
    else:  # pragma: no cover - modality comes from a closed table
        raise CaptureError(f"no sample inputs for modality {loaded.modality!r}")

    if loaded.is_encoder_decoder and "decoder_input_ids" in accepted and loaded.modality != "time-series":
        limit = getattr(config, "max_target_positions", None) or max_positions(config)
        if limit is not None and seq > limit:
            raise CaptureError(f"decoder length {seq} exceeds the model's {limit} positions; use a smaller --seq")
        start = getattr(config, "decoder_start_token_id", None)
        start = 0 if start is None else int(start)
        ids = torch.randint(0, _vocab_size(config), (batch, seq), generator=gen)
        ids[:, 0] = start
        tensors["decoder_input_ids"] = ids

    tensors = {k: v for k, v in tensors.items() if k in accepted}
    return SampleInputs(tensors=tensors, origin=origin, batch=batch, seq=seq_out, image=size_out, audio=audio_out, choices=choices_out)


def dynamic_shapes_for(
    loaded: LoadedModel, inputs: SampleInputs, dims: DynamicDims, *, image: tuple[Any, Any] | None = None, time: Any | None = None,
) -> dict[str, dict[int, Any]] | None:
    """torch.export dynamic_shapes for `inputs`: batch on axis 0 of every input (a dual encoder's
    texts on their own `text_batch`), sequence on the token axis of text inputs (encoder and decoder
    each their own, capped at the model's positions), `choices` for multiple choice; and, where the
    caller passes them (fxbench.models.axes decides), the (height, width) axes of image inputs and
    the time axis of audio inputs."""
    if dims.static:
        return None
    if loaded.modality == "tensor":  # a plain module: a batch axis when its examples share one, no sequence
        if example_shape(loaded)[0] is None or inputs.batch < 2:
            return None
        dim = Dim("batch", min=min(dims.batch[0], inputs.batch), max=max(dims.batch[1], inputs.batch))
        return {name: {0: dim} for name in inputs.tensors}
    if inputs.batch < 2:
        raise CaptureError("a dynamic batch needs a sample batch of at least 2 (torch.export specializes 0 and 1); use --batch 2 or --static")
    # The sample must lie inside each range, or export rejects it.
    batch = Dim("batch", min=min(dims.batch[0], inputs.batch), max=max(dims.batch[1], inputs.batch))
    text_batch = Dim("text_batch", min=min(dims.batch[0], inputs.batch + 1), max=max(dims.batch[1], inputs.batch + 1))
    sample_seq = inputs.seq or 2
    seq_min = min(max(dims.seq[0], 2), sample_seq)
    if loaded.task == "image-text-to-text":  # a sequence must hold its image's tokens
        seq_min = min(image_token_count(loaded, inputs.image or (224, 224)) + 2, sample_seq)
    limit = max_positions(loaded.config) or dims.seq[1]
    seq = Dim("seq", min=seq_min, max=max(min(dims.seq[1], limit), sample_seq))
    dec_limit = getattr(loaded.config, "max_target_positions", None) or limit
    dec_seq = Dim("decoder_seq", min=seq_min, max=max(min(dims.seq[1], dec_limit), sample_seq))
    choices = Dim("choices", min=1, max=max(64, inputs.choices or 2))
    dual = loaded.modality == "multimodal" and loaded.task != "image-text-to-text"

    shapes: dict[str, dict[int, Any]] = {}
    for name, tensor in inputs.tensors.items():
        spec: dict[int, Any] = {0: batch}
        if name in _TEXT_INPUTS and tensor.dim() >= 2:
            if dual:
                spec[0] = text_batch
            if inputs.choices is not None and tensor.dim() == 3:
                spec[1], spec[2] = choices, seq
            else:
                spec[1] = seq
        elif name in _DECODER_INPUTS and tensor.dim() >= 2:
            spec[1] = dec_seq
        elif name in _IMAGE_INPUTS and image is not None and tensor.dim() >= 3:
            spec[tensor.dim() - 2], spec[tensor.dim() - 1] = image
        elif name == loaded.main_input_name and loaded.modality == "audio" and time is not None:
            spec[_time_axis(loaded, tensor)] = time
        shapes[name] = spec
    return shapes


def _time_axis(loaded: LoadedModel, tensor: torch.Tensor) -> int:
    """The time axis of an audio input: axis 1 of a waveform; of features, the axis that is not the mel bins."""
    if tensor.dim() == 2:
        return 1
    bins = int(getattr(loaded.config, "num_mel_bins", 0) or getattr(loaded.config, "input_feat_per_channel", 0) or 0)
    return 1 if tensor.shape[2] == bins else 2
