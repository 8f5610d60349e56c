-- Approval webhooks (Station's docs/station/workflow-webhooks.md): a durable delivery queue filled from
-- the event log by a cursor, and one row per delivery attempt (Station's notification audit log).
CREATE TABLE webhook_cursor (
    name     TEXT PRIMARY KEY,
    event_id INTEGER NOT NULL              -- the last workflow_run_events.id turned into deliveries
);

CREATE TABLE webhook_deliveries (
    delivery_id  TEXT PRIMARY KEY,         -- "<event id>:<url index>": one delivery per event and URL
    event_id     INTEGER NOT NULL,
    approval_id  TEXT,
    run_id       TEXT NOT NULL,
    event        TEXT NOT NULL,            -- approval.requested | approval.decided | approval.timed_out
    url          TEXT NOT NULL,
    payload      TEXT NOT NULL,            -- the exact JSON body sent (and signed)
    status       TEXT NOT NULL,            -- pending | delivered | failed
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,            -- unix seconds: when the next attempt is due
    last_status  INTEGER,
    last_error   TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_approval ON webhook_deliveries (approval_id);

CREATE TABLE webhook_attempts (
    delivery_id     TEXT NOT NULL REFERENCES webhook_deliveries (delivery_id),
    attempt         INTEGER NOT NULL,
    response_status INTEGER,
    response_body   TEXT,                  -- truncated to 1 KB
    error           TEXT,
    duration_ms     INTEGER NOT NULL,
    at              TEXT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
