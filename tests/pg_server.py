"""A real PostgreSQL server for the tests: `initdb` + `pg_ctl` on a temp dir, started once per session, lazily.

Only tests that ask for `postgres_db` (or `postgres_server`) pay its ~3 s start. Each `postgres_db` is a
fresh database (`CREATE DATABASE ... TEMPLATE template0`), so tests never see each other's rows. The
server binaries come from Debian's `postgresql` package (`.ci/run` installs it); without them the fixture
fails, it never skips, so CI cannot pass while silently leaving the Postgres tests out.

`initdb` and `pg_ctl` refuse to run as root: as root they run as the `postgres` user (`runuser`), and the
temp dir, which holds the data, the socket and the log, belongs to that user.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from station_wf.bus.nats_server import free_port

INSTALL_HINT = ("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found via `pg_config --bindir`, "
                "/usr/lib/postgresql/*/bin or PATH: install Debian's `postgresql` package "
                "(`apt-get install postgresql`; `.ci/run` does) or set STATION_TEST_PG_BINDIR")
SERVER_USER = "postgres"  # who runs the server when the tests run as root
_NEEDED = ("initdb", "pg_ctl", "postgres")


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in _NEEDED)


def _version_key(path: Path) -> tuple[int, ...]:
    """/usr/lib/postgresql/15/bin -> (15,): the newest installed major version first."""
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    candidates: list[Path] = []
    if os.environ.get("STATION_TEST_PG_BINDIR"):
        candidates.append(Path(os.environ["STATION_TEST_PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    return next((c for c in candidates if _has_server(c)), None)


@dataclass
class PgServer:
    """One postgres on 127.0.0.1:`port`, its data, socket and log under `root`."""

    bindir: Path
    root: Path
    port: int
    run_as: str | None  # the user the server binaries run as (None: the current one)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / tool), *args]
        return ["runuser", "-u", self.run_as, "--", *cmd] if self.run_as else cmd

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        out = subprocess.run(self._cmd(tool, *args), capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if out.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} exited {out.returncode}:\n{out.stdout}{out.stderr}\n{log}")

    def start(self) -> None:
        """initdb (trust auth, UTF8, C locale), then pg_ctl start and wait until it accepts connections."""
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C",
                  "--no-sync")
        # fsync off: the tests kill daemons, never the machine; max_connections: several replicas' pools.
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", opts, "-w", "-t", "60", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", timeout=60)

    def execute(self, sql: str) -> None:
        """One autocommit statement as the superuser on the `postgres` database (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def create_database(self, name: str) -> str:
        """A fresh, empty database; returns its URL."""
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop it even while daemons still hold connections to it (FORCE ends them)."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_server() -> PgServer:
    """Find the binaries, make the temp dir (owned by the server's user), start; fails with what to install."""
    bindir = find_bindir()
    if bindir is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    run_as = SERVER_USER if os.geteuid() == 0 else None
    # Under /tmp, not pytest's tmp_path: that one is mode 0700 and root's, which the postgres user cannot enter;
    # and a short path keeps the Unix socket's name under its 107-byte limit.
    root = Path(tempfile.mkdtemp(prefix="station-wf-pg-"))
    if run_as:
        try:
            user = pwd.getpwnam(run_as)
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            pytest.fail(f"running as root needs a `{run_as}` user to run the server as (Debian's postgresql package "
                        "creates it)", pytrace=False)
        os.chown(root, user.pw_uid, user.pw_gid)
    server = PgServer(bindir, root, free_port(), run_as)
    try:
        server.start()
    except BaseException:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """The session's Postgres server (started by the first test that asks for it)."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


_names = itertools.count(1)


@pytest.fixture
def postgres_db(postgres_server: PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a fresh database on the session's server, dropped after the test."""
    stem = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40]
    name = f"t{os.getpid()}_{next(_names)}_{stem}"
    url = postgres_server.create_database(name)
    yield url
    with contextlib.suppress(Exception):
        postgres_server.drop_database(name)
