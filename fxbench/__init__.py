"""fxbench: capture a model as a torch.fx graph, transform it with verified passes, export and benchmark it."""

from fxbench.errors import FxbenchError

__version__ = "0.1.0"
__all__ = ["FxbenchError", "__version__"]
