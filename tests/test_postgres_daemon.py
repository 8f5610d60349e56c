"""The daemon on Postgres: a chosen set of the daemon tests run again with STATION_DATABASE_URL on a
real Postgres server (each daemon a database of its own): runs, agents, concurrent approval decisions,
cancel, idempotent starts, SSE, retention, child workflows (their lineage SQL), and kill -9 recovery.
(The store's SQL runs on both databases in the store tests; the replica tests run on Postgres.)

The whole suite runs this way with `STATION_TEST_PG_SERVER=postgresql://USER@HOST:PORT make test`
(see `Daemon.process_env` in tests/conftest.py); CI runs this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import PLAIN, Daemon, wait_until
from tests.pg_server import PgServer
from tests.test_api import test_happy_path_context_and_events  # noqa: F401 - collected again here, on Postgres
from tests.test_crash import test_crash_between_commit_and_publish, test_kill9_during_agent_call_then_restart  # noqa: F401
from tests.test_lifecycle_daemon import (  # noqa: F401
    test_child_workflows_wait_detach_fail_and_are_cancelled_with_their_parent,
)
from tests.test_people import (  # noqa: F401
    authed,
    test_approve_and_reject_race_exactly_one_wins,
    test_cancel_during_a_long_agent_call_closes_the_connection,
    test_idempotent_run_start,
    test_sse_reconnect_with_last_event_id_has_no_gap_and_no_duplicate,
)
from tests.test_schedules import test_retention_prunes_finished_runs_only  # noqa: F401


@pytest.fixture(autouse=True)
def _on_postgres(postgres_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("STATION_TEST_PG_SERVER", postgres_server.url("").rstrip("/"))
    yield


def test_a_daemon_started_before_its_database_exists_waits_for_it(
        postgres_server: PgServer, daemon_factory: Callable[..., Daemon]) -> None:
    """A Postgres not ready yet (here: the database not created yet) is retried at start-up like a NATS
    cluster without quorum: the daemon is not ready meanwhile, and serves once the database is there."""
    name = f"late_{os.getpid()}"
    d = daemon_factory("late", {"STATION_DATABASE_URL": postgres_server.url(name)})
    d.add_workflow("plain", PLAIN)
    d.start(wait=False)
    wait_until(lambda: "the database:" in d.log(), 30, what="a start-up retry in the log")
    assert d.proc is not None and d.proc.poll() is None
    postgres_server.create_database(name)
    d.wait_ready(60)
    assert d.wait_status(d.start_run("plain")["id"])["status"] == "COMPLETED"
    assert d.stop() == 0
    postgres_server.drop_database(name)
