"""Workflow actions of PRD §7 against a real daemon, through the API and the CLI: enable (disable is
DELETE), the file's sync status (in sync / file changed / file removed) and a sync of one file, and
rollback (a new version made from an old one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon

CLI = [sys.executable, "-m", "station_wf.cli"]
FILED = """
id: filed
name: Filed
start: a
states:
  - { name: a, type: inject, data: { v: 1 }, end: true }
"""
API_MADE = {"id": "api-made", "start": "a", "states": [{"name": "a", "type": "inject", "data": {"ok": True}, "end": True}]}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("wf-actions"), None, {})
    d.add_workflow("filed", FILED)
    d.start()
    assert d.request("POST", "/api/v1/workflows", json=API_MADE).status_code == 201
    yield d
    d.stop()


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
