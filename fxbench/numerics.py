"""Parity metrics between a transformed program's outputs and eager PyTorch, and tolerances per precision."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["OutputParity", "Parity", "Tolerance", "compare", "cosine", "PRECISIONS"]

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "fp8")


def _as_float64(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    return x.detach().to("cpu", torch.float64)


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two tensors flattened; 1.0 when both are all zeros."""
    a64, b64 = _as_float64(a).flatten(), _as_float64(b).flatten()
    na, nb = a64.norm().item(), b64.norm().item()
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(torch.dot(a64, b64).item() / (na * nb))


@dataclass(frozen=True)
class OutputParity:
    """Agreement of one output with its reference.

    `max_rel_error` is the largest absolute error divided by the reference's largest magnitude: an
    element-wise ratio explodes at the reference's zeros, which every activation has.
    """

    name: str
    max_abs_error: float
    max_rel_error: float
    cosine: float
    finite: bool


@dataclass(frozen=True)
class Parity:
    """Agreement of all floating outputs; the summary fields are the worst over outputs."""

    max_abs_error: float
    max_rel_error: float
    cosine: float
    finite: bool
    outputs: tuple[OutputParity, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Parity:
        """From `to_dict`'s form as JSON keeps it: a null error is one that was not finite."""
        def num(v: Any) -> float:
            return math.inf if v is None else float(v)

        outputs = tuple(OutputParity(o["name"], num(o["max_abs_error"]), num(o["max_rel_error"]), num(o["cosine"]), bool(o["finite"]))
                        for o in data.get("outputs") or ())
        return cls(num(data["max_abs_error"]), num(data["max_rel_error"]), num(data["cosine"]), bool(data["finite"]), outputs)

    def brief(self) -> str:
        return f"max_abs={self.max_abs_error:.3g} max_rel={self.max_rel_error:.3g} cos={self.cosine:.6f}"


def compare(
    outputs: Sequence[Any] | Mapping[str, Any],
    reference: Sequence[Any] | Mapping[str, Any],
    names: Sequence[str] | None = None,
) -> Parity:
    """Compare outputs with reference outputs, position by position (or by name for mappings).

    Integer and boolean outputs must match exactly (counted as max_abs_error); floating ones are
    compared in float64.
    """
    if isinstance(reference, Mapping):
        names = list(reference)
        ref_list = [reference[n] for n in names]
        out_list = [outputs[n] for n in names] if isinstance(outputs, Mapping) else list(outputs)
    else:
        ref_list, out_list = list(reference), list(outputs)
        names = list(names) if names is not None else [f"output_{i}" for i in range(len(ref_list))]
    if len(out_list) != len(ref_list):
        raise ValueError(f"{len(out_list)} outputs against {len(ref_list)} reference outputs")

    per_output = []
    for name, out, ref in zip(names, out_list, ref_list):
        o64, r64 = _as_float64(out), _as_float64(ref)
        if o64.shape != r64.shape:
            raise ValueError(f"output {name!r}: shape {tuple(o64.shape)} against reference {tuple(r64.shape)}")
        finite = bool(torch.isfinite(o64).all().item())
        if o64.numel() == 0:
            per_output.append(OutputParity(name, 0.0, 0.0, 1.0, True))
            continue
        diff = (o64 - r64).abs()
        max_abs = float(diff.max().item()) if finite else math.inf
        scale = float(r64.abs().max().item())
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
        per_output.append(OutputParity(name, max_abs, max_rel, cosine(o64, r64) if finite else 0.0, finite))

    if not per_output:
        return Parity(0.0, 0.0, 1.0, True, ())
    return Parity(
        max_abs_error=max(p.max_abs_error for p in per_output),
        max_rel_error=max(p.max_rel_error for p in per_output),
        cosine=min(p.cosine for p in per_output),
        finite=all(p.finite for p in per_output),
        outputs=tuple(per_output),
    )


@dataclass(frozen=True)
class Tolerance:
    """What a program must meet against eager fp32: the worst output's cosine and relative error."""

    min_cosine: float
    max_rel_error: float

    # Chosen from what each precision does to a 6-layer transformer's activations on real inputs:
    # fp32 rewrites only reorder float sums; fp16 and bf16 keep 10 and 7 mantissa bits; int8 and fp8
    # keep far fewer, so only the direction of the output is held to account.
    _BY_PRECISION = {
        "fp32": (0.99999, 1e-3),
        "bf16": (0.995, 1e-1),
        "fp16": (0.999, 5e-2),
        "int8": (0.98, math.inf),
        "fp8": (0.97, math.inf),
    }

    @classmethod
    def for_precision(cls, precision: str) -> Tolerance:
        try:
            min_cos, max_rel = cls._BY_PRECISION[precision]
        except KeyError:
            raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}") from None
        return cls(min_cos, max_rel)

    def loosest(self, other: Tolerance) -> Tolerance:
        return Tolerance(min(self.min_cosine, other.min_cosine), max(self.max_rel_error, other.max_rel_error))

    def accepts(self, parity: Parity) -> bool:
        return parity.finite and parity.cosine >= self.min_cosine and parity.max_rel_error <= self.max_rel_error

    def explain(self, parity: Parity) -> str:
        """Why parity fails this tolerance, in a few words (empty when it passes)."""
        if not parity.finite:
            bad = [p.name for p in parity.outputs if not p.finite]
            return f"non-finite values in {', '.join(bad)}"
        reasons = []
        if parity.cosine < self.min_cosine:
            reasons.append(f"cosine {parity.cosine:.6f} < {self.min_cosine}")
        if parity.max_rel_error > self.max_rel_error:
            reasons.append(f"max relative error {parity.max_rel_error:.3g} > {self.max_rel_error:g}")
        return "; ".join(reasons)

    def to_dict(self) -> dict[str, float]:
        return {"min_cosine": self.min_cosine, "max_rel_error": self.max_rel_error}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tolerance:
        """From `to_dict`'s form as JSON keeps it (an unbounded error is null; older reports wrote "inf")."""
        bound = data.get("max_rel_error")
        return cls(float(data["min_cosine"]), math.inf if bound is None else float(bound))
