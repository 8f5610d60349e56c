"""Redrive decided by the pure core (core/redrive.py), driven in memory through the real interpreter:
which steps run again at every nesting level, what is kept, and what cannot be redriven."""

from __future__ import annotations

from typing import Any

import pytest

from station_wf.core import history, model
from station_wf.core.redrive import NotRedrivable, redrive_run
from station_wf.dsl.loader import normalize_definition
from tests.test_interpreter import PARALLEL, Replay, load, op


class Redrivable(Replay):
    """Replay plus what the SQLite shell does for a redrive: reopened containers, cleared run error."""

    def __init__(self, defn: dict[str, Any], run_input: dict[str, Any] | None = None, failing: set[str] | None = None) -> None:
        self.failing = failing if failing is not None else set()
        super().__init__(defn, run_input, execute=self._execute)

    def _execute(self, name: str, inp: dict[str, Any], attempt: int) -> Any:
        if name in self.failing or inp.get("task") in self.failing:
            raise RuntimeError(f"{name} failed")
        return {"from": name, "task": inp.get("task"), "ok": True}

    def apply(self, t: model.Transition) -> None:
        reopened = [n for n in t.new_steps if n.reopened]
        t.new_steps = [n for n in t.new_steps if not n.reopened]
        super().apply(t)
        for n in reopened:
            assert (n.step_id, n.attempt) not in self.steps
            self.steps[(n.step_id, n.attempt)] = {"state": n.state_name, "type": n.state_type, "branch": n.branch_path,
                                                  "index": n.foreach_index, "status": model.RUNNING}
        if t.reopen:
            self.error = None

    def latest(self) -> list[model.StepView]:
        out: dict[str, model.StepView] = {}
        for sid, attempt in self.steps:
            out.pop(sid, None)
            out[sid] = self.view((sid, attempt))
        return list(out.values())

    def redrive(self, number: int = 1) -> Redrivable:
        self.calls.clear()
        self.apply(redrive_run(self.defn, self.state(), self.status, self.latest(), "ops", number))
        return self.drain()


def test_a_failed_step_runs_again_and_the_succeeded_ones_never() -> None:
    defn = load("""
id: t
start: a
states:
  - { name: a, type: operation, action: agent.run, input: { agent: w, task: a }, next: b }
  - { name: b, type: operation, action: agent.run, input: { agent: w, task: b }, next: c }
  - { name: c, type: operation, action: agent.run, input: { agent: w, task: c }, end: true }
""")
    r = Redrivable(defn, failing={"b"}).run()
    assert r.status == model.FAILED and [c[0] for c in r.calls] == ["a", "b"]
    r.failing.clear()
    r.redrive()
    assert r.status == model.COMPLETED and r.error is None
    assert [c for c in r.calls] == [("b", 2), ("c", 1)]  # a kept its result; b's attempt 2
    assert r.context["steps"]["a"]["task"] == "a" and r.context["steps"]["c"]["task"] == "c"
    redriven = [p for k, p, _ in r.events if k == "run.redriven"]
    assert redriven[0]["steps"][0]["stateName"] == "b" and redriven[0]["from"] == model.FAILED
    assert history.rebuild_context([(k, p) for k, p, _ in r.events]) == r.context


def test_only_the_failed_parallel_branch_runs_again() -> None:
    r = Redrivable(load(PARALLEL), failing={"check_errors"}).run()
    assert r.status == model.FAILED
    r.failing.clear()
    r.redrive()
    assert r.status == model.COMPLETED
    assert [c[0] for c in r.calls] == ["check_errors", "after"]  # check_pods succeeded: not again
    diag = [s for s in r.steps.values() if s["state"] == "diag"]
    assert [s["status"] for s in diag] == [model.FAILED, model.SUCCEEDED]  # a new attempt of the container


FOREACH = {
    "id": "f", "start": "each", "states": [{
        "name": "each", "type": "foreach", "itemsPath": "xs", "maxConcurrency": 2, "resultPath": "steps.out", "end": True,
        "iterator": {"states": [op("work")]}}]}


