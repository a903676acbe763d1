"""Reports: JSON that tools read (and, with the benchmark, markdown and HTML that people read)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["jsonable", "write_json"]


def jsonable(obj: Any) -> Any:
    """Plain JSON types: dataclasses to dicts, tuples to lists, inf/nan to strings, paths to str."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        return jsonable(to_dict() if callable(to_dict) else dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf"))
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def write_json(data: Any, path: Path) -> Path:
    Path(path).write_text(json.dumps(jsonable(data), indent=2) + "\n", encoding="utf-8")
    return Path(path)
