"""The record every exporter leaves for an artifact, and how an output folder lists its artifacts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ARTIFACT_KINDS", "Artifact", "read_artifacts"]

# kind -> what it is; the kind decides which bench backends run an artifact. File names inside an
# output folder are fixed per target and device (the table in targets.py; the program's in
# program.py) so that `fxbench bench DIR` finds them.
ARTIFACT_KINDS = {
    "program": "the optimized torch.export program (torch.export.load)",
    "onnx": "ONNX exported with torch.onnx (dynamo), checked in ONNX Runtime",
    "onnx-ort": "ONNX Runtime's offline-optimized ONNX for one execution provider",
    "onnx-int8": "ONNX Runtime's dynamic int8 quantization of the ONNX export (the baseline for fxbench's int8)",
    "tensorrt": "a serialized TensorRT engine with its JSON sidecar",
    "aoti": "an AOTInductor package (torch._inductor.aoti_load_package)",
}


@dataclass(frozen=True)
class Artifact:
    """One deployable file and the evidence that it gives the same answers as eager PyTorch."""

    kind: str  # a key of ARTIFACT_KINDS
    file: str  # file name inside the output folder
    device: str  # "cpu", "cuda" or "any"
    precision: str  # the precision of the program it came from: fp32, fp16, bf16, int8, fp8
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    # check name ("sample", "batch3_seq40", ...) -> numerics.Parity.to_dict() against eager fp32
    parity: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # exporter-specific: opset, fusions, profiles...
    seconds: float = 0.0  # time the export took

    def __post_init__(self) -> None:
        if self.kind not in ARTIFACT_KINDS:
            raise ValueError(f"unknown artifact kind {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        data = dict(data)
        data["input_names"] = tuple(data.get("input_names", ()))
        data["output_names"] = tuple(data.get("output_names", ()))
        return cls(**data)


def read_artifacts(folder: Path) -> list[Artifact]:
    """The artifacts an output folder's report.json lists (`report["artifacts"]`, a list of records)."""
    report = json.loads((Path(folder) / "report.json").read_text(encoding="utf-8"))
    return [Artifact.from_dict(a) for a in report.get("artifacts", [])]