def test_only_the_failed_foreach_iteration_runs_again_and_the_rest_continue() -> None:
    defn = normalize_definition(FOREACH)
    tasks = ["a", "b", "c", "d", "e"]
    r = Redrivable(defn, {"xs": tasks}, failing={"c"})
    r.defn["states"]["each"]["iterator"]["states"]["work"]["input"]["task"] = "{{ item }}"
    r.run()
    assert r.status == model.FAILED
    done_before = [c for c in r.calls]
    r.failing.clear()
    r.redrive()
    assert r.status == model.COMPLETED
    again = {inp for inp in (r.steps[k].get("output", {}).get("task") for k in r.steps if r.steps[k]["state"] == "work"
                             and r.steps[k]["status"] == model.SUCCEEDED) if inp}
    assert again == set(tasks)
    assert [o["steps"]["work"]["task"] for o in r.context["steps"]["out"]] == tasks  # in item order
    # a and b succeeded before the failure: neither ran again
    succeeded_before = {"a", "b"}
    assert len(done_before) >= 3
    rerun = [r.steps[(sid, a)]["index"] for (sid, a) in r.steps if r.steps[(sid, a)]["state"] == "work" and a > 1]
    assert rerun and all(tasks[i] not in succeeded_before for i in rerun)


def test_nested_parallel_in_foreach_resumes_only_the_unfinished_branch() -> None:
    defn = normalize_definition({
        "id": "n", "start": "outer", "states": [{
            "name": "outer", "type": "foreach", "itemsPath": "xs", "maxConcurrency": 1, "resultPath": "steps.out", "end": True,
            "iterator": {"states": [{
                "name": "par", "type": "parallel", "end": True, "resultPath": "p",
                "branches": [{"name": "a", "states": [op("a1")]}, {"name": "b", "states": [op("b1")]}]}]}}]})
    r = Redrivable(defn, {"xs": [1, 2]}, failing={"b1"}).run()
    assert r.status == model.FAILED and [c[0] for c in r.calls] == ["a1", "b1"]
    r.failing.clear()
    r.redrive()
    assert r.status == model.COMPLETED
    assert [c[0] for c in r.calls] == ["b1", "a1", "b1"]  # iteration 0's b1 again, then iteration 1 whole
    assert len(r.context["steps"]["out"]) == 2


def test_try_resumes_the_section_whose_error_was_not_handled() -> None:
    base = {"id": "t", "start": "guard", "states": [{
        "name": "guard", "type": "try", "next": "after",
        "try": [op("risky", "after_risky"), op("after_risky")],
        "finally": [op("cleanup")],
    }, op("after")]}
    # no catch: the try body failed, the finally ran; redrive runs the body's failed step, then finally again
    r = Redrivable(normalize_definition(base), failing={"risky"}).run()
    assert r.status == model.FAILED and [c[0] for c in r.calls] == ["risky", "cleanup"]
    r.failing.clear()
    r.redrive()
    assert r.status == model.COMPLETED and [c[0] for c in r.calls] == ["risky", "after_risky", "cleanup", "after"]
    # with a catch that fails: the catch runs again (the body's error stays handled), never the body
    with_catch = {**base, "states": [{**base["states"][0], "catch": [op("handle")]}, op("after")]}
    r = Redrivable(normalize_definition(with_catch), failing={"risky", "handle"}).run()
    assert r.status == model.FAILED and [c[0] for c in r.calls] == ["risky", "handle", "cleanup"]
    r.failing.clear()
    r.redrive()
    assert r.status == model.COMPLETED and [c[0] for c in r.calls] == ["handle", "cleanup", "after"]
    # the finally itself failed: only it runs again
    r = Redrivable(normalize_definition(base), failing={"cleanup"}).run()
    assert r.status == model.FAILED
    r.failing.clear()
    r.redrive()
    assert r.status == model.COMPLETED and [c[0] for c in r.calls] == ["cleanup", "after"]


def test_a_cancelled_run_continues_its_cancelled_steps_and_a_completed_one_is_refused() -> None:
    defn = load("""
id: t
start: a
states:
  - { name: a, type: operation, action: agent.run, input: { agent: w, task: a }, next: b }
  - { name: b, type: operation, action: agent.run, input: { agent: w, task: b }, end: true }
""")
    r = Redrivable(defn)
    r.apply(__import__("station_wf.core.interpreter", fromlist=["x"]).start_run(defn, r.state()))
    r.apply(__import__("station_wf.core.interpreter", fromlist=["x"]).cancel_run(r.state(), "stop", "me"))
    assert r.status == model.CANCELLED and not r.calls
    r.redrive()
    assert r.status == model.COMPLETED and [c[0] for c in r.calls] == ["a", "b"]
    with pytest.raises(NotRedrivable, match="COMPLETED"):
        redrive_run(defn, r.state(), r.status, r.latest(), None, 2)
    with pytest.raises(NotRedrivable, match="still active"):
        redrive_run(defn, r.state(), model.RUNNING, r.latest(), None, 2)


