-- Approvals gain what deciding needs; signals are buffered per run; idempotency keys replay responses.
ALTER TABLE workflow_approvals ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE workflow_approvals ADD COLUMN workflow_id TEXT;
ALTER TABLE workflow_approvals ADD COLUMN state_name TEXT;
ALTER TABLE workflow_approvals ADD COLUMN on_reject TEXT NOT NULL DEFAULT 'fail';
ALTER TABLE workflow_approvals ADD COLUMN on_timeout TEXT NOT NULL DEFAULT 'fail';

CREATE TABLE workflow_signals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,   -- delivery order
    run_id      TEXT NOT NULL REFERENCES workflow_runs (run_id),
    name        TEXT NOT NULL,
    payload     TEXT NOT NULL DEFAULT 'null',
    sender      TEXT,
    received_at TEXT NOT NULL,
    consumed_by TEXT,                                 -- step id of the wait that took it
    consumed_at TEXT
);
CREATE INDEX workflow_signals_pending ON workflow_signals (run_id, name, id) WHERE consumed_by IS NULL;

CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,       -- the route (and principal) the key was used on
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status       INTEGER,             -- NULL while the first request is still being answered
    response     TEXT,
    created_at   REAL NOT NULL,       -- unix seconds: keys live 24 h
    PRIMARY KEY (scope, key)
);
