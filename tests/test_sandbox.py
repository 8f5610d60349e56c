"""Expressions are evaluated in sandbox processes: a crash, a memory bomb or a CPU burn costs one
sandbox process and fails its step, never the daemon (issue 11 item 1)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest

from station_wf.deferral import Deferred, TxScope
from station_wf.expr import sandbox
from station_wf.expr.starlark_eval import ExpressionError, compile_expression
from tests.conftest import Daemon


async def _evaluate(source: str, names: dict[str, Any], timeout_s: float = 0.1) -> Any:
    """What a daemon transaction does: look up, defer, let the pool evaluate, look up again."""
    scope = TxScope()
    for _ in range(3):
        try:
            return scope.call(lambda: compile_expression(source).evaluate(names, timeout_s=timeout_s))
        except Deferred as deferred:
            await deferred.prepare(scope)
    raise AssertionError("no answer after two deferrals")


def test_the_pool_survives_crashes_memory_bombs_and_burns() -> None:
    async def main() -> None:
        pool = sandbox.SandboxPool(2, memory_mb=512)
        await pool.start()
        sandbox.install(pool)
        try:
            assert await _evaluate("x.a + 1", {"x": {"a": 1}}) == 2
            assert await _evaluate("None", {}) is None
            hostile = {
                "len('x' * 2147483647) > 0": ("crash", "memory"),
                "[0] * 1000000000": ("crash", "memory"),
                "len(list(range(100000000)))": ("crash", "memory"),
                "[x for x in range(1000000000)]": ("timeout",),
                "'a' * 3000000": ("result_too_large",),
            }
            for source, kinds in hostile.items():
                started = time.monotonic()
                with pytest.raises(ExpressionError) as err:
                    await _evaluate(source, {})
                assert err.value.kind in kinds, (source, err.value.kind, err.value.reason)
                assert time.monotonic() - started < 10, source
            # The pool replaced what died and still answers.
            assert await _evaluate("len(x)", {"x": [1, 2, 3]}) == 3
            assert pool.crashes + pool.kills >= 1
            with pytest.raises(ExpressionError) as err:
                await _evaluate("fail('boom')", {})
            assert err.value.reason == "fail: boom"  # the cause, not a traceback headline (probe L5)
        finally:
            sandbox.install(None)
            await pool.close()

    asyncio.run(main())


def test_outside_a_transaction_expressions_evaluate_in_process() -> None:
    """Tools and the pure interpreter's tests need no pool; nothing defers without a transaction."""
    assert compile_expression("a * 2").evaluate({"a": 21}) == 42


HOSTILE = """
id: hostile
inputSchema: { type: object, properties: { case: { type: string } } }
start: route
states:
  - name: route
    type: switch
    conditions:
      - { if: "case == 'switch_bomb'", next: switch_bomb }
      - { if: "case == 'list_bomb'", next: list_bomb }
      - { if: "case == 'range_bomb'", next: range_bomb }
      - { if: "case == 'burn'", next: burn }
      - { if: "case == 'template_bomb'", next: template_bomb }
    defaultNext: done
  - name: switch_bomb
    type: switch
    conditions: [ { if: "len('x' * 2147483647) > 0", next: done } ]
  - { name: list_bomb, type: transform, expression: "[0] * 1000000000", end: true }
  - { name: range_bomb, type: transform, expression: "len(list(range(100000000)))", end: true }
  - { name: burn, type: transform, expression: "len([x for x in range(1000000000)])", end: true }
  - name: template_bomb
    type: operation
    action: agent.run
    input: { agent: echo, task: "{{ 'a' * 100000000 }}" }
    end: true
  - { name: done, type: inject, data: { ok: true }, end: true }
"""


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_hostile_expressions_fail_their_run_and_the_daemon_stays_up(daemon: Daemon) -> None:
    daemon.add_agent("echo")
    daemon.add_workflow("hostile", HOSTILE)
    daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    worst = {"healthz": 0.0, "rss": 0.0}
    stop = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=daemon.base, timeout=10) as client:
            for _ in range(2000):  # bounded: ~100 s at most
                if stop.is_set():
                    return
                started = time.monotonic()
                client.get("/healthz")
                worst["healthz"] = max(worst["healthz"], time.monotonic() - started)
                worst["rss"] = max(worst["rss"], _rss_mb(pid))
                time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for case in ("switch_bomb", "list_bomb", "range_bomb", "burn", "template_bomb"):
            run = daemon.wait_status(daemon.start_run("hostile", {"case": case})["id"], "FAILED", timeout=60)
            assert run["error"]["type"] in ("expression", "template"), (case, run["error"])
            failed = [s for s in run["steps"] if s["status"] == "FAILED"]
            assert failed and failed[0]["error"]["message"], case
            assert daemon.proc.poll() is None, f"the daemon died on {case}"
        assert daemon.agent_server.calls_for("echo") == []  # the 100 MB task never reached the agent
        plain = daemon.wait_status(daemon.start_run("hostile", {"case": "none"})["id"], "COMPLETED")
        assert plain["context"]["ok"] is True
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert worst["healthz"] < 1.0, worst
    assert worst["rss"] < 400, worst  # the bombs allocate in the sandbox processes, not in the daemon
