-- Leases (issue 15): the singleton loops (timers, schedules, reconciler, retention, the idempotency
-- purge, approval webhooks, the event relay) run on the one replica that holds the lease, and every
-- transaction they commit first checks that the token it ran under is still the current one (fencing:
-- station_wf/store/leases.py). `token` grows by one on every change of holder; `holder` is NULL once
-- released. Times are unix seconds of the holder's wall clock.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT,
    token       INTEGER NOT NULL,
    expires_at  REAL NOT NULL,
    acquired_at REAL NOT NULL,
    renewed_at  REAL NOT NULL
);
