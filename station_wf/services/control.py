"""ControlService: approvals, signals, pause/resume/cancel, as the API and CLI see them; and the
approval webhooks' delivery log (Station's audit view)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from typing import Any

from station_wf.engine import control as ec
from station_wf.engine.approval_webhooks import deliveries_to_api
from station_wf.errors import ServiceError, invalid, not_found
from station_wf.governance import policies
from station_wf.principals import Principal, may_decide
from station_wf.services.runs import RunService
from station_wf.store import approval_lookup as approvals
from station_wf.store import webhooks
from station_wf.store.db import Readers, Writer
from station_wf.store.definitions import DefinitionCache

SIGNAL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def approval_to_api(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["approval_id"], "runId": row["run_id"], "stepId": row["step_id"], "attempt": row["attempt"],
        "workflowId": row["workflow_id"], "stateName": row["state_name"], "status": row["status"],
        "message": row["message"], "summary": json.loads(row["summary"]) if row["summary"] else None,
        "approvers": json.loads(row["approvers"]) if row["approvers"] else [],
        "onReject": row["on_reject"], "onTimeout": row["on_timeout"],
        "decidedBy": row["decided_by"], "comment": row["comment"],
        "createdAt": row["created_at"], "expiresAt": row["expires_at"], "decidedAt": row["decided_at"],
    }


class ControlService:
    def __init__(self, writer: Writer, readers: Readers, definitions: DefinitionCache, runs: RunService,
                 on_commit: Callable[[], None], cancel_executions: Callable[[str], int]) -> None:
        self.writer = writer
        self.readers = readers
        self.definitions = definitions
        self.runs = runs
        self.on_commit = on_commit
        self.cancel_executions = cancel_executions

    async def _tx(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            result = await self.writer.run(fn)
        except policies.PolicyDenied as denied:  # issue 18: the refusal is audited in a transaction of its own
            denial = denied.denial
            await self.writer.run(lambda c: policies.record(c, denial))
            raise
        except ec.Missing as exc:
            raise ServiceError(404, "not_found", str(exc)) from None
        except ec.Conflict as exc:
            raise ServiceError(409, "conflict", str(exc), exc.current) from None
        self.on_commit()
        return result

    # -- approvals --------------------------------------------------------------------------------
    async def list_approvals(self, status: str | None, workflow_id: str | None, run_id: str | None = None) -> list[dict[str, Any]]:
        return [approval_to_api(r) for r in await approvals.list_approvals(self.readers, status, workflow_id, run_id)]

    async def approval(self, approval_id: str) -> dict[str, Any]:
        """One approval by its id alone (Station's routes): 404 when unknown."""
        return approval_to_api(await self._approval_row(approval_id))

    async def approval_run(self, approval_id: str) -> str:
        """The run an approval belongs to: 404 when unknown."""
        return str((await self._approval_row(approval_id))["run_id"])

    async def deliveries(self, approval_id: str) -> list[dict[str, Any]]:
        """The approval's webhook deliveries with every attempt; 404 for an unknown approval."""
        await self._approval_row(approval_id)
        rows = await webhooks.deliveries_for(self.readers, approval_id)
        tries = await webhooks.attempts_for(self.readers, [r["delivery_id"] for r in rows])
        return deliveries_to_api(rows, tries)

    async def _approval_row(self, approval_id: str) -> sqlite3.Row:
        row = await approvals.approval_by_id(self.readers, approval_id)
        if row is None:
            raise not_found("approval", approval_id)
        return row

    async def run_approvals(self, run_id: str) -> list[dict[str, Any]]:
        await self.runs.get(run_id)  # 404 for an unknown run
        return await self.list_approvals(None, None, run_id)

    async def decide(self, run_id: str, approval_id: str, approve: bool, principal: Principal, comment: str | None) -> dict[str, Any]:
        row = await approvals.approval_of_run(self.readers, run_id, approval_id)
        if row is None:
            raise not_found("approval", approval_id)
        approvers = json.loads(row["approvers"]) if row["approvers"] else []
        if not may_decide(principal, approvers):
            raise ServiceError(403, "forbidden", f"{principal.name!r} is not an approver of this step", {"approvers": approvers})
        if comment is not None and not isinstance(comment, str):
            raise invalid("comment/reason must be a string")
        decision = "approved" if approve else "rejected"
        try:
            await self._tx(lambda c: ec.decide_approval(c, self.definitions, run_id, approval_id, decision, principal.name, comment))
        except ServiceError as exc:
            current = await approvals.approval_by_id(self.readers, approval_id)
            if exc.status != 409 or current is None or (current["status"], current["decided_by"]) != (decision, principal.name):
                raise
            # The same principal asking for the decision already recorded (a retry): the same answer.
        fresh = await approvals.approval_by_id(self.readers, approval_id)
        assert fresh is not None
        return approval_to_api(fresh)

    # -- signals ----------------------------------------------------------------------------------
    async def signal(self, run_id: str, name: Any, payload: Any, principal: Principal, effect_id: str | None = None) -> dict[str, Any]:
        if not isinstance(name, str) or not SIGNAL_NAME.match(name):
            raise invalid("signal name must be 1-128 letters, digits, '_' or '-'", {"name": name})
        def tx(c: sqlite3.Connection) -> Any:
            policies.guard(c, run_id, lambda run: policies.check_signal(c, principal, run, name, payload))  # issue 18
            return ec.deliver_signal(c, self.definitions, run_id, name, payload, principal.name, effect_id)

        _, info = await self._tx(tx)
        return info

    # -- run control ------------------------------------------------------------------------------
    async def pause(self, run_id: str, principal: Principal) -> dict[str, Any]:
        await self._tx(lambda c: ec.pause(c, run_id, principal.name))
        return await self.runs.get(run_id)

    async def resume(self, run_id: str, principal: Principal) -> dict[str, Any]:
        await self._tx(lambda c: ec.resume(c, self.definitions, run_id, principal.name))
        return await self.runs.get(run_id)

    async def redrive(self, run_id: str, principal: Principal) -> dict[str, Any]:
        """Continue a FAILED, TIMED_OUT or CANCELLED run in place: 409 with the reason when it cannot be."""
        await self._tx(lambda c: ec.redrive(c, self.definitions, run_id, principal.name))
        return await self.runs.get(run_id)

    async def cancel(self, run_id: str, reason: Any, principal: Principal) -> dict[str, Any]:
        if reason is not None and not isinstance(reason, str):
            raise invalid("reason must be a string")
        def tx(c: sqlite3.Connection) -> Any:
            policies.guard(c, run_id, lambda run: policies.check_cancel(principal, run, reason))  # issue 18
            return ec.cancel(c, self.definitions, run_id, reason, principal.name)

        await self._tx(tx)
        self.cancel_executions(run_id)  # after the commit: the late results find the steps closed
        return await self.runs.get(run_id)
