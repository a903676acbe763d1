"""From an optimized program to deployable artifacts: the torch.export archive, ONNX, TensorRT, AOTInductor."""

from fxbench.exporters.program import load_program, save_program

__all__ = ["load_program", "save_program"]
