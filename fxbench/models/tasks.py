"""Tasks fxbench loads models for, each tied to the transformers Auto classes (or head classes) that serve it."""

from __future__ import annotations

from dataclasses import dataclass, field

import transformers
from transformers.models.auto import modeling_auto

from fxbench.errors import ModelLoadError

__all__ = ["TASKS", "TASK_SYNONYMS", "TaskInfo", "auto_class_for", "canonical_task", "infer_task", "loadable_tasks"]


@dataclass(frozen=True)
class TaskInfo:
    """A task: in order of preference, the (Auto class, architecture-name mapping) pairs that load it,
    head classes by model type for heads transformers has no Auto class for, and the modality of its inputs."""

    name: str
    summary: str
    auto_classes: tuple[tuple[str, str], ...]
    modality: str = "text"  # text, vision, audio, multimodal (image + text), time-series; "auto": from the model
    head_classes: dict[str, str] = field(default_factory=dict)  # model_type -> class name in transformers

    def classes_for(self, model_type: str) -> list[str]:
        """The class names that load `model_type` for this task (the Auto classes' mappings, then the heads)."""
        names = [_as_tuple(_mapping(m)[model_type])[0] for _, m in self.auto_classes if model_type in _mapping(m)]
        return names + ([self.head_classes[model_type]] if model_type in self.head_classes else [])


def _t(name: str, summary: str, *pairs: tuple[str, str], modality: str = "text", heads: dict[str, str] | None = None) -> TaskInfo:
    return TaskInfo(name, summary, tuple(pairs), modality, heads or {})


