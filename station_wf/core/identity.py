"""Deterministic identities (invariant 4): the same run, state, branch and index always name the same step.

The NATS names built from them (subjects, message ids) are `station_wf/protocol.py`'s."""

from __future__ import annotations

import hashlib
import uuid


def step_id(run_id: str, state_name: str, branch_path: str = "", foreach_index: int | None = None) -> str:
    """`hash(run_id, state_name, branch_path, foreach_index)`: 20 hex chars, safe in a NATS subject token."""
    index = "" if foreach_index is None else str(foreach_index)
    material = "\x1f".join((run_id, state_name, branch_path, index)).encode()
    return hashlib.sha256(material).hexdigest()[:20]


def idempotency_key(run_id: str, step: str, attempt: int) -> str:
    """The key executors receive and pass on (`Idempotency-Key`): stable across redeliveries of one attempt."""
    return f"{run_id}:{step}:{attempt}"


_RUNS = uuid.UUID("6f1d2a52-6b7e-4c1e-9a43-5b3f0c7d2e10")  # the namespace of derived run ids


def child_run_id(run_id: str, step: str, attempt: int) -> str:
    """The run a `workflow.run` step attempt starts: derived from the step's identity, so a redelivered
    task finds the child it started instead of starting a second one."""
    return str(uuid.uuid5(_RUNS, f"child\x1f{run_id}\x1f{step}\x1f{attempt}"))


def successor_run_id(run_id: str) -> str:
    """The run a continue-as-new starts (a run continues at most once)."""
    return str(uuid.uuid5(_RUNS, f"continued\x1f{run_id}"))
