"""From an optimized program to deployable artifacts: the torch.export archive, ONNX, TensorRT, AOTInductor."""

from fxbench.exporters.base import ARTIFACT_KINDS, Artifact, read_artifacts
from fxbench.exporters.program import load_program, save_program

__all__ = ["ARTIFACT_KINDS", "Artifact", "load_program", "read_artifacts", "save_program"]
