"""The pass framework (on torch.fx.passes.infra), the registry, the named pipelines and the passes."""

from fxbench.passes._graph import read_tensors, set_meta
from fxbench.passes.base import (
    FxbenchPass,
    NoOptions,
    PassContext,
    PassOptions,
    PassResult,
    module_path,
    output_names,
    replace_outputs,
    set_output_names,
)
from fxbench.passes.pipelines import PIPELINES, Pipeline, build_passes, native_bf16_cpu, search_space
from fxbench.passes.registry import (
    ENTRY_POINT_GROUP,
    available_passes,
    create_pass,
    get_pass,
    option_help,
    register_pass,
)
from fxbench.passes.runner import PassRecord, PipelineResult, op_histogram, run_pipeline

__all__ = [
    "ENTRY_POINT_GROUP",
    "FxbenchPass",
    "NoOptions",
    "PIPELINES",
    "PassContext",
    "PassOptions",
    "PassRecord",
    "PassResult",
    "Pipeline",
    "PipelineResult",
    "available_passes",
    "build_passes",
    "create_pass",
    "get_pass",
    "native_bf16_cpu",
    "module_path",
    "op_histogram",
    "option_help",
    "output_names",
    "read_tensors",
    "register_pass",
    "replace_outputs",
    "run_pipeline",
    "search_space",
    "set_meta",
    "set_output_names",
]
