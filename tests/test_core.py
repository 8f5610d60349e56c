"""The core room: its imports stay inside the language, and the rules it obeys arrive as data."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from station_wf.core import history, model
from station_wf.core import interpreter as ip
from station_wf.dsl.loader import parse_definition
from tests.conftest import Daemon

PACKAGE = Path(__file__).resolve().parent.parent / "station_wf"

# room -> the project packages it may import (itself included)
ALLOWED = {
    "core": {"core", "expr", "deferral"},
    "expr": {"expr", "deferral"},
    "dsl": {"dsl", "expr"},
}


def _project_imports(path: Path) -> set[str]:
    """The `station_wf.<room>` names a module imports, lazy imports inside functions included."""
    rooms: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "station_wf" and len(parts) > 1:
                rooms.add(parts[1])
    return rooms


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_room_imports_only_what_it_may(room: str) -> None:
    files = sorted((PACKAGE / room).rglob("*.py"))
    assert files, room
    wrong = {f"{f.relative_to(PACKAGE)} -> {sorted(_project_imports(f) - ALLOWED[room])}"
             for f in files if _project_imports(f) - ALLOWED[room]}
    assert not wrong, wrong


def test_no_package_module_over_600_lines_in_my_rooms() -> None:
    big = {str(f.relative_to(PACKAGE)): n for room in ("core", "dsl", "expr", "agents", "executors")
           for f in (PACKAGE / room).rglob("*.py") if (n := len(f.read_text().splitlines())) > 600}
    assert not big, big


RETRY = """
id: rules
start: call
states:
  - name: call
    type: operation
    action: agent.run
    input: {agent: a, task: t}
    retry: {maxAttempts: 50, backoffSeconds: 10, backoffRate: 10}
    end: true
"""

TRANSFORM = """
id: slow
start: work
states:
  - name: work
    type: transform
    expression: "len([i for i in range(200000) if i % 7 == 0])"
    end: true
"""


def _run(defn: dict, rules: model.Rules) -> tuple[model.RunState, model.StepView]:
    context = history.initial_context(defn, "r1", 1, {}, "t0")
    start = ip.start_run(defn, model.RunState("r1", context, {}, rules=rules))
    step = start.new_steps[0]
    view = model.StepView(step.step_id, step.state_name, step.attempt, status=model.PENDING, state_type=step.state_type)
    return model.RunState("r1", context, start.engine, (view,), "now", rules=rules), view


def test_retry_cap_comes_from_the_rules_in_the_run_state() -> None:
    defn = parse_definition(RETRY)
    for cap in (5.0, 42.0):
        run, view = _run(defn, model.Rules(retry_max_backoff_s=cap))
        failed = model.StepView(view.step_id, view.state_name, 9, status=model.RUNNING)
        t = ip.step_failed(defn, run, failed, {"type": "agent_error", "message": "boom"})
        assert [s.delay_seconds for s in t.new_steps] == [cap]


def test_step_timeout_comes_from_the_rules_in_the_run_state() -> None:
    defn = parse_definition(RETRY.replace("    retry: {maxAttempts: 50, backoffSeconds: 10, backoffRate: 10}\n", ""))
    run, view = _run(defn, model.Rules(step_timeout_default_s=7.0))
    running = model.StepView(view.step_id, view.state_name, 1, status=model.RUNNING, state_type="operation")
    t = ip.timer_fired(defn, run, "step_timeout", running)
    assert t is not None and t.run_status == model.FAILED
    assert any("timed out after 7s" in (u.error or {}).get("message", "") for u in t.step_updates)


def test_expression_timeout_comes_from_the_rules_in_the_run_state() -> None:
    defn = parse_definition(TRANSFORM)
    run, view = _run(defn, model.Rules())
    ok = ip.begin_step(defn, run, view)
    assert isinstance(ok, model.Transition) and ok.run_status == model.COMPLETED
    run, view = _run(defn, model.Rules(expression_timeout_s=1e-6))
    cut = ip.begin_step(defn, run, view)
    assert isinstance(cut, model.Transition) and cut.run_status == model.FAILED
    assert cut.run_error is not None and cut.run_error["type"] == "expression"
    assert "timed out after 1e-06s" in cut.run_error["message"]


def test_the_daemon_hands_its_expression_timeout_to_the_core(daemon: Daemon) -> None:
    """STATION_EXPRESSION_TIMEOUT_MS reaches the interpreter through LIMITS.rules and the RunState."""
    daemon.add_workflow("slow", TRANSFORM)
    daemon.start(extra_env={"STATION_EXPRESSION_TIMEOUT_MS": "1"})
    run = daemon.start_run("slow")
    failed = daemon.wait_status(run["id"], "FAILED", timeout=30)
    assert failed["error"]["type"] == "expression", failed["error"]
    assert "timed out after 0.001s" in failed["error"]["message"], failed["error"]
