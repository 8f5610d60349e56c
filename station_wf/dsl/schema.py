"""The JSON Schema of workflow files (draft 2020-12), for editors and `GET /api/v1/workflows/schema`.

The schema describes files as written, in both dialects (DESIGN 4). It is documentation and editor
support: the loader stays the authority, and it also checks what a schema cannot (transitions naming
states of the same scope, reachability, Starlark and template syntax, paths).
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Any

__all__ = ["SCHEMA_RESOURCE", "workflow_json_schema"]

SCHEMA_RESOURCE = "workflow.schema.json"


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    text = resources.files("station_wf.dsl").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def workflow_json_schema() -> dict[str, Any]:
    """A fresh copy of the schema (callers may change theirs without touching the cached one)."""
    return copy.deepcopy(_schema())
