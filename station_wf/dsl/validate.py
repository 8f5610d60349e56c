"""`POST /api/v1/workflows/validate`: every problem of a definition text, as data rather than an exception.

The loader is the one authority, so this is a thin shape over `parse_definition`: the API, the CLI and
`sync` can never disagree about what is valid.
"""

from __future__ import annotations

from typing import Any

from station_wf.dsl.loader import parse_definition
from station_wf.dsl.problems import DefinitionError

__all__ = ["validate_text"]


def validate_text(text: str, source: str | None = None) -> dict[str, Any]:
    """Validate YAML or JSON text: `{"valid", "errors": [{file, line, column, path, message}], "workflowId"}`.

    `workflowId` is the definition's `id` whenever it could be read, even when the definition is invalid.
    `source` names the text in errors; a name ending in `.json` makes the text strict JSON.
    """
    try:
        definition = parse_definition(text, source)
    except DefinitionError as exc:
        return {
            "valid": False,
            "errors": [problem.to_dict() for problem in exc.problems],
            "workflowId": exc.workflow_id,
        }
    return {"valid": True, "errors": [], "workflowId": definition["id"],
            "dialect": getattr(definition, "dialect", "prd"), "dialectReason": getattr(definition, "dialect_reason", ""),
            "warnings": [w.to_dict() for w in getattr(definition, "warnings", ())]}
