-- Nested scopes (parallel branches, foreach iterations, try sections) keep their state with the run,
-- and executors may report metadata (model, tokens, latency, rendered prompt) with a step attempt.
ALTER TABLE workflow_runs ADD COLUMN engine_state TEXT NOT NULL DEFAULT '{}';
ALTER TABLE workflow_run_steps ADD COLUMN metadata TEXT;
CREATE INDEX timers_by_step ON timers (run_id, step_id) WHERE fired_at IS NULL;
