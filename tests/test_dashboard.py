"""The dashboard in a real browser (Debian's Chromium through Playwright) against a real daemon.

Each test saves PNG screenshots of the pages it checked under its tmp dir (and, with
STATION_KEEP_SCREENSHOTS=1, copies them to tests/screenshots/). Console errors fail a test, except
the few HTTP errors a scenario provokes on purpose (a 400 from an invalid run input, the 401s before
a token is entered), which are matched exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon, wait_until

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (.ci/run installs it: apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (a dev dependency) is not installed")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 15_000

SLOW = """
id: slow
name: Slow loop
description: Works through the items one at a time, then routes on how many there were.
inputSchema:
  type: object
  properties:
    items: { type: array, items: { type: integer }, minItems: 1, description: "what to work on" }
    label: { type: string, enum: [red, green, blue] }
    count: { type: integer, minimum: 1, maximum: 10 }
  required: [items]
start: each
states:
  - name: each
    type: foreach
    itemsPath: items
    resultPath: results
    iterator:
      states:
        - { name: work, type: operation, action: agent.run, input: { agent: worker, task: "item {{ item }}" }, resultPath: out, end: true }
    next: route
  - name: route
    type: switch
    conditions:
      - { if: "len(items) > 5", next: big }
    defaultNext: finish
  - { name: big, type: inject, data: { size: big }, resultPath: summary, end: true }
  - { name: finish, type: inject, data: { size: small, done: true }, resultPath: summary, end: true }
"""

GATED = """
id: gated
name: Gated restart
start: plan
states:
  - { name: plan, type: inject, data: { plan: { action: restart, pods: 3 } }, next: ask }
  - name: ask
    type: operation
    action: human.approval
    input:
      message: "Restart {{ plan.pods }} pods?"
      summaryPath: plan
      approvers: APPROVERS
    resultPath: decision
    next: act
  - { name: act, type: operation, action: agent.run, input: { agent: worker, task: "restart" }, resultPath: result, end: true }
"""



def gated(approvers: str = "[]") -> str:
    return GATED.replace("APPROVERS", approvers)


SIGNALS = """
id: signals
start: first
states:
  - { name: first, type: operation, action: signal.wait, input: { signal: go }, resultPath: got.first, end: true }