def test_a_run_that_failed_after_its_last_step_is_refused_with_the_reason() -> None:
    r = Redrivable(load("""
id: t
start: a
states:
  - { name: a, type: inject, data: { x: 1 }, end: true }
"""))
    r.run()
    with pytest.raises(NotRedrivable, match="no failed step"):
        redrive_run(r.defn, r.state(), model.FAILED, r.latest(), None, 1)


def test_a_decided_approval_stays_decided_and_is_not_asked_again() -> None:
    from station_wf.core import waits

    defn = load("""
id: t
start: gate
states:
  - { name: gate, type: operation, action: human.approval, input: { message: go? }, next: act }
  - { name: act, type: operation, action: agent.run, input: { agent: w, task: act }, end: true }
""")
    r = Redrivable(defn, failing={"act"}).run()
    (key, gate), = [(k, s) for k, s in r.steps.items() if s["state"] == "gate"]
    assert gate["status"] == model.WAITING_APPROVAL and not r.calls
    r.apply(waits.approval_decided(defn, r.state(), r.view(key), "approved", "ann", None, "fail", "ap-1"))
    r.drain()
    assert r.status == model.FAILED
    r.failing.clear()
    t = redrive_run(defn, r.state(), r.status, r.latest(), "ops", 1)
    assert not t.approvals and [n.state_name for n in t.new_steps] == ["act"]
    r.apply(t)
    r.drain()
    assert r.status == model.COMPLETED and r.context["steps"]["gate"]["decidedBy"] == "ann"
    assert [s["status"] for s in r.steps.values() if s["state"] == "gate"] == [model.SUCCEEDED]


def test_a_loop_that_revisits_a_try_continues_this_visits_section() -> None:
    """Visit 1's body failed and its catch handled it; visit 2 is cancelled inside the body: the
    redrive runs visit 2's body again (an earlier visit's sections change nothing)."""
    from station_wf.core import interpreter as ip

    defn = normalize_definition({"id": "loop", "start": "G", "states": [
        {"name": "G", "type": "try", "next": "count", "try": [op("risky")], "catch": [op("handle")]},
        {"name": "count", "type": "transform", "expression": "(steps.get('count') or 0) + 1", "resultPath": "steps.count",
         "next": "check"},
        {"name": "check", "type": "switch", "conditions": [{"if": "steps.count < 2", "next": "G"}], "defaultNext": "done"},
        {"name": "done", "type": "inject", "data": {"ok": True}, "end": True}]})
    r = Redrivable(defn)
    r.apply(ip.start_run(defn, r.state()))
    for _ in range(100):  # drive by hand: visit 1's risky fails, visit 2's is in flight when the run is cancelled
        key = r.queue.popleft()
        if r.steps[key]["status"] not in model.OPEN_STEP_STATUSES:
            continue
        decided = ip.begin_step(defn, r.state(), r.view(key))
        if isinstance(decided, model.Transition):
            r.apply(decided)
            continue
        r.steps[key]["status"] = model.RUNNING
        if r.steps[key]["state"] == "risky" and key[1] == 2:
            break
        if r.steps[key]["state"] == "risky":
            r.apply(ip.step_failed(defn, r.state(), r.view(key), {"type": "x", "message": "boom"}))
        else:
            r.apply(ip.step_succeeded(defn, r.state(), r.view(key), {"ok": 1}))
    r.apply(ip.cancel_run(r.state(), "stop", "me"))
    r.redrive()
    assert r.status == model.COMPLETED and [c[0] for c in r.calls] == ["risky"]


def test_a_run_cancelled_before_it_started_is_started_with_its_history_whole() -> None:
    from station_wf.core import interpreter as ip

    defn = load("""
id: t
start: a
states:
  - { name: a, type: inject, data: { x: 1 }, next: b }
  - { name: b, type: operation, action: agent.run, input: { agent: w, task: b }, end: true }
""")
    r = Redrivable(defn)
    r.apply(ip.cancel_run(r.state(), "stop", "me"))
    r.redrive()
    assert r.status == model.COMPLETED and [c[0] for c in r.calls] == ["b"]
    kinds = [k for k, _, _ in r.events]
    assert kinds.index("run.redriven") < kinds.index("run.started")
    assert history.rebuild_context([(k, p) for k, p, _ in r.events]) == r.context
