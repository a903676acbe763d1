"""The names of the tasks fxbench loads models for, without importing torch or transformers (for --help)."""

from __future__ import annotations

__all__ = ["TASK_NAMES", "task_help"]

# The keys of fxbench.models.tasks.TASKS, in its order (a test holds the two equal).
TASK_NAMES: tuple[str, ...] = (
    "text-generation", "text2text-generation", "fill-mask", "text-classification", "token-classification",
    "question-answering", "multiple-choice", "next-sentence-prediction", "image-classification", "object-detection",
    "semantic-segmentation", "instance-segmentation", "universal-segmentation", "image-segmentation", "depth-estimation",
    "masked-im", "image-to-image", "zero-shot-image-classification", "image-text-to-text", "automatic-speech-recognition",
    "audio-classification", "audio-frame-classification", "audio-xvector", "time-series-forecasting", "feature-extraction",
)


def task_help() -> str:
    """The --task help: every task, and that Optimum's TasksManager names are synonyms."""
    return (f"Task head to load (default: the config's architecture; a head fxbench has no task for is an error, never "
            f"a silent fallback to the backbone). One of: {', '.join(TASK_NAMES)}. Optimum's TasksManager names are accepted "
            f"too (sequence-classification, causal-lm, seq2seq-lm, masked-lm, audio-ctc, ...); feature-extraction loads the "
            f"bare backbone on purpose.")
