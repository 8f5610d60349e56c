-- An Idempotency-Key reserves the id of its effect (the run it starts, the signal it sends) before the
-- action runs, so a retry after a crash finds the effect instead of causing it twice.
ALTER TABLE idempotency_keys ADD COLUMN effect_id TEXT;
ALTER TABLE workflow_signals ADD COLUMN effect_id TEXT;
CREATE UNIQUE INDEX workflow_signals_effect ON workflow_signals (effect_id) WHERE effect_id IS NOT NULL;
