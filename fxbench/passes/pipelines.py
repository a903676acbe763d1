"""Every named pipeline's pass order, in one place, and how `--passes` edits a pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fxbench.errors import PassOptionError
from fxbench.passes.base import FxbenchPass
from fxbench.passes.registry import create_pass, get_pass, parse_pass_spec

__all__ = ["CLEANUP", "DEFAULT_PIPELINE", "PIPELINES", "Pipeline", "build_passes", "effective_pipeline"]

# Passes that tidy up after others; passes added with --passes go before a pipeline's trailing run
# of these, so that what the added passes leave dead is swept.
CLEANUP = ("remove-noops", "eliminate-common-subexpressions", "eliminate-dead-code")


@dataclass(frozen=True)
class Pipeline:
    name: str
    summary: str
    passes: tuple[str, ...]  # pass specs: "name" or "name:option=value,..."
    device: str = "any"  # "any", "cpu" or "cuda": where its artifacts are meant to run


PIPELINES: dict[str, Pipeline] = {
    p.name: p
    for p in (
        Pipeline(
            "O1",
            "clean-up: no-op removal, common subexpressions, dead code",
            ("remove-noops", "eliminate-common-subexpressions", "eliminate-dead-code"),
        ),
    )
}

DEFAULT_PIPELINE = "O1"


def _name(spec: str) -> str:
    return parse_pass_spec(spec)[0]


def effective_pipeline(pipeline: str | None, edits: Sequence[str] = ()) -> str | None:
    """The pipeline the edits apply to: the one named, else the default unless the edits add passes
    (then the passes are exactly those)."""
    if pipeline is not None:
        return pipeline
    return None if any(not e.strip().startswith("-") for e in edits if e.strip()) else DEFAULT_PIPELINE


def build_passes(pipeline: str | None = None, edits: Sequence[str] = ()) -> list[FxbenchPass]:
    """The passes of `pipeline` (default O1 unless `edits` name passes only), edited by `edits`:

    - `name` or `+name[:opts]`: a pass of that name in the pipeline takes these options; a new one
      is added before the pipeline's trailing clean-up passes;
    - `-name`: every pass of that name is removed.
    Without a pipeline and with edits that add passes, the passes are exactly those.
    """
    chosen = effective_pipeline(pipeline, edits)
    if chosen is not None and chosen not in PIPELINES:
        raise PassOptionError(f"unknown pipeline {chosen!r}; choose one of: {', '.join(PIPELINES)}")
    specs: list[str] = list(PIPELINES[chosen].passes) if chosen is not None else []

    for edit in edits:
        edit = edit.strip()
        if not edit:
            continue
        if edit.startswith("-"):
            name = edit[1:].strip()
            get_pass(name)  # an unknown name is an error, not a silent no-op
            specs = [s for s in specs if _name(s) != name]
            continue
        spec = edit.removeprefix("+").strip()
        name = _name(spec)
        get_pass(name)
        same = [i for i, s in enumerate(specs) if _name(s) == name]
        if same and chosen is not None:
            for i in same:
                specs[i] = spec
            continue
        tail = len(specs)
        if chosen is not None:
            while tail > 0 and _name(specs[tail - 1]) in CLEANUP:
                tail -= 1
        specs.insert(tail, spec)
    return [create_pass(s) for s in specs]
