"""The dashboard's run list filters by correlation id and tag (issue 18), in a real browser."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.conftest import Daemon
from tests.test_dashboard import Page, browser, web  # noqa: F401 - the dashboard module's fixtures

TINY = """
id: tiny
start: a
states:
  - { name: a, type: inject, data: { x: 1 }, end: true }
"""


def test_the_run_list_filters_by_correlation_id_and_tag(daemon: Daemon, web: Page) -> None:  # noqa: F811
    daemon.add_workflow("tiny", TINY)
    daemon.start()
    a = daemon.start_run("tiny", correlationId="order-1", tags={"env": "prod"})
    b = daemon.start_run("tiny", tags={"env": "dev"})
    page = web.page
    page.goto(daemon.base + "/#/workflows/tiny/runs")
    expect(page.locator(f"tr[data-run='{b['id']}']")).to_be_visible()
    page.fill("#runs-correlation", "order-1")
    page.press("#runs-correlation", "Enter")
    expect(page.locator(f"tr[data-run='{b['id']}']")).to_have_count(0)
    expect(page.locator(f"tr[data-run='{a['id']}']")).to_be_visible()
    page.fill("#runs-correlation", "")
    page.fill("#runs-tag", "env:dev")
    page.press("#runs-tag", "Enter")
    expect(page.locator(f"tr[data-run='{a['id']}']")).to_have_count(0)
    expect(page.locator(f"tr[data-run='{b['id']}']")).to_be_visible()
    page.fill("#runs-tag", "env:none")
    page.press("#runs-tag", "Enter")
    expect(page.locator(".tab-panel .state-empty")).to_contain_text("No run matches these filters")
    web.shot("runs-filtered-by-tag")
    assert web.take_errors() == []