# Specific heads first: an architecture such as BertForMaskedLM sits in the mapping of its head only,
# and the bare backbone (BertModel) is feature extraction. Segmentation's specific tasks come before
# the umbrella `image-segmentation` (Optimum's name, which loads any of them), so that inference
# names the specific one.
TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        _t("text-generation", "causal language model logits", ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES")),
        _t("text2text-generation", "encoder-decoder language model logits", ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES")),
        _t("fill-mask", "masked language model logits", ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES")),
        _t("text-classification", "sequence classification logits", ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES")),
        _t("token-classification", "per-token classification logits", ("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES")),
        _t("question-answering", "answer span start and end logits", ("AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES")),
        _t("multiple-choice", "one logit per choice (input_ids: batch x choices x seq)", ("AutoModelForMultipleChoice", "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES")),
        _t("next-sentence-prediction", "is-next logits of a sentence pair", ("AutoModelForNextSentencePrediction", "MODEL_FOR_NEXT_SENTENCE_PREDICTION_MAPPING_NAMES")),
        _t("image-classification", "image class logits", ("AutoModelForImageClassification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"), modality="vision"),
        _t("object-detection", "class logits and boxes per query", ("AutoModelForObjectDetection", "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES"), modality="vision"),
        _t("semantic-segmentation", "per-pixel class logits", ("AutoModelForSemanticSegmentation", "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES"), modality="vision"),
        _t("instance-segmentation", "class logits and mask logits per query", ("AutoModelForInstanceSegmentation", "MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES"), modality="vision"),
        _t("universal-segmentation", "class and mask logits per query (semantic, instance, panoptic)", ("AutoModelForUniversalSegmentation", "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES"), modality="vision"),
        _t(
            "image-segmentation", "any segmentation head: boxes, masks or per-pixel logits",
            ("AutoModelForImageSegmentation", "MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES"),
            ("AutoModelForSemanticSegmentation", "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES"),
            ("AutoModelForInstanceSegmentation", "MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES"),
            ("AutoModelForUniversalSegmentation", "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES"),
            modality="vision",
        ),
        _t("depth-estimation", "per-pixel predicted depth", ("AutoModelForDepthEstimation", "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES"), modality="vision"),
        _t("masked-im", "masked image modeling reconstruction", ("AutoModelForMaskedImageModeling", "MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING_NAMES"), modality="vision"),
        _t("image-to-image", "an image out (super-resolution)", ("AutoModelForImageToImage", "MODEL_FOR_IMAGE_TO_IMAGE_MAPPING_NAMES"), modality="vision"),
        _t(
            "zero-shot-image-classification", "image-text similarity logits of a dual encoder (CLIP-style)",
            ("AutoModelForZeroShotImageClassification", "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES"), modality="multimodal",
        ),
        _t(
            "image-text-to-text", "vision-language model logits (image tokens in the text)",
            ("AutoModelForImageTextToText", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"), modality="multimodal",
        ),
        _t(
            "automatic-speech-recognition", "speech-to-text logits (encoder-decoder or CTC)",
            ("AutoModelForSpeechSeq2Seq", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"), ("AutoModelForCTC", "MODEL_FOR_CTC_MAPPING_NAMES"),
            modality="audio",
        ),
        _t("audio-classification", "audio class logits", ("AutoModelForAudioClassification", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES"), modality="audio"),
        _t("audio-frame-classification", "class logits per audio frame", ("AutoModelForAudioFrameClassification", "MODEL_FOR_AUDIO_FRAME_CLASSIFICATION_MAPPING_NAMES"), modality="audio"),
        _t("audio-xvector", "speaker embeddings (x-vectors) and their logits", ("AutoModelForAudioXVector", "MODEL_FOR_AUDIO_XVECTOR_MAPPING_NAMES"), modality="audio"),
        _t(
            "time-series-forecasting", "distribution parameters of the forecast window (teacher-forced)",
            ("AutoModelForTimeSeriesPrediction", "MODEL_FOR_TIME_SERIES_PREDICTION_MAPPING_NAMES"), modality="time-series",
            # Forecasting heads without an Auto class, as Optimum's TasksManager loads them (its _CUSTOM_CLASSES).
            heads={
                "informer": "InformerForPrediction", "autoformer": "AutoformerForPrediction",
                "time_series_transformer": "TimeSeriesTransformerForPrediction", "patchtst": "PatchTSTForPrediction",
                "patchtsmixer": "PatchTSMixerForPrediction",
            },
        ),
        _t("feature-extraction", "the backbone's hidden states (embeddings)", ("AutoModel", "MODEL_MAPPING_NAMES"), modality="auto"),
    )
}

# The task names of Optimum's TasksManager (its _SYNONYM_TASK_MAP, 2.3) that name one of the tasks
# above, plus the older names of some. "-with-past" names are not here: fxbench captures one forward
# pass without a KV cache (see fxbench.models.decoder), and must not quietly drop the cache.
TASK_SYNONYMS: dict[str, str] = {
    "audio-ctc": "automatic-speech-recognition",
    "causal-lm": "text-generation",
    "default": "feature-extraction",
    "image-feature-extraction": "feature-extraction",
    "image-to-text": "image-text-to-text",
    "mask-generation": "feature-extraction",
    "masked-lm": "fill-mask",
    "pretraining": "feature-extraction",
    "sentence-similarity": "feature-extraction",
    "seq2seq-lm": "text2text-generation",
    "sequence-classification": "text-classification",
    "speech2seq-lm": "automatic-speech-recognition",
    "summarization": "text2text-generation",
    "translation": "text2text-generation",
    "vision2seq-lm": "image-text-to-text",
    "zero-shot-classification": "text-classification",
}


def _mapping(name: str) -> dict[str, str | tuple[str, ...]]:
    return getattr(modeling_auto, name, {})


def _as_tuple(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _architectures_in(mapping: dict[str, str | tuple[str, ...]]) -> set[str]:
    return {name for value in mapping.values() for name in _as_tuple(value)}


def _task_architectures(task: TaskInfo) -> set[str]:
    names = set(task.head_classes.values())
    for _, mapping in task.auto_classes:
        names |= _architectures_in(_mapping(mapping))
    return names


def canonical_task(name: str) -> str:
    """The fxbench task a name (fxbench's or Optimum's) stands for; a one-line error for any other."""
    key = name.strip().lower().replace("_", "-")
    if key in TASKS:
        return key
    if key in TASK_SYNONYMS:
        return TASK_SYNONYMS[key]
    hint = ""
    base = key.removesuffix("-with-past")
    if base != key and (base in TASKS or base in TASK_SYNONYMS):
        hint = f" (--task captures one forward pass without a KV cache: use --task {TASK_SYNONYMS.get(base, base)})"
    raise ModelLoadError(f"unknown task {name!r}{hint}; choose one of: {', '.join(TASKS)} (or an Optimum name: {', '.join(TASK_SYNONYMS)})")


def _head_family(architecture: str) -> str | None:
    """Which transformers head family (Auto mapping) lists `architecture`, in words: "keypoint detection"."""
    for name in dir(modeling_auto):
        if name.startswith("MODEL_FOR_") and name.endswith("_MAPPING_NAMES") and architecture in _architectures_in(_mapping(name)):
            return name.removeprefix("MODEL_FOR_").removesuffix("_MAPPING_NAMES").lower().replace("_", " ")
    return None


def loadable_tasks(model_type: str) -> list[str]:
    """The tasks a model type can be loaded for."""
    return [t.name for t in TASKS.values() if t.classes_for(model_type)]


def infer_task(config: transformers.PretrainedConfig) -> str:
    """The task whose head is the config's architecture; a config without architectures is feature extraction.

    Never a silent downgrade: when the config names a head fxbench has no task for (a depth model
    loaded as its bare backbone would pass every parity check against that wrong model), this is
    one error naming the architecture, the tasks the model type loads as, and --task.
    """
    architectures = list(getattr(config, "architectures", None) or ())
    for arch in architectures:
        for task in TASKS.values():
            if arch in _task_architectures(task):
                return task.name
    if architectures:
        arch = architectures[0]
        family = _head_family(arch)
        what = f"a {family} head" if family else "a head transformers has no Auto class for"
        fitting = loadable_tasks(config.model_type)
        raise ModelLoadError(
            f"the config's architecture {arch} is {what}, which fxbench has no task for; model type {config.model_type!r} "
            f"loads as: {', '.join(fitting) or 'nothing fxbench knows'}; pass --task (--task feature-extraction loads the bare backbone)"
        )
    if config.model_type in _mapping("MODEL_MAPPING_NAMES"):
        return "feature-extraction"
    raise ModelLoadError(f"cannot tell the task of model type {config.model_type!r} (the config names no architecture); pass --task")


def auto_class_for(task: str, config: transformers.PretrainedConfig) -> type:
    """The class that loads `config` for `task` (an Auto class or a head class), or a one-line error naming the tasks that fit."""
    info = TASKS[canonical_task(task)]
    for auto_name, mapping_name in info.auto_classes:
        if config.model_type in _mapping(mapping_name) and hasattr(transformers, auto_name):
            return getattr(transformers, auto_name)
    if config.model_type in info.head_classes:
        return getattr(transformers, info.head_classes[config.model_type])
    fitting = loadable_tasks(config.model_type)
    raise ModelLoadError(
        f"model type {config.model_type!r} has no {info.name} head; tasks it supports: {', '.join(fitting) or 'none'}"
    )
