-- A reservation remembers which daemon process made it: one left by a process that has since died
-- (another boot) is stale at once, so a retry after a crash is not told "in progress" for a minute.
ALTER TABLE idempotency_keys ADD COLUMN boot_id TEXT;
-- Expired keys are purged by age.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
