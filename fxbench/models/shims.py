"""Capture shims: the same functions as transformers' own, in arithmetic torch.export keeps symbolic, used only while capturing."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["capture_shims"]


def _mobilevit_unfolding(self: Any, features: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """MobileViTLayer.unfolding (transformers 5) with the patch grid in integer ceil division.

    The original rounds up with `int(math.ceil(h / p) * p)`: int() of a symbolic size can only be
    specialized, which fixes the image size of every MobileViT capture. `-(-h // p) * p` is the same
    number for every h and stays symbolic. The rest is the original's."""
    patch_width, patch_height = self.patch_width, self.patch_height
    patch_area = int(patch_width * patch_height)
    batch_size, channels, orig_height, orig_width = features.shape
    new_height = -(-orig_height // patch_height) * patch_height
    new_width = -(-orig_width // patch_width) * patch_width
    interpolate = False
    if new_width != orig_width or new_height != orig_height:
        features = nn.functional.interpolate(features, size=(new_height, new_width), mode="bilinear", align_corners=False)
        interpolate = True
    num_patch_width = new_width // patch_width
    num_patch_height = new_height // patch_height
    num_patches = num_patch_height * num_patch_width
    patches = features.reshape(batch_size * channels * num_patch_height, patch_height, num_patch_width, patch_width)
    patches = patches.transpose(1, 2)
    patches = patches.reshape(batch_size, channels, num_patches, patch_area)
    patches = patches.transpose(1, 3)
    patches = patches.reshape(batch_size * patch_area, num_patches, -1)
    info_dict = {
        "orig_size": (orig_height, orig_width), "batch_size": batch_size, "channels": channels, "interpolate": interpolate,
        "num_patches": num_patches, "num_patches_width": num_patch_width, "num_patches_height": num_patch_height,
    }
    return patches, info_dict


def _llava_list(value: Any) -> list:
    """`list` as modeling_llava's get_image_features sees it: `list(image_features)` splits the
    (images, tokens, dim) features into one tensor per image, which the forward concatenates again
    at once (`torch.cat(..., dim=0)`). Iterating over a tensor's first axis fixes the batch at
    capture; one tensor of all images' tokens is the same concatenation and keeps it symbolic."""
    if isinstance(value, torch.Tensor) and value.dim() == 3:
        return [value.reshape(-1, value.shape[-1])]
    return list(value)


_ABSENT = object()


def _shape_checks_only(original: Any) -> Any:
    """transformers' `torch_compilable_check` without its checks on tensor values while capturing.

    A check on a tensor (a VLM's "image tokens == image features" count) is traced as
    `aten._is_all_true` plus an assert: a runtime data check, not a shape hint, which ONNX has no
    op for (the export fails) and the artifacts could not raise anyway. Checks on Python or
    symbolic values are hints torch.export needs, and stay."""

    def check(cond: Any, msg: Any, error_type: type[Exception] = ValueError) -> None:
        if isinstance(cond, torch.Tensor):
            return
        original(cond, msg, error_type)

    return check


def _shims_for(model_type: str) -> list[tuple[Any, str, Any]]:
    """(owner, attribute, replacement) for `model_type`."""
    shims: list[tuple[Any, str, Any]] = []
    if model_type == "mobilevit":
        from transformers.models.mobilevit import modeling_mobilevit

        shims.append((modeling_mobilevit.MobileViTLayer, "unfolding", _mobilevit_unfolding))
    if model_type == "llava":
        from transformers.models.llava import modeling_llava

        shims.append((modeling_llava, "list", _llava_list))
    try:
        modeling = importlib.import_module(f"transformers.models.{model_type.replace('-', '_')}.modeling_{model_type.replace('-', '_')}")
    except ImportError:
        modeling = None
    original = getattr(modeling, "torch_compilable_check", None)
    if original is not None:
        shims.append((modeling, "torch_compilable_check", _shape_checks_only(original)))
    return shims


def _name(owner: Any, attr: str) -> str:
    return f"{getattr(owner, '__name__', type(owner).__name__)}.{attr}"


@contextlib.contextmanager
def capture_shims(model_type: str) -> Iterator[list[str]]:
    """Install the shims of `model_type` for the block (a capture), and take them out after; yields
    their names. Eager PyTorch, the reference every artifact is checked against, runs without them."""
    shims = _shims_for(model_type)
    saved = [(owner, attr, vars(owner).get(attr, _ABSENT)) for owner, attr, _ in shims]
    try:
        for owner, attr, new in shims:
            setattr(owner, attr, new)
        yield [_name(owner, attr) for owner, attr, _ in shims]
    finally:
        for owner, attr, old in saved:
            if old is _ABSENT:
                delattr(owner, attr)
            else:
                setattr(owner, attr, old)
