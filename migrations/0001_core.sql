-- Core schema: definitions, runs, steps, the append-only event log, approvals, outbox, timers.
-- Times are ISO-8601 UTC text (millisecond precision) except timers.due_at (unix seconds, for range scans).

CREATE TABLE workflow_definitions (
    workflow_id   TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    version_label TEXT,
    name          TEXT,
    description   TEXT,
    content_hash  TEXT    NOT NULL,
    source        TEXT    NOT NULL CHECK (source IN ('file', 'api')),
    source_file   TEXT,
    environment   TEXT,
    status        TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    definition    TEXT    NOT NULL,          -- normalized JSON the engine runs
    raw           TEXT,                      -- the text as written (YAML or JSON)
    created_at    TEXT    NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE workflow_runs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,   -- cursor order for listing
    run_id           TEXT    NOT NULL UNIQUE,
    workflow_id      TEXT    NOT NULL,
    workflow_version INTEGER NOT NULL,
    content_hash     TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    input            TEXT    NOT NULL,
    context          TEXT    NOT NULL,
    error            TEXT,
    version          INTEGER NOT NULL DEFAULT 0,          -- optimistic concurrency for API writes
    event_seq        INTEGER NOT NULL DEFAULT 0,          -- last assigned event seq (gap-free)
    traceparent      TEXT,
    created_at       TEXT    NOT NULL,
    started_at       TEXT,
    updated_at       TEXT    NOT NULL,
    completed_at     TEXT,
    FOREIGN KEY (workflow_id, workflow_version) REFERENCES workflow_definitions (workflow_id, version)
);
CREATE INDEX workflow_runs_by_workflow ON workflow_runs (workflow_id, id);
CREATE INDEX workflow_runs_by_status ON workflow_runs (status, id);

CREATE TABLE workflow_run_steps (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id          TEXT    NOT NULL REFERENCES workflow_runs (run_id),
    step_id         TEXT    NOT NULL,
    state_name      TEXT    NOT NULL,
    state_type      TEXT    NOT NULL,
    branch_path     TEXT    NOT NULL DEFAULT '',
    foreach_index   INTEGER,
    attempt         INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    executor        TEXT,
    idempotency_key TEXT    NOT NULL,
    input           TEXT,
    output          TEXT,
    error           TEXT,
    created_at      TEXT    NOT NULL,
    started_at      TEXT,
    completed_at    TEXT,
    UNIQUE (run_id, step_id, attempt)
);
CREATE INDEX workflow_run_steps_open ON workflow_run_steps (status, run_id)
    WHERE status IN ('PENDING', 'RUNNING');

CREATE TABLE workflow_run_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,          -- global order, the event relay's cursor
    run_id     TEXT    NOT NULL REFERENCES workflow_runs (run_id),
    seq        INTEGER NOT NULL,
    type       TEXT    NOT NULL,
    step_id    TEXT,
    payload    TEXT    NOT NULL DEFAULT '{}',
    actor      TEXT,
    created_at TEXT    NOT NULL,
    UNIQUE (run_id, seq)
);

CREATE TABLE workflow_approvals (
    approval_id TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES workflow_runs (run_id),
    step_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    message     TEXT,
    summary     TEXT,
    approvers   TEXT,
    decided_by  TEXT,
    comment     TEXT,
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    decided_at  TEXT
);
CREATE INDEX workflow_approvals_by_run ON workflow_approvals (run_id);
CREATE INDEX workflow_approvals_by_status ON workflow_approvals (status);

CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    subject    TEXT NOT NULL,
    msg_id     TEXT NOT NULL,
    payload    TEXT NOT NULL,
    headers    TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
);

CREATE TABLE timers (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT NOT NULL REFERENCES workflow_runs (run_id),
    step_id    TEXT,
    kind       TEXT NOT NULL,
    due_at     REAL NOT NULL,
    payload    TEXT NOT NULL DEFAULT '{}',
    fired_at   TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX timers_due ON timers (due_at) WHERE fired_at IS NULL;

-- Cursors of relays that publish from a table rather than the outbox (the event relay).
CREATE TABLE relay_cursors (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
