"""From a model id or path to a loaded model, its task, sample inputs and the captured FX program."""

from fxbench.models.capture import CapturedProgram, GraphFault, ReexportError, capture, export_graph_module, failing_node, run_module, unlift
from fxbench.models.inputs import DynamicDims, SampleInputs, make_inputs, max_positions
from fxbench.models.loading import DEMO_MODEL_ID, MODULE_SOURCE, LoadedModel, LoadOptions, demo_model_path, from_module, load_model
from fxbench.models.sentences import SENTENCES
from fxbench.models.tasks import TASKS, infer_task

__all__ = [
    "DEMO_MODEL_ID",
    "MODULE_SOURCE",
    "CapturedProgram",
    "DynamicDims",
    "LoadOptions",
    "GraphFault",
    "LoadedModel",
    "ReexportError",
    "SENTENCES",
    "SampleInputs",
    "TASKS",
    "capture",
    "demo_model_path",
    "export_graph_module",
    "from_module",
    "failing_node",
    "infer_task",
    "load_model",
    "make_inputs",
    "max_positions",
    "run_module",
    "unlift",
]
