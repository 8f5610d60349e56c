-- Governance (issue 18): correlation ids and tags on runs, concurrency slots and queues, rate-limit
-- windows, agent step slots, and the audit log of policy denials. Everything a limit counts is here,
-- so limits hold across restarts and replicas (station_wf/store/governance*.py).
ALTER TABLE workflow_runs ADD COLUMN correlation_id TEXT;
ALTER TABLE workflow_runs ADD COLUMN tags TEXT;             -- JSON object of string -> string, as given
CREATE INDEX workflow_runs_by_correlation ON workflow_runs (correlation_id, id);

CREATE TABLE workflow_run_tags (                           -- one row per tag, for filtering
    run_id TEXT NOT NULL,
    name   TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE INDEX workflow_run_tags_by_value ON workflow_run_tags (name, value, run_id);

-- One row per run that holds (queued = 0) or waits for (queued = 1) a concurrency slot; deleted when
-- the run ends. `id` is the queue order; `slot_limit` the key's limit when the run was admitted.
CREATE TABLE governance_slots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT    NOT NULL UNIQUE,
    workflow_id TEXT    NOT NULL,
    slot_key    TEXT    NOT NULL,
    slot_limit  INTEGER,
    queued      INTEGER NOT NULL,
    created_at  TEXT    NOT NULL
);
CREATE INDEX governance_slots_by_key ON governance_slots (workflow_id, slot_key, queued, id);
CREATE INDEX governance_slots_by_queue ON governance_slots (queued, id);

-- Fixed-window counters of the rate limits: `bucket` names what is limited (`start:<workflow>`).
CREATE TABLE governance_rate_windows (
    bucket       TEXT    NOT NULL,
    window_start INTEGER NOT NULL,                         -- unix seconds
    hits         INTEGER NOT NULL,
    PRIMARY KEY (bucket, window_start)
);

-- Agent steps holding one of their agent's `maxConcurrency` slots (counted only while the step runs).
CREATE TABLE governance_agent_slots (
    step_row   INTEGER PRIMARY KEY,                        -- workflow_run_steps.id
    agent      TEXT    NOT NULL,
    run_id     TEXT    NOT NULL,
    created_at TEXT    NOT NULL
);
CREATE INDEX governance_agent_slots_by_agent ON governance_agent_slots (agent);

-- Policy denials (policies.yaml): who was refused what, by which policy.
CREATE TABLE governance_denials (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    principal   TEXT NOT NULL,
    action      TEXT NOT NULL,                             -- run | signal | cancel | query
    workflow_id TEXT,
    run_id      TEXT,
    policy      TEXT NOT NULL,                             -- file:line and rule of the policy that denied
    message     TEXT NOT NULL
);
CREATE INDEX governance_denials_by_run ON governance_denials (run_id, id);
