"""What the API shows of governance (issue 18): the audit log of policy denials, the policies in force."""

from __future__ import annotations

from typing import Any

from station_wf.errors import invalid
from station_wf.governance import policies
from station_wf.store import governance_denials


def _denial(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "at": row["at"], "principal": row["principal"], "action": row["action"],
            "workflowId": row["workflow_id"], "runId": row["run_id"], "policy": row["policy"], "message": row["message"]}


async def denials(readers: Any, limit: int, before: int | None) -> dict[str, Any]:
    """Newest first; `nextBefore` pages on."""
    if not 1 <= limit <= 1000:
        raise invalid("limit must be between 1 and 1000", {"limit": limit})
    rows = await governance_denials.recent(readers, limit, before)
    return {"denials": [_denial(r) for r in rows], "nextBefore": rows[-1]["id"] if len(rows) == limit else None}


def policies_status() -> dict[str, Any]:
    current = policies.POLICIES.current()
    return {"file": str(policies.POLICIES.path) if policies.POLICIES.path else None,
            "loaded": current.source is not None, "actions": sorted(current.rules), "error": policies.POLICIES.error}
