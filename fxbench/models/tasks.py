"""Tasks fxbench loads models for, each tied to the transformers Auto classes that serve it."""

from __future__ import annotations

from dataclasses import dataclass

import transformers
from transformers.models.auto import modeling_auto

from fxbench.errors import ModelLoadError

__all__ = ["TaskInfo", "TASKS", "WITH_PAST_TASK", "infer_task", "auto_class_for"]

# Optimum's task name for a causal LM exported with its KV cache as inputs and outputs
# (fxbench.models.decoder captures it). Never inferred: a user asks for it (--task, --generate).
WITH_PAST_TASK = "text-generation-with-past"


@dataclass(frozen=True)
class TaskInfo:
    """A task and, in order of preference, the (Auto class, architecture-name mapping) pairs that load it."""

    name: str
    summary: str
    auto_classes: tuple[tuple[str, str], ...]


# Specific heads first: an architecture such as BertForMaskedLM sits in the mapping of its head only,
# and the bare backbone (BertModel) is feature extraction.
TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("text-generation", "causal language model logits", (("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),)),
        TaskInfo(WITH_PAST_TASK, "causal language model with its KV cache: logits and present keys/values, for prefill and decode",
                 (("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),)),
        TaskInfo("text2text-generation", "encoder-decoder language model logits", (("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),)),
        TaskInfo("fill-mask", "masked language model logits", (("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),)),
        TaskInfo("text-classification", "sequence classification logits", (("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),)),
        TaskInfo("token-classification", "per-token classification logits", (("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),)),
        TaskInfo("question-answering", "answer span start and end logits", (("AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),)),
        TaskInfo("image-classification", "image class logits", (("AutoModelForImageClassification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),)),
        TaskInfo(
            "automatic-speech-recognition",
            "speech-to-text logits (encoder-decoder or CTC)",
            (("AutoModelForSpeechSeq2Seq", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"), ("AutoModelForCTC", "MODEL_FOR_CTC_MAPPING_NAMES")),
        ),
        TaskInfo("audio-classification", "audio class logits", (("AutoModelForAudioClassification", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES"),)),
        TaskInfo("feature-extraction", "the backbone's hidden states (embeddings)", (("AutoModel", "MODEL_MAPPING_NAMES"),)),
    )
}


def _mapping(name: str) -> dict[str, str | tuple[str, ...]]:
    return getattr(modeling_auto, name)


def _architectures_in(mapping: dict[str, str | tuple[str, ...]]) -> set[str]:
    names: set[str] = set()
    for value in mapping.values():
        names.update((value,) if isinstance(value, str) else value)
    return names


def infer_task(config: transformers.PretrainedConfig) -> str:
    """The task of a config's first known architecture; a config without one is feature extraction."""
    for arch in getattr(config, "architectures", None) or ():
        for task in TASKS.values():
            if any(arch in _architectures_in(_mapping(m)) for _, m in task.auto_classes):
                return task.name
    if config.model_type in _mapping("MODEL_MAPPING_NAMES"):
        return "feature-extraction"
    raise ModelLoadError(
        f"cannot tell the task of model type {config.model_type!r} (architectures {config.architectures}); pass --task"
    )


def auto_class_for(task: str, config: transformers.PretrainedConfig) -> type:
    """The Auto class that loads `config` for `task`, or a one-line error naming the tasks that fit."""
    info = TASKS.get(task)
    if info is None:
        raise ModelLoadError(f"unknown task {task!r}; choose one of: {', '.join(sorted(TASKS))}")
    for auto_name, mapping_name in info.auto_classes:
        if config.model_type in _mapping(mapping_name):
            return getattr(transformers, auto_name)
    fitting = [t.name for t in TASKS.values() if any(config.model_type in _mapping(m) for _, m in t.auto_classes)]
    raise ModelLoadError(
        f"model type {config.model_type!r} has no {task} head; tasks it supports: {', '.join(fitting) or 'none'}"
    )
