-- Run lineage (issue 16): where a run came from and how often it was redriven.
--   parent_run_id / parent_step_id / parent_attempt: the step of another run (`workflow.run`) that
--     started this one; a successor made by continue-as-new keeps its predecessor's parent.
--   parent_waits: 1 when the parent step waits for this run's end (its result is the step's), 0 when
--     it was started with `wait: false` (it then outlives its parent).
--   depth: 0 for a run started by a person, a schedule or a trigger; the parent's depth + 1 for a child.
--   lineage: the workflow ids from the root run down to the parent (JSON list): recursion is refused
--     from it without walking the parents.
--   rerun_of: the run this one re-runs (POST .../rerun); continued_from / continued_as: the runs before
--     and after a continue-as-new.
--   redrive_count: how many times the run was redriven in place (POST .../redrive).
ALTER TABLE workflow_runs ADD COLUMN parent_run_id TEXT;
ALTER TABLE workflow_runs ADD COLUMN parent_step_id TEXT;
ALTER TABLE workflow_runs ADD COLUMN parent_attempt INTEGER;
ALTER TABLE workflow_runs ADD COLUMN parent_waits INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workflow_runs ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workflow_runs ADD COLUMN lineage TEXT;
ALTER TABLE workflow_runs ADD COLUMN rerun_of TEXT;
ALTER TABLE workflow_runs ADD COLUMN continued_from TEXT;
ALTER TABLE workflow_runs ADD COLUMN continued_as TEXT;
ALTER TABLE workflow_runs ADD COLUMN redrive_count INTEGER NOT NULL DEFAULT 0;
CREATE INDEX workflow_runs_by_parent ON workflow_runs (parent_run_id, id) WHERE parent_run_id IS NOT NULL;
