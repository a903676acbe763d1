"""`fxbench passes list`: the registered passes (built-in and plugins) with their options, and the pipelines."""

from __future__ import annotations

from fxbench.passes import PIPELINES, available_passes, option_help
from fxbench.passes.registry import plugin_errors
from fxbench.reports.records import OptionEntry, PassCatalog, PassEntry, PipelineEntry

__all__ = ["pass_catalog"]


def pass_catalog() -> PassCatalog:
    passes = tuple(
        PassEntry(name, info.cls.summary(), info.origin, info.cls.precision, tuple(OptionEntry(*o) for o in option_help(info.cls)))
        for name, info in available_passes().items()
    )
    pipelines = tuple(PipelineEntry(p.name, p.summary, tuple(p.passes), p.device) for p in PIPELINES.values())
    return PassCatalog(passes, pipelines, dict(plugin_errors()))
