"""A run's unit of work inside one writer transaction: its row, open steps and writes kept in memory.

Why: a chain of inline steps (engine/commit.py) used to re-read the run (JSON-decoding context and
engine), its step, its open steps and signals, and write the run row, each event (an UPDATE ..
RETURNING for its seq, then an INSERT) and each step (a MAX(attempt) query, an INSERT, later an
UPDATE) per step: ~17 statements a step. The writer thread is the only writer of a run's rows, so
inside its transaction the unit *is* the truth: it loads the run once, applies every transition to
its in-memory copy (events get their seq here, a new step's attempt comes from the known attempts,
the derived status from the open steps), and `flush` writes the steps and events with executemany
and the run row with ONE UPDATE. What it wrote is staged in `run_cache` for the next transaction.

Rules for callers: create a unit, apply, flush, all inside one transaction, with no other write to
the same run's row, steps or events in between (`store/runs.py` functions that write them are used
before `load` or after `flush`).
"""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
from typing import Any

from station_wf.core import interpreter as ip
from station_wf.core import limits, model
from station_wf.core.identity import idempotency_key
from station_wf.deferral import after_commit
from station_wf.governance.settings import GOVERNANCE
from station_wf.protocol import step_task
from station_wf.store import approvals, context_patches, dialect, governance_slots, outbox, run_cache, timers
from station_wf.store import vocab as v
from station_wf.store.db import utcnow
from station_wf.store.dialect import per_dialect
from station_wf.store.jsontext import dumps, loads
from station_wf.telemetry.metrics import runs_finished_total

_COUNTERS = "SELECT status, version, event_seq, step_count FROM workflow_runs WHERE run_id = ?"
_STATE = per_dialect(lambda d: f"SELECT context, engine_state, {context_patches.patches_of_run(d)} AS context_patches "
                     "FROM workflow_runs WHERE run_id = ?")
_OPEN = f"SELECT * FROM workflow_run_steps WHERE run_id = ? AND status IN {v.OPEN_STEPS} ORDER BY id"
_ATTEMPTS = "SELECT step_id, MAX(attempt) FROM workflow_run_steps WHERE run_id = ? GROUP BY step_id"
_STEP_COLUMNS = ("run_id", "step_id", "state_name", "state_type", "branch_path", "foreach_index", "attempt", "try_number",
                 "status", "idempotency_key", "created_at", "output", "error", "input", "started_at", "completed_at")
_INSERT_STEP = (f"INSERT INTO workflow_run_steps ({', '.join(_STEP_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in _STEP_COLUMNS)})")
_INSERT_EVENT = ("INSERT INTO workflow_run_events (run_id, seq, type, step_id, payload, actor, created_at) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)")
_UPDATE_STEP = """UPDATE workflow_run_steps SET status = ?, output = COALESCE(?, output), error = COALESCE(?, error),
                   input = COALESCE(?, input), started_at = COALESCE(started_at, ?),
                   completed_at = CASE WHEN ? <> 0 THEN ? ELSE completed_at END
               WHERE run_id = ? AND step_id = ? AND attempt = ?"""
_OPEN_GUARD = f" AND status IN {v.OPEN_STEPS}"


def step_view(row: sqlite3.Row) -> model.StepView:
    return model.StepView(row["step_id"], row["state_name"], row["attempt"], row["branch_path"], row["foreach_index"],
                          row["status"], row["state_type"], row["try_number"] or 0, row["result"] is not None)


def load_state(conn: sqlite3.Connection, run_id: str, version: int) -> run_cache.Entry:
    """The run's decoded context and engine state at `version`: from the cache, else decoded from its
    row (and staged, so the next transaction of this group and, once committed, later ones reuse it)."""
    entry = run_cache.get(run_id, version)
    if entry is None:
        row = conn.execute(_STATE[dialect.of(conn)], (run_id,)).fetchone()
        patches = context_patches.parse(row["context_patches"])
        patch_bytes = sum(len(path) + len(value or "") + 8 for _, path, value in patches)
        blob = row["context"]
        entry = run_cache.Entry(version, context_patches.fold(loads(blob), patches), loads(row["engine_state"]),
                                None, len(blob) + patch_bytes, len(row["engine_state"]), len(blob), len(patches),
                                patch_bytes, patches[-1][0] if patches else 0)
        run_cache.stage(run_id, entry)
    return entry


