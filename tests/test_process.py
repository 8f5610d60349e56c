"""The daemon as a process: one per data dir, SIGTERM drains, embedded JetStream survives restarts; CLI sync."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

from tests.conftest import REPO, Daemon, wait_until

CLI = [sys.executable, "-m", "station_wf.cli"]

ONE_STEP = """
id: one
start: call
states:
  - name: call
    type: operation
    action: agent.run
    input: { agent: worker, task: "t" }
    end: true
"""


def test_second_daemon_on_same_data_dir_refuses(daemon: Daemon) -> None:
    daemon.start()
    env = daemon.process_env({"STATION_HTTP_ADDR": "127.0.0.1:0"})
    out = subprocess.run([*CLI, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "another station-wf daemon" in out.stderr and str(daemon.data_dir.resolve()) in out.stderr
    assert daemon.request("GET", "/readyz").status_code == 200  # the first one is unharmed


def test_sigterm_drains_in_flight_step(daemon: Daemon) -> None:
    daemon.add_workflow("one", ONE_STEP)
    daemon.agent_server.behave("worker", delay=1.0)
    daemon.start()
    run = daemon.start_run("one")
    wait_until(lambda: daemon.agent_server.calls_for("worker"), what="the agent call")
    assert daemon.stop() == 0
    # The in-flight step finished within the grace period and was recorded before exit.
    db = sqlite3.connect(daemon.data_dir / "station-wf.db")
    status, = db.execute("SELECT status FROM workflow_runs WHERE run_id = ?", (run["id"],)).fetchone()
    outbox, = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
    db.close()
    assert status == "COMPLETED" and outbox == 0
    assert "left unacked" not in daemon.log()


def test_embedded_jetstream_survives_restart(daemon: Daemon) -> None:
    """A task queued in the embedded server's FILE store is there after a restart of the daemon."""
    daemon.add_workflow("one", ONE_STEP)
    hold = threading.Event()
    daemon.agent_server.behave("worker", hold=hold)
    daemon.start()
    runs = [daemon.start_run("one") for _ in range(3)]
    wait_until(lambda: len(daemon.agent_server.calls_for("worker")) == 3, what="three calls")
    daemon.kill()
    hold.set()
    assert (daemon.data_dir / "nats" / "jetstream").is_dir()
    daemon.start()
    for run in runs:
        daemon.wait_status(run["id"])
    assert "re-published" not in daemon.log()  # redelivered by JetStream itself, not rebuilt


def test_validate_and_sync_cli(daemon: Daemon, tmp_path) -> None:
    wf = daemon.add_workflow("one", ONE_STEP)
    env = daemon.process_env()
    ok = subprocess.run([*CLI, "validate", str(wf)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "ok (one, 1 states)" in ok.stdout

    bad = tmp_path / "bad.workflow.yaml"
    bad.write_text("id: bad\nstart: a\nstates:\n  - name: a\n    type: inject\n    data: {}\n    next: nowhere\n")
    out = subprocess.run([*CLI, "validate", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and f"{bad}:7:" in out.stderr and "nowhere" in out.stderr

    first = subprocess.run([*CLI, "sync"], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "registered one v1" in first.stdout, first.stderr
    again = subprocess.run([*CLI, "sync"], env=env, capture_output=True, text=True, timeout=60)
    assert "unchanged  one" in again.stdout

    wf.write_text(ONE_STEP.replace('task: "t"', 'task: "t2"'))
    broken = daemon.add_workflow("broken", "id: broken\nstart: [\n")
    changed = subprocess.run([*CLI, "sync"], env=env, capture_output=True, text=True, timeout=60)
    assert changed.returncode == 1 and "registered one v2" in changed.stdout
    assert f"{broken}:" in changed.stderr  # the file is named, with its line

    wf.unlink()
    broken.unlink()
    gone = subprocess.run([*CLI, "sync"], env=env, capture_output=True, text=True, timeout=60)
    assert "disabled   one (file removed)" in gone.stdout
    db = sqlite3.connect(daemon.data_dir / "station-wf.db")
    rows = db.execute("SELECT version, status FROM workflow_definitions WHERE workflow_id = 'one' ORDER BY version").fetchall()
    db.close()
    assert rows == [(1, "disabled"), (2, "disabled")]  # history kept


def test_a_broken_file_does_not_disable_its_workflow(daemon: Daemon) -> None:
    wf = daemon.add_workflow("one", ONE_STEP)
    env = daemon.process_env()
    subprocess.run([*CLI, "sync"], env=env, check=True, capture_output=True, timeout=60)
    wf.write_text(ONE_STEP + "\nbogus: 1\n")
    out = subprocess.run([*CLI, "sync"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "bogus" in out.stderr and "disabled" not in out.stdout


def test_serve_help_lists_every_setting() -> None:
    out = subprocess.run([*CLI, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for env_name in ("STATION_DATA_DIR", "STATION_DATABASE_URL", "STATION_NATS_EMBEDDED", "STATION_NATS_URL",
                     "STATION_HTTP_ADDR", "STATION_ENVIRONMENTS_DIR", "STATION_API_TOKEN", "STATION_NATS_PORT"):
        assert env_name in out.stdout


def test_example_environment_runs(daemon_factory) -> None:
    """The shipped example (hello + greeter) completes against the demo agent, as `make run` serves it."""
    from tests.conftest import copy_example_env, free_port

    d = daemon_factory("example")
    copy_example_env(d.root / "environments")
    port = free_port()
    prompt = d.agents_dir / "greeter.prompt"
    prompt.write_text(prompt.read_text().replace("127.0.0.1:8588", f"127.0.0.1:{port}"))
    agent = subprocess.Popen([*CLI, "demo-agent", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        d.start()
        run = d.wait_status(d.start_run("hello", {"name": "Ada"})["id"])
        assert run["context"]["steps"]["greet"]["greeting"] == "Hello, Ada!"
        assert run["context"]["config"] == {"punctuation": "!"}
    finally:
        agent.terminate()
        agent.wait(10)
    assert (REPO / "environments" / "default" / "workflows" / "hello.workflow.yaml").is_file()
