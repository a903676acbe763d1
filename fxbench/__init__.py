"""fxbench: capture a model as a torch.fx graph, transform it with verified passes, export and benchmark it.

From Python: `fxbench.optimize(model)`, `fxbench.bench(target)`, `fxbench.export(source, to=...)`
(see fxbench.api); they load on first use, so `import fxbench` stays light."""

from __future__ import annotations

from typing import Any

from fxbench.errors import FxbenchError

__version__ = "0.1.0"
__all__ = ["FxbenchError", "__version__", "bench", "export", "optimize"]

_API = ("optimize", "bench", "export")


def __getattr__(name: str) -> Any:
    if name in _API:
        from fxbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'fxbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
