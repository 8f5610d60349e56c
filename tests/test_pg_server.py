"""The Postgres fixture: a real server, a working database per test, isolated from every other one."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests import pg_server
from tests.pg_server import PgServer


def test_postgres_db_is_a_working_database(postgres_db: str) -> None:
    assert postgres_db.startswith("postgresql://postgres@127.0.0.1:")
    with psycopg.connect(postgres_db) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) >= 130000  # DROP DATABASE ... WITH (FORCE) needs 13
        assert conn.execute("SELECT current_database()").fetchone() == (postgres_db.rsplit("/", 1)[1],)
        conn.execute("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, v TEXT NOT NULL)")
        conn.execute("INSERT INTO t (v) VALUES (%s), (%s)", ("a", "b"))
        conn.commit()
    with psycopg.connect(postgres_db) as again:  # committed: a second connection sees it
        assert again.execute("SELECT v FROM t ORDER BY id").fetchall() == [("a",), ("b",)]
        encoding = again.execute("SHOW server_encoding").fetchone()
        assert encoding == ("UTF8",)


def test_each_database_starts_empty_and_is_dropped_after(postgres_db: str, postgres_server: PgServer) -> None:
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (x INTEGER)")
    other = postgres_server.create_database("t_isolation_probe")
    try:
        with psycopg.connect(other) as conn:
            tables = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()
            assert tables == [], "a fresh database must not see another test's tables"
    finally:
        postgres_server.drop_database("t_isolation_probe")
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        names = {r[0] for r in admin.execute("SELECT datname FROM pg_database").fetchall()}
    assert "t_isolation_probe" not in names
    assert postgres_db.rsplit("/", 1)[1] in names
    # Earlier tests' databases are gone: only this test's and the built-in ones remain.
    assert {n for n in names if n.startswith("t")} - {"template0", "template1"} == {postgres_db.rsplit("/", 1)[1]}


def test_the_server_runs_unprivileged_with_its_files_in_its_own_dir(postgres_server: PgServer) -> None:
    with psycopg.connect(postgres_server.url()) as conn:
        data_dir = conn.execute("SHOW data_directory").fetchone()
        listen = conn.execute("SHOW listen_addresses").fetchone()
    assert data_dir == (str(postgres_server.data),)
    assert listen == ("127.0.0.1",)
    assert (postgres_server.root / f".s.PGSQL.{postgres_server.port}").is_socket()
    owner = postgres_server.data.stat().st_uid
    assert owner != 0 or postgres_server.run_as is None


def test_without_server_binaries_the_fixture_fails_saying_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    assert not pg_server._has_server(tmp_path)
    monkeypatch.setattr(pg_server, "find_bindir", lambda: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install postgresql"):
        pg_server.start_server()
