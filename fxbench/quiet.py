"""Library chatter (weight-loading bars, deprecation notes, optional kernels that fail to load) kept
out of fxbench's output, which says what matters itself; verbose runs let it through."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

from fxbench.events import verbosity

__all__ = ["quiet_libraries"]

# torchao logs a warning per optional CUDA kernel it cannot load; torch's pytree warns about enum
# registrations torchao makes; the exporters log their passes; transformers draws a weight-loading bar.
_LOGGERS = ("torch", "torch._dynamo", "torch._inductor", "torch.export", "torch.onnx", "torch.utils._pytree", "transformers",
            "transformers.modeling_utils", "torchao", "onnxscript", "onnx_ir", "huggingface_hub")
_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[None]:
    """While the block runs, libraries log errors only, warn nothing and draw no progress bars;
    everything is restored afterwards (a notebook keeps its own settings). Off under -v."""
    if not enabled or verbosity() >= 1:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in _ENV}
    for k, v in _ENV.items():
        os.environ.setdefault(k, v)
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    hf = None
    try:
        import transformers

        hf = (transformers.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled())
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - a dependency
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hf is not None:
            import transformers

            transformers.logging.set_verbosity(hf[0])
            if hf[1]:
                transformers.utils.logging.enable_progress_bar()
