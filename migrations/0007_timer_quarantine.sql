-- A timer whose firing fails is retried with back-off and, after STATION_TIMER_MAX_ATTEMPTS failures,
-- quarantined (fired_at set, error kept) so it no longer blocks or slows the others.
ALTER TABLE timers ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE timers ADD COLUMN error TEXT;

-- Retention and the terminal-run cleanup find a run's timers by run_id.
CREATE INDEX IF NOT EXISTS timers_by_run ON timers (run_id);