def _patch_bound(size: int, old: Any, new: Any) -> int:
    """An upper bound of the context's JSON size after `old` became `new`, from their changed paths:
    for a transition that reports no write (a start, a caught error) but changes the context."""
    return size + sum(len(dumps(path)) + len(dumps(value)) + 8
                      for path, value in context_patches.diff(old, new) if value is not context_patches.GONE)


def _context_bound(size: int, t: model.Transition, payloads: list[str]) -> int | None:
    """An upper bound of the context's JSON size after `t`, without encoding it (None: none known).

    The interpreter changes the context only by writes it reports in `step.succeeded` events (a value
    at a path, `write`); each adds at most its value's text (inside the event's payload text), its
    path's keys and the punctuation of the objects made on the way. The cap is checked against this
    bound and the exact size is computed only when the bound reaches it, so a chain of inline steps
    over a large context encodes it once, at flush, not once per step."""
    grown = 0
    for event, text in zip(t.events, payloads, strict=True):
        write = event.payload.get("write") if event.type == "step.succeeded" else None
        if isinstance(write, dict) and write.get("scope") == "":
            paths = [write.get("path") or ""] + [p for p, _ in write.get("also", ())]
            grown += len(text) + sum(8 * len(str(p)) + 16 for p in paths)
    return size + grown if grown else None


def _engine_bound(size: int, old: dict[str, Any], t: model.Transition, payloads: list[str]) -> int:
    """An upper bound of the engine state's JSON size after `t`, without encoding all of it.

    What a transition adds to the engine state is either in its events (outputs written to scopes,
    a scope's `last`, caught errors) or a new scope or container record (encoded here, one by one);
    a finished iteration's data moves into its foreach's results as its scope is pruned. Slack per
    event and record covers statuses, counters and the paths in a record's lists."""
    new = t.engine or {}
    grown = sum(len(text) + 64 for text in payloads)
    old_scopes, old_records = old.get("scopes", {}), old.get("containers", {})
    for path, scope in new.get("scopes", {}).items():
        if path not in old_scopes:
            grown += len(dumps(scope)) + 3 * len(path) + 64
    for sid, record in new.get("containers", {}).items():
        if sid not in old_records:
            grown += len(dumps(record)) + 64
    return size + grown + 64 * (len(t.new_steps) + len(t.step_updates) + 1)


_signal_memo: dict[tuple[str, int], bool] = {}


def uses_signals(defn: dict[str, Any], workflow_id: str, version: int) -> bool:
    """Does the definition have a signal wait? Only then are a run's buffered signals read."""
    key = (workflow_id, version)
    found = _signal_memo.get(key)
    if found is None:
        found = _signal_memo[key] = '"signal.wait"' in dumps(defn)
    return found


