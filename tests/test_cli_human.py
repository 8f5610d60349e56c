"""The CLI as people and scripts use it, against one real daemon: through a pseudo-terminal (tables,
colours, a run followed live with the approval hint, exit codes) and through pipes (JSON/YAML that
parses, exit codes per final status, one-line errors); the daemon's own logs on a terminal. And the
workflow actions of PRD §7 through the API and the CLI: enable (disable is DELETE), the file's sync
status (in sync / file changed / file removed) and a sync of one file, rollback (a new version made
from an old one)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shlex
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import PLAIN, WAITS, Daemon, free_port
from tests.test_lifecycle_daemon import COUNTER

CLI = [sys.executable, "-m", "station_wf.cli"]
GATED = """
id: gated
start: plan
states:
  - { name: plan, type: inject, data: { plan: 1 }, next: ask }
  - { name: ask, type: operation, action: human.approval, input: { message: "ship it?" }, resultPath: decision, next: done }
  - { name: done, type: inject, data: { ok: true }, end: true }
"""
SHORT = """
id: short
timeoutSeconds: 1
start: first
states:
  - { name: first, type: operation, action: signal.wait, input: { signal: never }, end: true }
"""
FILED = """
id: filed
name: Filed
start: a
states:
  - { name: a, type: inject, data: { v: 1 }, end: true }
