"""One session type per backend behind one interface: named inputs in, the capture's outputs out."""

from fxbench.runtime.sessions.base import Bound, Session, SessionOptions, cuda_unavailable_reason, require_device
from fxbench.runtime.sessions.onnxruntime import OrtSession
from fxbench.runtime.sessions.tensorrt import TensorRTSession, sidecar_path
from fxbench.runtime.sessions.torch_backends import AotiSession, CompileSession, EagerSession, ProgramSession

__all__ = [
    "AotiSession",
    "Bound",
    "CompileSession",
    "EagerSession",
    "OrtSession",
    "ProgramSession",
    "Session",
    "SessionOptions",
    "TensorRTSession",
    "cuda_unavailable_reason",
    "require_device",
    "sidecar_path",
]
