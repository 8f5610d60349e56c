-- Integrations (issue 19): outgoing webhook subscriptions with their durable delivery queue, and the
-- bundles installed into environments. Deliveries are made from the event log by a cursor (the
-- `webhook_cursor` row 'subscriptions'), one per event and
-- subscription, so a restart loses none and repeats none.
CREATE TABLE webhook_subscriptions (
    subscription_id TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    secret          TEXT,                    -- HMAC-SHA256 key (NULL: unsigned)
    events          TEXT NOT NULL,           -- JSON list of event types or patterns (run.*, approval.decided)
    workflows       TEXT NOT NULL,           -- JSON list of workflow ids ([]: every workflow)
    source          TEXT NOT NULL,           -- api | env (the environment's integrations.yaml)
    enabled         INTEGER NOT NULL,
    max_attempts    INTEGER NOT NULL,
    timeout_seconds REAL NOT NULL,
    max_concurrency INTEGER NOT NULL,
    after_event_id  INTEGER NOT NULL,        -- only events after this one (its creation) are delivered
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE hook_deliveries (
    delivery_id     TEXT PRIMARY KEY,        -- "<subscription id>:<event id>": stable across attempts
    subscription_id TEXT NOT NULL,
    event_id        INTEGER NOT NULL,
    run_id          TEXT NOT NULL,
    workflow_id     TEXT NOT NULL,
    event           TEXT NOT NULL,
    payload         TEXT NOT NULL,           -- the exact JSON body sent (and signed)
    status          TEXT NOT NULL,           -- pending | delivered | dead
    attempts        INTEGER NOT NULL,        -- every attempt ever made (numbers the attempt log)
    round_attempts  INTEGER NOT NULL,        -- attempts since the last (re)delivery request
    next_at         REAL NOT NULL,           -- unix seconds: when the next attempt is due
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX hook_deliveries_due ON hook_deliveries (next_at) WHERE status = 'pending';
CREATE INDEX hook_deliveries_subscription ON hook_deliveries (subscription_id, event_id);

CREATE TABLE hook_delivery_attempts (
    delivery_id     TEXT NOT NULL REFERENCES hook_deliveries (delivery_id),
    attempt         INTEGER NOT NULL,
    response_status INTEGER,
    response_body   TEXT,                    -- truncated to 1 KB
    error           TEXT,
    duration_ms     INTEGER NOT NULL,
    at              TEXT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

CREATE TABLE bundles (
    name         TEXT NOT NULL,
    environment  TEXT NOT NULL,
    version      TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    description  TEXT,
    workflows    TEXT NOT NULL,              -- JSON list of {id, version}
    agents       TEXT NOT NULL,              -- JSON list of agent names
    mcp_servers  TEXT NOT NULL,              -- JSON list of MCP server names
    installed_at TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (name, environment)
);
