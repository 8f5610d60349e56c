-- A run's context changes as patches (issue 14): a transition appends what it changed here instead of
-- rewriting the whole `workflow_runs.context` blob; the blob is compacted (patches folded in, rows
-- deleted) every so many patches and when the run ends. The context is the blob with its patches
-- folded in seq order (station_wf/store/context_patches.py).
CREATE TABLE workflow_run_context_patches (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,               -- per run, increasing; folded in this order
    path   TEXT NOT NULL,                  -- JSON array of object keys from the context's root
    value  TEXT,                           -- JSON of the value put there; NULL: the key was removed
    PRIMARY KEY (run_id, seq)
);
