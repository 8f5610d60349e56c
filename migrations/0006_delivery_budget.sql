-- Poison tasks end and results are recorded before deciding (issue 11):
--   deliveries / delivery_error: handlings of the task that failed or were interrupted (durable, so a
--     restart, which recreates the JetStream consumer and its delivery counts, does not reset them);
--   result: the executor's outcome, stored before what follows is decided, so a failing decision is
--     decided again from it and never calls the executor again;
--   try_number: the attempt within one visit of a state (retries count per visit of a loop);
--   step_count: steps created by the run (the per-run cap).
ALTER TABLE workflow_run_steps ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workflow_run_steps ADD COLUMN delivery_error TEXT;
ALTER TABLE workflow_run_steps ADD COLUMN result TEXT;
ALTER TABLE workflow_run_steps ADD COLUMN try_number INTEGER;
ALTER TABLE workflow_runs ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workflow_runs ADD COLUMN delivery_error TEXT;
ALTER TABLE workflow_runs ADD COLUMN step_count INTEGER NOT NULL DEFAULT 0;