class RunUnit:
    """One run inside one transaction (see the module doc)."""

    def __init__(self, run: Any, status: str, version: int, event_seq: int, step_count: int, entry: run_cache.Entry,
                 attempts: dict[str, int] | None, open_steps: dict[tuple[str, int], model.StepView]) -> None:
        self.run = run  # the caller's RunRow: identity, definition and traceparent
        self.run_id: str = run.run_id
        self.status = status
        self.version = version
        self.event_seq = event_seq
        self.step_count = step_count
        self.context = entry.context
        self.engine = entry.engine
        self.context_size, self.engine_size = entry.context_size, entry.engine_size
        self._stored = entry.context  # the context the database holds now (blob + patches): what flush diffs against
        self.blob_size, self.patch_rows, self.patch_bytes, self.patch_seq = (entry.blob_size, entry.patch_rows,
                                                                             entry.patch_bytes, entry.patch_seq)
        self.attempts = attempts
        self.open = open_steps
        self.signals: tuple[model.Signal, ...] | None = None
        self.applied = 0
        self.context_json: str | None = None  # text of `self.context` when it was written
        self.engine_json: str | None = None
        self._context_changed = False
        self._engine_changed = False
        self._sets: dict[str, Any] = {}
        self._events: list[tuple[Any, ...]] = []
        self._new_rows: dict[tuple[str, int], dict[str, Any]] = {}

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, conn: sqlite3.Connection, run: Any) -> RunUnit | None:
        """The run as the database holds it now (the decoded state from the cache when its version matches)."""
        row = conn.execute(_COUNTERS, (run.run_id,)).fetchone()
        if row is None:
            return None
        version = row["version"]
        entry = load_state(conn, run.run_id, version)
        attempts = {} if row["step_count"] == 0 else (None if entry.attempts is None else dict(entry.attempts))
        open_steps = {(r["step_id"], r["attempt"]): step_view(r) for r in conn.execute(_OPEN, (run.run_id,))}
        return cls(run, row["status"], version, row["event_seq"], row["step_count"], entry, attempts, open_steps)

    def state(self, conn: sqlite3.Connection, defn: dict[str, Any] | None = None) -> model.RunState:
        """Everything the interpreter may look at (buffered signals only for definitions that wait for one)."""
        if self.signals is None:
            wants = defn is None or uses_signals(defn, self.run.workflow_id, self.run.workflow_version)
            self.signals = tuple(model.Signal(r["id"], r["name"], loads(r["payload"]))
                                 for r in approvals.pending_signals(conn, self.run_id)) if wants else ()
        return model.RunState(self.run_id, self.context, self.engine, tuple(self.open.values()), utcnow(),
                              self.signals, rules=limits.LIMITS.rules)

    def step(self, step_id: str, attempt: int) -> model.StepView | None:
        """An open attempt of this run (None: closed or unknown)."""
        return self.open.get((step_id, attempt))

    # -- applying ----------------------------------------------------------------------------------
    def apply(self, conn: sqlite3.Connection, t: model.Transition, step: model.StepView | None = None,
              inline: list[tuple[str, int]] | None = None, *, checked: bool = True) -> int:
        """One transition onto the unit (see `store.runs.apply_transition`); returns the tasks enqueued."""
        now = utcnow()
        payloads = [dumps(e.payload) for e in t.events]  # encoded once: the row's text and the size bound
        context_json, context_size = self.context_json, self.context_size
        if t.context is not None and (t.context is not self.context or context_json is None):
            context_size = _context_bound(self.context_size, t, payloads)
            if context_size is None:
                context_size = _patch_bound(self.context_size, self.context, t.context)
            context_json = None
            if context_size > limits.LIMITS.max_context_bytes:
                context_json = dumps(t.context)  # the exact size decides (and is the text flush writes)
                context_size = len(context_json)
        engine_json, engine_size = self.engine_json, self.engine_size
        if t.engine is not None and (t.engine is not self.engine or engine_json is None):
            engine_json, engine_size = None, _engine_bound(self.engine_size, self.engine, t, payloads)
            if engine_size > limits.LIMITS.max_context_bytes:
                engine_json = dumps(t.engine)
                engine_size = len(engine_json)
        if checked:
            error = limits.exceeded(self.step_count, self.event_seq, len(t.new_steps), len(t.events) + len(t.new_steps),
                                    max(context_size if t.context is not None else 0,
                                        engine_size if t.engine is not None else 0))
            if error is not None:
                return self.apply(conn, ip.limit_exceeded(self.state(conn), step, error), step, checked=False)
        self.applied += 1
        for u in t.step_updates:
            self._update_step(conn, u, now)
        if t.context is not None:
            self.context, self.context_json, self._context_changed = t.context, context_json, True
            self.context_size = context_size
        if t.engine is not None:
            self.engine, self.engine_json, self._engine_changed = t.engine, engine_json, True
            self.engine_size = engine_size
        if t.new_steps:
            self.step_count += len(t.new_steps)
        if t.run_status is not None:
            self.status = t.run_status
            self._sets["status"] = t.run_status
            if t.run_status == model.RUNNING:
                self._sets.setdefault("started_at", now)
            if t.run_status in model.TERMINAL_RUN_STATUSES:
                self._sets["completed_at"] = now
        if t.reopen:
            self._sets["error"] = self._sets["completed_at"] = None
        if t.run_error is not None:
            self._sets["error"] = dumps(t.run_error)
        for event, text in zip(t.events, payloads, strict=True):
            self.event(event.type, event.payload, event.step_id, actor=event.actor, now=now, text=text)
        tasks = 0
        for new in t.new_steps:
            attempt, key = self._insert_step(conn, new, now)
            if new.reopened:  # a container continued by a redrive: open at once, its children carry on
                self._new_rows[(new.step_id, attempt)].update(status=model.RUNNING, started_at=now)
                self.open[(new.step_id, attempt)] = dataclasses.replace(self.open[(new.step_id, attempt)], status=model.RUNNING)
                self.event("step.scheduled", {"stateName": new.state_name, "stateType": new.state_type,
                                              "branchPath": new.branch_path, "foreachIndex": new.foreach_index,
                                              "attempt": attempt, "redrive": True}, new.step_id, now=now)
                self.event("step.started", {"attempt": attempt, "executor": new.state_type, "redrive": True},
                           new.step_id, now=now)
                continue
            self.event("step.scheduled",
                       {"stateName": new.state_name, "stateType": new.state_type, "branchPath": new.branch_path,
                        "foreachIndex": new.foreach_index, "attempt": attempt, "delaySeconds": new.delay_seconds or None},
                       new.step_id, now=now)
            if new.delay_seconds > 0:
                timers.add(conn, self.run_id, "retry", new.delay_seconds, new.step_id, attempt)
            elif inline is not None and new.inline:
                inline.append((new.step_id, attempt))
            else:
                self.enqueue(conn, new.step_id, attempt, key)
                tasks += 1
        for timer in t.timers:
            timers.add(conn, self.run_id, timer.kind, timer.delay_seconds, timer.step_id, timer.attempt, timer.payload)
        for a in t.approvals:
            approvals.insert(conn, a, self.run_id, self.run.workflow_id, now)
        for signal_id, consumer in t.consumed_signals:
            approvals.consume_signal(conn, signal_id, consumer, now)
        if t.consumed_signals and self.signals:
            gone = {sid for sid, _ in t.consumed_signals}
            self.signals = tuple(s for s in self.signals if s.id not in gone)
        if t.run_status in model.TERMINAL_RUN_STATUSES:
            after_commit(functools.partial(runs_finished_total.inc, workflow=self.run.workflow_id, status=t.run_status))
            governance_slots.release(conn, self.run_id, GOVERNANCE.max_concurrent_runs)  # issue 18: next queued run
        if self.status in model.TERMINAL_RUN_STATUSES:
            timers.close_for_run(conn, self.run_id, now)
            approvals.close_pending(conn, self.run_id, now)
        elif self.status in model.ACTIVE_RUN_STATUSES:
            derived = model.derive_status([s.status for s in self.open.values()
                                           if not (s.status == model.RUNNING and s.state_type in model.CONTAINER_TYPES)])
            if derived != self.status:
                self.status = self._sets["status"] = derived
        self._sets["updated_at"] = now
        return tasks

    def event(self, kind: str, payload: dict[str, Any], step: str | None = None, actor: str | None = None,
              now: str | None = None, text: str | None = None) -> int:
        """The next gap-free seq, assigned here (invariant 7: the writer owns the run row); written at flush."""
        self.event_seq += 1
        self._events.append((self.run_id, self.event_seq, kind, step, dumps(payload) if text is None else text, actor,
                             now or utcnow()))
        return self.event_seq

    def enqueue(self, conn: sqlite3.Connection, step: str, attempt: int, key: str | None = None) -> None:
        """The attempt's task in the outbox (published after this transaction commits)."""
        outbox.enqueue_task(conn, step_task(self.run_id, step, attempt, key or idempotency_key(self.run_id, step, attempt),
                                            self.run.traceparent, None))

    def _update_step(self, conn: sqlite3.Connection, u: model.StepUpdate, now: str) -> None:
        key = (u.step_id, u.attempt)
        done = u.status not in model.OPEN_STEP_STATUSES
        row = self._new_rows.get(key)
        if row is not None:  # created in this transaction, not written yet: change it in memory
            if u.only_if_open and row["status"] not in model.OPEN_STEP_STATUSES:
                return
            row["status"] = u.status
            for column, value in (("output", u.output), ("error", u.error), ("input", u.input)):
                if value is not None:
                    row[column] = dumps(value)
            row["started_at"] = row["started_at"] or now
            if done:
                row["completed_at"] = now
        else:
            if u.only_if_open and key not in self.open:
                return  # closed already: the open set is complete for this run
            conn.execute(_UPDATE_STEP + (_OPEN_GUARD if u.only_if_open else ""),
                         (u.status, None if u.output is None else dumps(u.output), None if u.error is None else dumps(u.error),
                          None if u.input is None else dumps(u.input), now, done, now, self.run_id, u.step_id, u.attempt))
        view = self.open.get(key)
        if done:
            self.open.pop(key, None)
        elif view is not None:
            self.open[key] = dataclasses.replace(view, status=u.status)
        elif row is None:  # a closed attempt made open again: read it back
            fresh = conn.execute("SELECT * FROM workflow_run_steps WHERE run_id = ? AND step_id = ? AND attempt = ?",
                                 (self.run_id, u.step_id, u.attempt)).fetchone()
            if fresh is not None:
                self.open[key] = step_view(fresh)

    def _insert_step(self, conn: sqlite3.Connection, new: model.NewStep, now: str) -> tuple[int, str]:
        """The step's next attempt; a state visited again (a loop) continues the attempt count."""
        if self.attempts is None:
            self.attempts = {r[0]: r[1] for r in conn.execute(_ATTEMPTS, (self.run_id,))}
        last = self.attempts.get(new.step_id)
        attempt = new.attempt if last is None else max(new.attempt, last + 1)
        self.attempts[new.step_id] = attempt
        key = idempotency_key(self.run_id, new.step_id, attempt)
        self._new_rows[(new.step_id, attempt)] = {
            "run_id": self.run_id, "step_id": new.step_id, "state_name": new.state_name, "state_type": new.state_type,
            "branch_path": new.branch_path, "foreach_index": new.foreach_index, "attempt": attempt,
            "try_number": new.attempt, "status": model.PENDING, "idempotency_key": key, "created_at": now,
            "output": None, "error": None, "input": None, "started_at": None, "completed_at": None}
        self.open[(new.step_id, attempt)] = model.StepView(new.step_id, new.state_name, attempt, new.branch_path,
                                                           new.foreach_index, model.PENDING, new.state_type, new.attempt, False)
        return attempt, key

    # -- writing -----------------------------------------------------------------------------------
    def flush(self, conn: sqlite3.Connection) -> None:
        """Write what the applied transitions changed: steps and events in bulk, the run row once."""
        if self._new_rows:
            conn.executemany(_INSERT_STEP, [tuple(r[c] for c in _STEP_COLUMNS) for r in self._new_rows.values()])
            self._new_rows = {}
        if self._events:
            conn.executemany(_INSERT_EVENT, self._events)
            self._events = []
        if not self.applied:
            return
        sets = ["version = version + ?", "event_seq = ?", "step_count = ?"]
        params: list[Any] = [self.applied, self.event_seq, self.step_count]
        if self._context_changed or (self.patch_rows and self.status in model.TERMINAL_RUN_STATUSES):
            blob = self._write_context(conn)
            if blob is not None:
                sets.append("context = ?")
                params.append(blob)
        if self._engine_changed:
            if self.engine_json is None:
                self.engine_json = dumps(self.engine)
                self.engine_size = len(self.engine_json)
            sets.append("engine_state = ?")
            params.append(self.engine_json)
        for column, value in self._sets.items():
            sets.append(f"{column} = COALESCE({column}, ?)" if column == "started_at" else f"{column} = ?")
            params.append(value)
        conn.execute(f"UPDATE workflow_runs SET {', '.join(sets)} WHERE run_id = ?", (*params, self.run_id))
        self.version += self.applied
        self.applied = 0
        self._sets = {}
        self._context_changed = self._engine_changed = False
        run_cache.stage(self.run_id, run_cache.Entry(self.version, self.context, self.engine,
                                                     None if self.attempts is None else dict(self.attempts),
                                                     self.context_size, self.engine_size, self.blob_size,
                                                     self.patch_rows, self.patch_bytes, self.patch_seq))

    def _write_context(self, conn: sqlite3.Connection) -> str | None:
        """What the context changed since the database last had it, as patch rows; or the whole blob
        (returned, for the run UPDATE; the patches deleted) when the patches outgrow it or the run ends."""
        rows = context_patches.rows(self.run_id, self.patch_seq + 1, context_patches.diff(self._stored, self.context))
        self._stored = self.context
        added = sum(len(r[2]) + len(r[3] or "") + 8 for r in rows)
        if (self.status not in model.TERMINAL_RUN_STATUSES and self.patch_rows + len(rows) <= context_patches.COMPACT_ROWS
                and self.patch_bytes + added <= self.blob_size * context_patches.COMPACT_FRACTION):
            if rows:
                context_patches.append(conn, rows)
                self.patch_rows, self.patch_bytes, self.patch_seq = (self.patch_rows + len(rows), self.patch_bytes + added,
                                                                     self.patch_seq + len(rows))
            return None
        if self.context_json is None:
            self.context_json = dumps(self.context)
        self.context_size = self.blob_size = len(self.context_json)
        if self.patch_rows:
            context_patches.drop(conn, self.run_id)
        self.patch_rows = self.patch_bytes = self.patch_seq = 0
        return self.context_json