"""

TOKENS = {"alice-token-0123456789": {"principal": "alice", "groups": ["platform"]}}
ALICE = {"Authorization": "Bearer alice-token-0123456789"}


# -- browser plumbing ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    pw = sync_api.sync_playwright().start()
    b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield b
    b.close()
    pw.stop()


class Page:
    """A Playwright page that records console errors and uncaught exceptions, and saves screenshots."""

    def __init__(self, page: Any, shots: Path) -> None:
        self.page = page
        self.shots = shots
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text} @ {m.location.get('url', '')}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.set_default_timeout(TIMEOUT_MS)

    def shot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        if os.environ.get("STATION_KEEP_SCREENSHOTS") == "1":
            keep = REPO / "tests" / "screenshots"
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, keep / path.name)
        return path

    def take_errors(self, *allowed: str) -> list[str]:
        """The errors so far that match none of the `allowed` regexes (and forget them all)."""
        bad = [e for e in self.errors if not any(re.search(a, e) for a in allowed)]
        self.errors.clear()
        return bad


@pytest.fixture
def web(browser: Any, tmp_path: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = Page(context.new_page(), tmp_path / "screenshots")
    yield page
    context.close()


def http_error(status: int) -> str:
    return rf"Failed to load resource: the server responded with a status of {status}\b"


def expect(locator: Any) -> Any:
    return sync_api.expect(locator)


def run_status(page: Any) -> str:
    return page.locator(".run-head .badge").first.get_attribute("data-status")


# -- the scenarios ------------------------------------------------------------------------------------
def test_start_a_run_from_the_form_and_watch_it_complete_live(daemon: Daemon, web: Page) -> None:
    daemon.add_workflow("slow", SLOW)
    daemon.agent_server.behave("worker", delay=0.8)
    daemon.start()
    page = web.page
    page.goto(daemon.base + "/")
    expect(page.locator("tr[data-workflow=slow]")).to_be_visible()
    assert page.url.endswith("#/workflows")

    # The form comes from the inputSchema; the daemon's validation messages land next to their fields.
    page.click("button[data-run=slow]")
    expect(page.locator("#run-dialog")).to_be_visible()
    expect(page.locator("#f-label option")).to_have_count(4)  # "—" and the three enum values
    page.fill("#f-items", "[]")
    page.fill("#f-count", "40")
    page.click("#run-dialog button[type=submit]")
    expect(page.locator("[data-field=items] .field-error")).to_contain_text("should be non-empty")
    expect(page.locator("[data-field=count] .field-error")).to_contain_text("maximum of 10")
    expect(page.locator("#f-count")).to_have_attribute("aria-invalid", "true")
    web.shot("form-validation")

    page.fill("#f-items", "[1, 2, 3]")
    page.fill("#f-count", "3")
    page.select_option("#f-label", label="green")
    page.click("#run-dialog button[type=submit]")
    page.wait_for_url(re.compile(r"#/runs/[0-9a-f-]+$"))
    run_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.__notReloaded = true")

    # The timeline advances from the stream: a running item first, then the whole run completes.
    expect(page.locator(".tl-item[data-state=work][data-status=RUNNING]").first).to_be_visible()
    expect(page.locator(".run-head .conn[data-state=live]")).to_be_visible()
    expect(page.locator(".run-head .badge[data-status=COMPLETED]")).to_be_visible(timeout=20_000)
    assert page.evaluate("window.__notReloaded") is True, "the page reloaded"
    expect(page.locator(".tl-item[data-state=work][data-status=SUCCEEDED]")).to_have_count(3)
    expect(page.locator(".tl-group[data-frame='each[2]']")).to_contain_text("item 2")
    expect(page.locator(".tl-item[data-state=finish][data-status=SUCCEEDED]")).to_be_visible()
    expect(page.locator(".tl-item[data-state=big]")).to_have_count(0)

    # Every event exactly once, in order; the context marks what each step wrote.
    server = daemon.events(run_id)
    wait_until(lambda: page.locator(".events-table tr.ev").count() == len(server), what="every event in the log")
    seqs = [int(s) for s in page.locator(".events-table tr.ev").evaluate_all("rows => rows.map(r => r.dataset.seq)")]
    assert seqs == [e["seq"] for e in server]
    expect(page.locator(".events-table td[data-pending]")).to_have_count(0)  # rows that came live name their step
    expect(page.locator(".events-table tr.ev").last.locator("xpath=preceding-sibling::tr[1]")).to_contain_text("finish")
    assert daemon.run(run_id)["context"]["summary"] == {"size": "small", "done": True}
    expect(page.locator(".jt-changed[data-path='[\"summary\"]'] .jt-mark")).to_have_text("← finish")
    page.click(".tl-item[data-state=finish] > .tl-head")
    expect(page.locator(".jt-changed.focus .jt-mark")).to_have_text("← finish")
    expect(page.locator(".tl-item[data-state=finish] .tl-body")).to_contain_text("Wrote summary")
    expect(page.locator(".run-diagram svg [data-state=finish]")).to_have_class(re.compile("st-succeeded"))
    web.shot("run-completed")

    # The list counts it in the 30-day success rate.
    page.click("nav a[data-nav=workflows]")
    expect(page.locator("tr[data-workflow=slow] .rate-num")).to_have_text("100%")
    web.shot("workflows-list")
    assert web.take_errors(http_error(400)) == []


def test_approve_from_the_inbox_and_resume_after_a_dropped_stream(daemon: Daemon, web: Page) -> None:
    daemon.add_workflow("gated", gated())  # no auth: anyone may decide
    hold = threading.Event()
    daemon.agent_server.behave("worker", hold=hold)
    daemon.start()
    page = web.page
    page.goto(daemon.base + "/#/approvals")
    expect(page.locator(".approvals .state-empty")).to_contain_text("Nothing waits for a decision")
    expect(page.locator(".topbar .conn[data-state=live]")).to_be_attached()

    run = daemon.start_run("gated")  # after the page loaded: the card must arrive over the global stream
    card = page.locator(f".approval-card[data-run='{run['id']}']")
    expect(card).to_be_visible()
    expect(card.locator(".approval-message")).to_have_text("Restart 3 pods?")
    expect(card).to_contain_text("anyone")
    expect(page.locator("#approvals-count")).to_have_text("1")
    web.shot("approvals-inbox")

    card.locator("textarea").fill("ship it")
    card.locator("button[data-action=approve]").click()
    expect(card).to_contain_text("Approved")
    expect(page.locator(".approvals .state-empty")).to_be_visible()
    expect(page.locator("#approvals-count")).to_be_hidden()
    decision = daemon.wait_status(run["id"], "RUNNING")["context"].get("decision") or {}
    assert decision.get("approved") is True and decision.get("comment") == "ship it"

    # The run continues; its stream is cut mid-run and resumes from the last event id it saw.
    page.goto(f"{daemon.base}/#/runs/{run['id']}")
    expect(page.locator(".tl-item[data-state=act][data-status=RUNNING]")).to_be_visible()
    expect(page.locator(".run-head .conn[data-state=live]")).to_be_visible()
    expect(page.locator(".approval-decided[data-status=approved]")).to_contain_text("ship it")
    page.evaluate("window.__station.dropStreams()")
    wait_until(lambda: page.evaluate("window.__station.run.connects") >= 2, what="the run stream to reconnect")
    hold.set()
    expect(page.locator(".run-head .badge[data-status=COMPLETED]")).to_be_visible()
    server = daemon.events(run["id"])
    wait_until(lambda: page.locator(".events-table tr.ev").count() == len(server), what="every event in the log")
    seqs = [int(s) for s in page.locator(".events-table tr.ev").evaluate_all("rows => rows.map(r => r.dataset.seq)")]
    assert seqs == list(range(1, len(server) + 1)), "a gap or a duplicate after the reconnect"
    expect(page.locator(".tl-item[data-state=act][data-status=SUCCEEDED]")).to_be_visible()
    web.shot("run-after-approval")
    assert web.take_errors() == []


def test_pause_resume_cancel_and_export_events(daemon: Daemon, web: Page) -> None:
    daemon.add_workflow("signals", SIGNALS)
    daemon.start()
    run = daemon.start_run("signals")
    daemon.wait_status(run["id"], "WAITING_SIGNAL")
    page = web.page
    page.goto(f"{daemon.base}/#/runs/{run['id']}")
    expect(page.locator(".run-head .badge[data-status=WAITING_SIGNAL]")).to_be_visible()
    expect(page.locator(".tl-item[data-state=first][data-status=WAITING_SIGNAL]")).to_be_visible()

    page.click("#pause-run")
    expect(page.locator(".run-head .badge[data-status=PAUSED]")).to_be_visible()
    assert daemon.run(run["id"])["status"] == "PAUSED"
    page.click("#resume-run")
    expect(page.locator(".run-head .badge[data-status=WAITING_SIGNAL]")).to_be_visible()

    page.click("#cancel-run")
    page.fill("#cancel-reason", "wrong target")
    web.shot("cancel-confirm")
    page.click("#confirm-cancel")
    expect(page.locator(".run-head .badge[data-status=CANCELLED]")).to_be_visible()
    expect(page.locator(".alert")).to_contain_text("wrong target")
    expect(page.locator(".tl-item[data-state=first][data-status=CANCELLED]")).to_be_visible()
    expect(page.locator("#cancel-run")).to_have_count(0)
    expect(page.locator("#pause-run")).to_have_count(0)
    final = daemon.run(run["id"])
    assert final["status"] == "CANCELLED" and final["error"]["message"] == "wrong target"
    expect(page.locator(".events-table tr.ev[data-type='run.cancelled']")).to_have_count(1)

    # The events log filters by type and exports what it shows as JSON.
    page.select_option("#event-type", "run.paused")
    expect(page.locator(".events-table tr.ev")).to_have_count(1)
    with page.expect_download() as dl:
        page.click("#export-events")
    exported = json.loads(Path(dl.value.path()).read_text())
    assert exported["runId"] == run["id"] and [e["type"] for e in exported["events"]] == ["run.paused"]
    page.select_option("#event-type", "")
    expect(page.locator(".events-table tr.ev")).to_have_count(len(daemon.events(run["id"])))
    web.shot("run-cancelled")
    assert web.take_errors() == []


def test_every_page_with_auth_on(daemon: Daemon, web: Page, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    daemon.env["STATION_API_TOKENS_FILE"] = str(tokens)
    daemon.add_workflow("slow", SLOW)
    daemon.add_workflow("gated", gated('["user:alice", "team:ops"]'))
    daemon.start()
    base = daemon.base

    def api(method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, base + path, headers=ALICE, timeout=15, **kw)

    done = api("POST", "/api/v1/workflow-runs", json={"workflowId": "slow", "input": {"items": [1, 2]}}).json()["run"]
    waiting = api("POST", "/api/v1/workflow-runs", json={"workflowId": "gated", "input": {}}).json()["run"]
    # A second version of `slow`, sent through the API (JSON), so there is something to diff.
    v2 = {"id": "slow", "name": "Slow loop", "inputSchema": {"type": "object"}, "start": "each", "states": [
        {"name": "each", "type": "foreach", "itemsPath": "items", "resultPath": "results", "maxConcurrency": 2,
         "iterator": {"states": [{"name": "work", "type": "operation", "action": "agent.run",
                                  "input": {"agent": "worker", "task": "item {{ item }}"}, "end": True}]}, "end": True}]}
    assert api("PUT", "/api/v1/workflows/slow", json=v2).status_code == 200
    wait_until(lambda: api("GET", f"/api/v1/workflow-runs/{done['id']}").json()["status"] == "COMPLETED", what="the first run")

    page = web.page
    page.goto(base + "/")
    expect(page.locator("#token")).to_be_visible()  # the API answered 401: the token screen
    page.fill("#token", "wrong-token-0000000000")
    page.click(".token-card button[type=submit]")
    expect(page.locator(".token-card .field-error")).to_contain_text("not accepted")
    web.shot("auth-token-rejected")
    page.fill("#token", "alice-token-0123456789")
    page.click(".token-card button[type=submit]")
    expect(page.locator("tr[data-workflow=slow]")).to_be_visible()
    assert web.take_errors(http_error(401)) == []  # only the 401s that brought up the token screen
    expect(page.locator("#signout")).to_be_visible()
    expect(page.locator(".topbar .conn[data-state=live]")).to_be_attached()  # the global stream, authenticated
    expect(page.locator("tr[data-workflow=gated] .cell-rate")).to_contain_text("1 active")
    web.shot("auth-workflows")

    page.goto(base + "/#/workflows/slow")
    expect(page.locator(".diagram svg [data-state=each]")).to_be_visible()
    expect(page.locator(".diagram .dg-lane")).to_have_count(1)
    page.goto(base + "/#/workflows/gated")
    expect(page.locator(".diagram svg [data-state=ask].dg-approval")).to_be_visible()
    expect(page.locator(".stats")).to_contain_text("Runs")
    web.shot("auth-workflow-overview")
    page.goto(base + "/#/workflows/slow/runs")
    expect(page.locator(f"tr[data-run='{done['id']}'] .badge[data-status=COMPLETED]")).to_be_visible()
    page.select_option("#runs-status", label="Failed")
    expect(page.locator(".tab-panel .state-empty")).to_contain_text("No run with this status")
    page.goto(base + "/#/workflows/slow/definition")
    expect(page.locator(".code-view .code-line")).to_have_count(len(json.dumps(v2, indent=2).splitlines()))
    page.goto(base + "/#/workflows/slow/versions")
    expect(page.locator("#diff-mode")).to_have_value("normalized")  # YAML v1 against JSON v2
    expect(page.locator(".diff-line.add").filter(has_text='"maxConcurrency": 2')).to_have_count(1)
    page.select_option("#diff-from", "2")
    expect(page.locator(".diff-stat")).to_contain_text("identical")
    page.select_option("#diff-from", "1")
    web.shot("auth-versions-diff")
    page.goto(base + f"/#/runs/{done['id']}")
    expect(page.locator(".tl-item[data-state=work]")).to_have_count(2)
    web.shot("auth-run-completed")
    page.goto(base + "/#/approvals")
    expect(page.locator(f".approval-card[data-run='{waiting['id']}']")).to_be_visible()

    # Decide on the run page: it carries on live over the authenticated run stream.
    page.goto(base + f"/#/runs/{waiting['id']}")
    expect(page.locator(".run-head .conn[data-state=live]")).to_be_visible()
    page.locator(".approval-card textarea").fill("go")
    page.click(".approval-card button[data-action=approve]")
    expect(page.locator(".run-head .badge[data-status=COMPLETED]")).to_be_visible()
    expect(page.locator(".approval-decided[data-status=approved]")).to_contain_text("by alice")
    web.shot("auth-run-approved")

    # Narrow screens: no page-level horizontal scrolling (wide parts scroll inside their boxes).
    page.set_viewport_size({"width": 400, "height": 860})
    for name, route, ready in [("workflows", "#/workflows", "tr[data-workflow=slow]"),
                               ("workflow", "#/workflows/slow", ".diagram svg"),
                               ("run", f"#/runs/{waiting['id']}", ".tl-item[data-state=act]"),
                               ("approvals", "#/approvals", ".approvals .state-empty")]:
        page.goto(f"{base}/{route}")
        expect(page.locator(ready).first).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 400, f"{name} is {width}px wide at 400px"
        web.shot(f"narrow-{name}")
    page.click("#signout")
    expect(page.locator("#token")).to_be_visible()
    assert web.take_errors() == []


def test_disable_enable_sync_and_rollback(daemon: Daemon, web: Page) -> None:
    """PRD §7: Disable / Enable on the list and the detail page, the file's sync status with its Sync
    button, rollback from the Versions tab (a new version made from an old one)."""
    file = daemon.add_workflow("signals", SIGNALS)
    daemon.start()
    page = web.page
    page.goto(daemon.base + "/#/workflows")
    row = page.locator("tr[data-workflow=signals]")
    expect(row.locator("[data-sync=in_sync]")).to_have_text("in sync")
    expect(row.locator("button[data-sync-workflow]")).to_have_count(0)  # nothing to sync

    # Disable and Enable on the list: the daemon's status changes, the Run button follows.
    row.locator("button[data-disable=signals]").click()
    expect(row.locator(".pill-disabled")).to_have_text("disabled")
    expect(row.locator("button[data-run=signals]")).to_be_disabled()
    assert daemon.request("GET", "/api/v1/workflows/signals").json()["status"] == "disabled"
    row.locator("button[data-enable=signals]").click()
    expect(row.locator(".pill-active")).to_have_text("active")
    expect(row.locator("button[data-run=signals]")).to_be_enabled()
    assert daemon.request("GET", "/api/v1/workflows/signals").json()["status"] == "active"

    # The file changes on disk: the list says so; Sync on the list makes version 2 from it.
    file.write_text(SIGNALS.replace("signal: go", "signal: went"))
    page.reload()
    expect(row.locator("[data-sync=file_changed]")).to_have_text("file changed")
    web.shot("workflows-sync-file-changed")
    row.locator("button[data-sync-workflow=signals]").click()
    expect(row.locator("[data-sync=in_sync]")).to_be_visible()
    expect(row).to_contain_text("v2")
    assert daemon.request("GET", "/api/v1/workflows/signals").json()["version"] == 2

    # The detail page: Disable / Enable there too; the file removed, Sync disables the workflow.
    page.goto(daemon.base + "/#/workflows/signals")
    expect(page.locator("#wf-status")).to_have_text("active")
    page.click("#wf-disable")
    expect(page.locator("#wf-status")).to_have_text("disabled")
    page.click("#wf-enable")
    expect(page.locator("#wf-status")).to_have_text("active")
    file.unlink()
    page.reload()
    expect(page.locator(".page-head [data-sync=file_removed]")).to_have_text("file removed")
    web.shot("workflow-sync-file-removed")
    page.click("#sync-wf")
    expect(page.locator("#wf-status")).to_have_text("disabled")
    assert daemon.request("GET", "/api/v1/workflows/signals").json()["status"] == "disabled"
    page.click("#wf-enable")
    expect(page.locator("#wf-status")).to_have_text("active")

    # Rollback from the Versions tab: v3 is made from v1 (a confirm step first); history stays.
    page.goto(daemon.base + "/#/workflows/signals/versions")
    expect(page.locator("tr[data-version='2'] .cell-actions")).to_have_text("latest")
    page.click("tr[data-version='1'] button[data-rollback='1']")
    expect(page.locator("#confirm-rollback")).to_have_text("Make v3 from v1")
    web.shot("versions-rollback-confirm")
    page.click("#confirm-rollback")
    expect(page.locator("tr[data-version='3'] .cell-actions")).to_have_text("latest")
    versions = daemon.request("GET", "/api/v1/workflows/signals/versions").json()["versions"]
    assert [v["version"] for v in versions] == [3, 2, 1] and versions[0]["contentHash"] == versions[2]["contentHash"]
    expect(page.locator("tr[data-version='1'] button[data-rollback='1']")).to_be_disabled()  # v3 has its content
    web.shot("versions-after-rollback")
    assert web.take_errors() == []


PARENT = """
id: parent
start: call
states:
  - { name: call, type: operation, action: workflow.run, input: { workflow: kid, input: { n: 1 }, wait: true }, resultPath: child, end: true }
