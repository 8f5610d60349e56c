-- Cron schedules from workflow definitions (a top-level `schedules:` list, or Station's `type: cron`).
CREATE TABLE workflow_schedules (
    schedule_id  TEXT PRIMARY KEY,              -- <workflow id>:<index in the definition>
    workflow_id  TEXT    NOT NULL,
    idx          INTEGER NOT NULL,
    cron         TEXT    NOT NULL,
    timezone     TEXT    NOT NULL,
    input        TEXT    NOT NULL DEFAULT '{}',
    defined      INTEGER NOT NULL DEFAULT 1,    -- still in the latest definition
    enabled      INTEGER NOT NULL DEFAULT 1,    -- operator switch (API)
    last_fire_at REAL    NOT NULL,              -- the last tick that started a run (unix seconds)
    last_run_id  TEXT,
    last_error   TEXT,
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL
);
CREATE INDEX workflow_schedules_by_workflow ON workflow_schedules (workflow_id);
