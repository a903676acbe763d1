"""report.json's versioned schema: the version every report carries, the JSON Schema file that
documents it (report.schema.json beside this module), and the check a reader makes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from fxbench.errors import FxbenchError

__all__ = ["SCHEMA_PATH", "SCHEMA_VERSION", "check_version", "load_schema", "validate_report"]

# MAJOR.MINOR: a minor version adds fields (readers of the same major read it); a major one changes
# or removes them. 1.0: the first versioned report (kind, null for non-finite numbers, raw samples);
# 1.1: optimize's `screen` and search candidates' `left_out`.
SCHEMA_VERSION = "1.1"
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


@cache
def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def check_version(data: Mapping[str, Any], where: str) -> None:
    """One error line when `data` is not a report this fxbench reads (no version, another major)."""
    version = data.get("schema_version")
    if not isinstance(version, str):
        raise FxbenchError(f"{where} has no schema_version (written before fxbench 0.2's versioned reports); rerun the command that wrote it")
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise FxbenchError(f"{where} follows report schema {version}; this fxbench reads {SCHEMA_VERSION.split('.')[0]}.x")


def validate_report(data: Any) -> None:
    """Validate a report.json document against the schema (needs `jsonschema`, a test dependency)."""
    import jsonschema

    jsonschema.validate(data, load_schema(), cls=jsonschema.Draft202012Validator)