"""
KID = """
id: kid
start: a
states:
  - { name: a, type: inject, data: { kid: true }, end: true }
"""


def test_rerun_redrive_and_run_lineage(daemon: Daemon, web: Page) -> None:
    """The run page's Re-run and Redrive buttons and its links to parent, re-run and child runs (issue 16's API)."""
    daemon.add_workflow("gated", gated())
    daemon.add_workflow("parent", PARENT)
    daemon.add_workflow("kid", KID)
    daemon.start()
    run = daemon.start_run("gated")

    def reject_pending() -> None:
        found: dict[str, str] = {}

        def pending() -> bool:
            for a in daemon.request("GET", f"/api/v1/workflow-runs/{run['id']}/approvals").json()["approvals"]:
                if a["status"] == "pending":
                    found["id"] = a["id"]
                    return True
            return False

        wait_until(pending, what="a pending approval")
        resp = daemon.request("POST", f"/api/v1/workflow-runs/{run['id']}/approvals/{found['id']}/reject", json={})
        assert resp.status_code == 200, resp.text

    reject_pending()
    daemon.wait_status(run["id"], "FAILED")
    page = web.page
    page.goto(f"{daemon.base}/#/runs/{run['id']}")
    expect(page.locator(".run-head .badge[data-status=FAILED]")).to_be_visible()
    expect(page.locator("#rerun-run")).to_be_visible()
    web.shot("run-failed-rerun-redrive")

    # Redrive: the same run, RUNNING again, only the failed approval step re-executed.
    page.click("#redrive-run")
    expect(page.locator(".run-head .badge[data-status=WAITING_APPROVAL]")).to_be_visible()
    assert daemon.run(run["id"])["redriveCount"] == 1
    expect(page.locator("#redrive-run")).to_have_count(0)  # an active run has nothing to redrive
    reject_pending()
    expect(page.locator(".run-head .badge[data-status=FAILED]")).to_be_visible()

    # Re-run: a new run of the same version and input; its page links back to this one.
    page.click("#rerun-run")
    page.wait_for_url(re.compile(r"#/runs/(?!" + run["id"] + r")[0-9a-f-]+$"))
    new_id = page.url.rsplit("/", 1)[1]
    assert daemon.run(new_id)["rerunOf"] == run["id"]
    expect(page.locator("[data-link='re-run of']")).to_have_attribute("href", f"#/runs/{run['id']}")

    # A parent run links to its child and the child back to its parent.
    parent = daemon.start_run("parent")
    daemon.wait_status(parent["id"], "COMPLETED")
    page.goto(f"{daemon.base}/#/runs/{parent['id']}")
    expect(page.locator("[data-link=child]")).to_have_count(1)
    page.click("[data-link=child]")
    expect(page.locator("[data-link=parent]")).to_have_attribute("href", f"#/runs/{parent['id']}")
    web.shot("run-child-lineage")
    assert web.take_errors() == []