"""
API_MADE = {"id": "api-made", "start": "a", "states": [{"name": "a", "type": "inject", "data": {"ok": True}, "end": True}]}
SGR = re.compile(r"\x1b\[[0-9;]*m")


class TerminalLog:
    """What a process wrote to its terminal (a pseudo-terminal drained by a thread, so it never blocks)."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.data = bytearray()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        for _ in range(1 << 30):
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the process closed the terminal
                return
            if not chunk:
                return
            self.data += chunk

    def text(self) -> str:
        return bytes(self.data).decode(errors="replace")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module, started with a terminal as its stdout and stderr (as `make run` in a
    shell); the tests only add runs of their own."""
    root = tmp_path_factory.mktemp("cli")
    d = Daemon(root, None, {})
    for name, text in (("plain", PLAIN), ("waits", WAITS), ("gated", GATED), ("short", SHORT), ("filed", FILED),
                       ("counter", COUNTER)):
        d.add_workflow(name, text)
    master, slave = os.openpty()
    d.proc = subprocess.Popen([*CLI, "serve"], env=d.process_env({"TERM": "xterm-256color"}), stdin=subprocess.DEVNULL,
                              stdout=slave, stderr=slave, cwd=root, close_fds=True)
    os.close(slave)
    d.terminal = TerminalLog(master)  # type: ignore[attr-defined]
    try:
        d.wait_ready()
        assert d.request("POST", "/api/v1/workflows", json=API_MADE).status_code == 201
        yield d
    finally:
        d.stop()
        d.terminal.thread.join(10)  # type: ignore[attr-defined]
        os.close(master)


def env_for(d: Daemon) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATION_") and k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update({"STATION_HTTP_ADDR": f"127.0.0.1:{d.http_port}", "TERM": "xterm-256color", "COLUMNS": "200"})
    return env


def in_pty(argv: list[str], env: dict[str, str], timeout: float = 30.0,
           on_output: Callable[[str], bool] | None = None) -> tuple[str, int]:
    """Run `argv` with a pseudo-terminal as stdin/stdout/stderr; `on_output(text so far)` is called as
    output arrives until it returns True. Returns (everything printed, exit code)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    done_callback = on_output is None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
                if not done_callback and on_output is not None:
                    done_callback = on_output(b"".join(chunks).decode(errors="replace"))
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError(f"{argv} did not end within {timeout}s:\n{b''.join(chunks).decode(errors='replace')}")
        return b"".join(chunks).decode(errors="replace"), proc.wait(10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def piped(argv: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# -- a terminal ----------------------------------------------------------------------------------
def test_tables_and_colours_on_a_terminal(daemon: Daemon) -> None:
    env = env_for(daemon)
    done = daemon.start_run("plain")
    daemon.wait_status(done["id"])
    waiting = daemon.start_run("waits")
    daemon.wait_status(waiting["id"], "WAITING_SIGNAL")
    out, rc = in_pty([*CLI, "runs", "list", "--limit", "50"], env)
    assert rc == 0, out
    plain = SGR.sub("", out)
    assert re.search(r"RUN\s+STATUS\s+AGE\s+WORKFLOW\s+CURRENT STEP", plain), plain
    row = next(line for line in plain.splitlines() if line.startswith(waiting["id"]))
    assert re.search(r"WAITING_SIGNAL\s+\d+s\s+waits v1\s+first \(signal\)", row), row
    assert re.search(rf"{done['id']}\s+COMPLETED\s+\d+s\s+plain v1", plain), plain
    assert "\x1b[32mCOMPLETED" in out, "COMPLETED is not green"  # rich's SGR for green
    assert "\x1b[33mWAITING_SIGNAL" in out, "a waiting run is not yellow"
    assert not out.lstrip().startswith("{"), "a terminal got JSON"

    wf, rc = in_pty([*CLI, "workflows"], env)
    assert rc == 0 and re.search(r"gated\s+\S*active\S*\s+v1\s+file", SGR.sub("", wf)), wf


def test_run_wait_follows_live_says_how_to_approve_and_exits_0(daemon: Daemon) -> None:
    env = env_for(daemon)
    decided: list[subprocess.CompletedProcess] = []

    def approve_when_asked(text: str) -> bool:
        m = re.search(r"approve: (station-wf approvals approve \S+ \S+)", SGR.sub("", text))
        if not m:
            return False
        words = shlex.split(m.group(1))
        decided.append(piped([*CLI, *words[1:], "--comment", "from the hint"], env))  # the exact command printed
        return True

    out, rc = in_pty([*CLI, "run", "gated", "--wait", "--timeout", "30"], env, on_output=approve_when_asked)
    plain = SGR.sub("", out)
    assert decided and decided[0].returncode == 0, (decided, plain)
    assert rc == 0, plain
    lines = plain.splitlines()
    started = [i for i, line in enumerate(lines) if re.search(r"▶ plan started", line)]
    ended = [i for i, line in enumerate(lines) if re.search(r"✓ plan succeeded in \d+ms", line)]
    assert started and ended and started[0] < ended[0], plain
    assert re.search(r"⏸ ask waits for an approval \(anyone\): ship it\?", plain), plain
    assert re.search(r"reject:  station-wf approvals reject \S+ apr-", plain), plain
    assert re.search(r"ask approved by", plain) and re.search(r"✓ done succeeded", plain), plain
    assert re.search(r"run \S+ COMPLETED in", plain), plain
    run_id = re.search(r"following run (\S+)", plain).group(1)
    assert daemon.run(run_id)["context"]["decision"]["comment"] == "from the hint"


def test_runs_watch_exits_3_when_the_run_fails(daemon: Daemon) -> None:
    env = env_for(daemon)
    run = daemon.start_run("gated")
    daemon.wait_status(run["id"], "WAITING_APPROVAL")

    def reject_when_asked(text: str) -> bool:
        m = re.search(r"reject:  (station-wf approvals reject \S+ \S+)", SGR.sub("", text))
        if m:
            piped([*CLI, *shlex.split(m.group(1))[1:]], env)
        return bool(m)

    out, rc = in_pty([*CLI, "runs", "watch", run["id"]], env, on_output=reject_when_asked)
    assert rc == 3, out
    assert "\x1b[1;31mFAILED" in out or re.search(r"\x1b\[[0-9;]*31[0-9;]*mFAILED", out), out
    assert daemon.run(run["id"])["status"] == "FAILED"


# -- pipes -------------------------------------------------------------------------------------------
def test_pipes_get_documents_and_exit_codes(daemon: Daemon) -> None:
    env = env_for(daemon)
    ok = piped([*CLI, "run", "plain", "--wait"], env)
    assert ok.returncode == 0, ok.stderr
    run = json.loads(ok.stdout)  # stdout holds only the final run document; progress went to stderr
    assert run["status"] == "COMPLETED" and "✓ a succeeded" in ok.stderr

    timed_out = piped([*CLI, "run", "short", "--wait", "--timeout", "30"], env)
    assert timed_out.returncode == 5 and json.loads(timed_out.stdout)["status"] == "TIMED_OUT", timed_out.stderr

    still = piped([*CLI, "run", "waits", "--wait", "--timeout", "1"], env)
    assert still.returncode == 6, still.stderr
    waiting = json.loads(still.stdout)
    assert waiting["status"] == "WAITING_SIGNAL"
    assert f"still WAITING_SIGNAL after 1s; follow it with: station-wf runs watch {waiting['id']}" in still.stderr

    cancel = piped([*CLI, "runs", "cancel", waiting["id"], "--reason", "enough"], env)
    assert cancel.returncode == 0 and json.loads(cancel.stdout)["status"] == "CANCELLED"
    watched = piped([*CLI, "runs", "watch", waiting["id"]], env)
    assert watched.returncode == 4 and json.loads(watched.stdout)["status"] == "CANCELLED"

    listed = piped([*CLI, "runs", "list", "-o", "yaml", "--workflow", "plain"], env)
    assert listed.returncode == 0 and yaml.safe_load(listed.stdout)["runs"][0]["id"] == run["id"]
    followed = piped([*CLI, "runs", "events", run["id"], "--follow"], env)
    events = [json.loads(line) for line in followed.stdout.splitlines()]
    assert followed.returncode == 0 and [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "run.completed" and len(events) == len(daemon.events(run["id"]))

    missing = piped([*CLI, "runs", "show", "no-such-run"], env)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == "station-wf: 404 not_found: run 'no-such-run' not found {\"id\": \"no-such-run\"}\n"
    gone = piped([*CLI, "runs", "list", "--url", f"http://127.0.0.1:{free_port()}"], env)
    assert gone.returncode == 1 and gone.stderr.startswith("station-wf: cannot reach the daemon at") and gone.stderr.count("\n") == 1

    helped = piped([*CLI, "run", "--help"], env)
    assert "3  the run FAILED" in helped.stdout and "6  the run had not ended when --timeout ran out" in helped.stdout
    completion = piped([*CLI, "completion", "bash"], env)
    assert completion.returncode == 0 and "station-wf" in completion.stdout and "approvals" in completion.stdout
    checked = subprocess.run(["bash", "-n"], input=completion.stdout, text=True, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_redrive_rerun_and_a_run_that_continues_as_new(daemon: Daemon) -> None:
    env = env_for(daemon)
    run = daemon.start_run("gated")
    approval = next(a for a in daemon.request("GET", "/api/v1/workflow-approvals").json()["approvals"] if a["runId"] == run["id"])
    assert piped([*CLI, "approvals", "reject", run["id"], approval["id"]], env).returncode == 0
    daemon.wait_status(run["id"], "FAILED")
    redriven = piped([*CLI, "runs", "redrive", run["id"]], env)
    assert redriven.returncode == 0, redriven.stderr
    assert json.loads(redriven.stdout)["id"] == run["id"] and daemon.wait_status(run["id"], "WAITING_APPROVAL")["redriveCount"] == 1
    rerun = piped([*CLI, "runs", "rerun", run["id"], "-o", "yaml"], env)
    assert rerun.returncode == 0, rerun.stderr
    new = yaml.safe_load(rerun.stdout)
    assert new["id"] != run["id"] and new["rerunOf"] == run["id"]

    chained = piped([*CLI, "run", "counter", "--input", '{"n": 1}', "--wait", "--timeout", "60"], env)
    assert chained.returncode == 0, chained.stderr
    last = json.loads(chained.stdout)  # the run the chain ended in, followed through its continuations
    assert last["status"] == "COMPLETED" and last["continuedFrom"] and last["context"]["finished"] is True
    assert chained.stderr.count("continued as new:") == 2, chained.stderr


def test_watch_on_a_list_refreshes_and_stops(daemon: Daemon) -> None:
    env = env_for(daemon)
    out = piped([*CLI, "approvals", "list", "--watch", "--interval", "0.5", "--watch-for", "1.2"], env)
    docs = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 0 and 2 <= len(docs) <= 4 and all("approvals" in d for d in docs), out


# -- the daemon's logs on a terminal -------------------------------------------------------------------
def test_serve_on_a_terminal_logs_text_and_ends_start_up_with_the_dashboard_url(daemon: Daemon) -> None:
    text = SGR.sub("", daemon.terminal.text())  # type: ignore[attr-defined]
    assert "\x1b[36mINFO\x1b[0m" in daemon.terminal.text(), "the level is not coloured on a terminal"  # type: ignore[attr-defined]
    lines = [line for line in text.splitlines() if line.strip()]
    assert not any(line.lstrip().startswith("{") for line in lines), "JSON logs on a terminal"
    assert any(re.search(r" INFO station_wf\.bus\.jetstream: creating JetStream stream", line) for line in lines), text
    start_up = lines[:next(i for i, line in enumerate(lines) if "station-wf ready on" in line) + 1]
    assert not any(" WARNING " in line for line in start_up), start_up
    assert start_up[-1].rstrip().endswith(f"dashboard: http://127.0.0.1:{daemon.http_port}/"), start_up[-1]


def test_log_format_auto_follows_the_stream_and_flags_still_override(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import logging

    from station_wf.telemetry import logs

    master, slave = os.openpty()
    tty = os.fdopen(slave, "w")
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        assert logs.resolve_format("auto", tty) == "text" and logs.resolve_format("auto", io.StringIO()) == "json"
        assert logs.resolve_format("json", tty) == "json" and logs.resolve_format("TEXT", io.StringIO()) == "text"
        with pytest.raises(ValueError, match="'auto', 'json' or 'text'"):
            logs.resolve_format("xml", tty)
        monkeypatch.setenv("TERM", "xterm-256color")
        monkeypatch.delenv("NO_COLOR", raising=False)
        handler = logs.configure_logging("INFO", "auto", stream=tty)
        assert isinstance(handler.formatter, logs.TextFormatter) and handler.formatter.colour is True
        record = logging.LogRecord("t", logging.WARNING, __file__, 1, "careful", None, None)
        assert "\x1b[33mWARNING\x1b[0m t: careful" in handler.formatter.format(record)
        monkeypatch.setenv("NO_COLOR", "1")
        assert logs.configure_logging("INFO", "auto", stream=tty).formatter.colour is False
        assert isinstance(logs.configure_logging("INFO", "json", stream=tty).formatter, logs.JsonFormatter)
        out = io.StringIO()
        logs.configure_logging("INFO", "auto", stream=out)
        logging.getLogger("t").warning("hello")
        assert json.loads(out.getvalue())["level"] == "WARNING"
    finally:
        for h in list(root.handlers):
            if h not in saved[0]:
                root.removeHandler(h)
        root.setLevel(saved[1])
        tty.close()
        os.close(master)


# -- workflow actions: enable, the file's sync status and a sync, rollback ------------------------------
def cli(d: Daemon, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATION_")}
    return subprocess.run([*CLI, *args, "--url", d.base], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def listed(d: Daemon) -> dict[str, dict]:
    return {w["id"]: w for w in d.request("GET", "/api/v1/workflows").json()["workflows"]}


def sync_state(d: Daemon, wf: str = "filed") -> str:
    return d.request("GET", f"/api/v1/workflows/{wf}/sync").json()["state"]


def error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and err["message"] and "request_id" in err, err
    return err


def test_sync_status_and_syncing_one_file(daemon: Daemon) -> None:
    file = daemon.workflows_dir / "filed.workflow.yaml"
    assert listed(daemon)["filed"]["sync"]["state"] == "in_sync"
    assert listed(daemon)["api-made"]["sync"] is None
    status = daemon.request("GET", "/api/v1/workflows/filed/sync").json()
    assert status["state"] == "in_sync" and Path(status["sourceFile"]).name == "filed.workflow.yaml"
    assert status["fileHash"] == status["storedHash"] and status["storedVersion"] == 1
    assert sync_state(daemon, "api-made") == "not_file_synced"
    error(daemon.request("POST", "/api/v1/workflows/api-made/sync"), 409, "conflict")
    error(daemon.request("GET", "/api/v1/workflows/nope/sync"), 404, "not_found")

    file.write_text(FILED.replace("v: 1", "v: 2"))
    assert sync_state(daemon) == "file_changed" and listed(daemon)["filed"]["sync"]["state"] == "file_changed"
    synced = daemon.request("POST", "/api/v1/workflows/filed/sync").json()
    assert synced["result"] == "registered" and synced["workflow"]["version"] == 2 and synced["sync"]["state"] == "in_sync"
    assert synced["workflow"]["definition"]["states"]["a"]["data"] == {"v": 2}
    assert daemon.request("POST", "/api/v1/workflows/filed/sync").json()["result"] == "unchanged"

    file.write_text("id: filed\nstart: a\nstates:\n  - { name: a, type: inject, data: {}, next: nowhere }\n")
    err = error(daemon.request("POST", "/api/v1/workflows/filed/sync"), 422, "invalid_definition")
    assert "keeps serving" in err["message"] and any("nowhere" in p for p in err["details"])
    assert daemon.request("GET", "/api/v1/workflows/filed").json()["version"] == 2  # nothing stored
    file.write_text(FILED.replace("id: filed", "id: other"))
    assert "now defines workflow 'other'" in error(daemon.request("POST", "/api/v1/workflows/filed/sync"), 422, "invalid_definition")["message"]

    file.unlink()
    assert sync_state(daemon) == "file_removed"
    gone = daemon.request("POST", "/api/v1/workflows/filed/sync").json()
    assert gone["result"] == "disabled" and gone["workflow"]["status"] == "disabled" and gone["sync"]["state"] == "file_removed"
    file.write_text(FILED.replace("v: 1", "v: 2"))
    back = daemon.request("POST", "/api/v1/workflows/filed/sync").json()
    assert back["result"] == "reactivated" and back["workflow"]["status"] == "active" and back["workflow"]["version"] == 2

    shown = cli(daemon, "workflows", "sync", "filed")
    assert shown.returncode == 0 and json.loads(shown.stdout)["result"] == "unchanged", shown.stderr


def test_enable_disable_and_rollback(daemon: Daemon) -> None:
    off = cli(daemon, "workflows", "disable", "api-made")
    assert off.returncode == 0 and json.loads(off.stdout)["status"] == "disabled", off.stderr
    refused = daemon.request("POST", "/api/v1/workflow-runs", json={"workflowId": "api-made", "input": {}})
    assert refused.status_code >= 400
    on = cli(daemon, "workflows", "enable", "api-made")
    assert on.returncode == 0 and json.loads(on.stdout)["status"] == "active", on.stderr
    run = daemon.start_run("api-made")
    daemon.wait_status(run["id"])
    error(daemon.request("POST", "/api/v1/workflows/nope/enable"), 404, "not_found")

    v2 = {**API_MADE, "states": [{"name": "a", "type": "inject", "data": {"ok": 2}, "end": True}]}
    assert daemon.request("PUT", "/api/v1/workflows/api-made", json=v2).json()["version"] == 2
    rolled = daemon.request("POST", "/api/v1/workflows/api-made/rollback", json={"version": 1})
    assert rolled.status_code == 201, rolled.text
    made = rolled.json()
    versions = daemon.request("GET", "/api/v1/workflows/api-made/versions").json()["versions"]
    v1 = next(v for v in versions if v["version"] == 1)
    assert made["version"] == 3 and made["contentHash"] == v1["contentHash"] and made["definition"]["states"]["a"]["data"] == {"ok": True}
    assert [v["version"] for v in versions] == [3, 2, 1]  # history kept, nothing rewritten
    again = daemon.start_run("api-made")
    assert again["workflowVersion"] == 3
    assert daemon.wait_status(again["id"])["context"]["ok"] is True

    error(daemon.request("POST", "/api/v1/workflows/api-made/rollback", json={"version": 1}), 409, "conflict")  # v1 is the latest's content
    error(daemon.request("POST", "/api/v1/workflows/api-made/rollback", json={"version": 99}), 404, "not_found")
    for bad in ({"version": "1"}, {"version": 0}, {"version": True}, {}, [1]):
        error(daemon.request("POST", "/api/v1/workflows/api-made/rollback", json=bad), 400, "invalid_request")
    assert daemon.request("GET", "/api/v1/workflows/api-made").json()["version"] == 3  # refusals stored nothing

    by_cli = cli(daemon, "workflows", "rollback", "api-made", "--version", "2")
    assert by_cli.returncode == 0 and json.loads(by_cli.stdout)["version"] == 4, by_cli.stderr
    no_version = cli(daemon, "workflows", "rollback", "api-made")
    assert no_version.returncode == 1 and "needs --version N" in no_version.stderr
