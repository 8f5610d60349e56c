"""The pure interpreter: decisions from (definition, state, event) with no I/O.

`Replay` below applies transitions to plain dicts the way the SQLite shell does, so whole workflows
can be driven through the real interpreter without a database; property tests use it to check
termination, stable step ids and rebuilding the context from the event log.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from station_wf.core import history, model
from station_wf.core import interpreter as ip
from station_wf.core.identity import idempotency_key, step_id
from station_wf.dsl.loader import normalize_definition, parse_definition


class Replay:
    """Drives a run through the interpreter in memory, mirroring store.runs.apply_transition."""

    def __init__(self, defn: dict[str, Any], run_input: dict[str, Any] | None = None,
                 execute: Callable[[str, dict[str, Any], int], Any] | None = None, run_id: str = "run-1") -> None:
        self.defn = defn
        self.run_id = run_id
        self.context = history.initial_context(defn, run_id, 1, run_input or {}, "t0")
        self.engine: dict[str, Any] = {}
        self.status = model.PENDING
        self.error: dict[str, Any] | None = None
        self.steps: dict[tuple[str, int], dict[str, Any]] = {}
        # As store.runs.insert_run: run.created carries the input (run.started only what the start added).
        self.events: list[tuple[str, dict[str, Any], str | None]] = [
            ("run.created", {"workflowId": defn.get("id"), "version": 1, "input": run_input or {}}, None)]
        self.queue: deque[tuple[str, int]] = deque()
        self.timers: list[tuple[float, str, str | None, int | None]] = []
        self.clock = 0.0
        self.execute = execute or (lambda name, inp, attempt: {"from": name})
        self.calls: list[tuple[str, int]] = []

    def state(self) -> model.RunState:
        open_steps = tuple(self.view(k) for k, s in self.steps.items() if s["status"] in model.OPEN_STEP_STATUSES)
        return model.RunState(self.run_id, self.context, self.engine, open_steps, "now")

    def view(self, key: tuple[str, int]) -> model.StepView:
        s = self.steps[key]
        return model.StepView(key[0], s["state"], key[1], s["branch"], s["index"], s["status"], s["type"])

    def apply(self, t: model.Transition) -> None:
        for u in t.step_updates:
            s = self.steps[(u.step_id, u.attempt)]
            if u.only_if_open and s["status"] not in model.OPEN_STEP_STATUSES:
                continue
            s["status"] = u.status
            if u.output is not None:
                s["output"] = u.output
        if t.context is not None:
            self.context = t.context
        if t.engine is not None:
            self.engine = t.engine
        if t.run_status is not None:
            self.status = t.run_status
        if t.run_error is not None:
            self.error = t.run_error
        for e in t.events:
            self.events.append((e.type, e.payload, e.step_id))
        for new in t.new_steps:
            attempt = max([a for (sid, a) in self.steps if sid == new.step_id], default=0) + 1
            attempt = max(attempt, new.attempt)
            self.steps[(new.step_id, attempt)] = {"state": new.state_name, "type": new.state_type, "branch": new.branch_path,
                                                  "index": new.foreach_index, "status": model.PENDING}
            self.events.append(("step.scheduled", {}, new.step_id))
            if new.delay_seconds > 0:
                self.timers.append((self.clock + new.delay_seconds, "retry", new.step_id, attempt))
            else:
                self.queue.append((new.step_id, attempt))
        for timer in t.timers:
            self.timers.append((self.clock + timer.delay_seconds, timer.kind, timer.step_id, timer.attempt))
        if self.status in model.TERMINAL_RUN_STATUSES:
            self.timers.clear()

    def run(self, max_tasks: int = 5000) -> Replay:
        self.apply(ip.start_run(self.defn, self.state()))
        return self.drain(max_tasks)

    def drain(self, max_tasks: int = 5000) -> Replay:
        """Execute queued tasks and due timers until the run ends or nothing is left to do."""
        for _ in range(max_tasks):
            if not self.queue:
                if not self.timers or self.status in model.TERMINAL_RUN_STATUSES:
                    return self
                self.timers.sort(key=lambda x: x[0])
                due, kind, sid, attempt = self.timers.pop(0)
                self.clock = max(self.clock, due)
                if kind == "retry":
                    self.queue.append((sid, attempt))
                    continue
                view = self.view((sid, attempt)) if sid else None
                if view is not None and view.status not in model.OPEN_STEP_STATUSES:
                    continue
                t = ip.timer_fired(self.defn, self.state(), kind, view)
                if t is not None:
                    self.apply(t)
                continue
            key = self.queue.popleft()
            if self.status != model.RUNNING or self.steps[key]["status"] not in model.OPEN_STEP_STATUSES:
                continue
            decided = ip.begin_step(self.defn, self.state(), self.view(key))
            if decided is None:
                continue
            if isinstance(decided, model.Transition):
                self.apply(decided)
                continue
            self.steps[key]["status"] = model.RUNNING
            self.calls.append((self.steps[key]["state"], key[1]))
            try:
                output = self.execute(self.steps[key]["state"], decided.input, key[1])
            except RuntimeError as exc:
                self.apply(ip.step_failed(self.defn, self.state(), self.view(key), {"type": "agent_error", "message": str(exc)}))
            else:
                self.apply(ip.step_succeeded(self.defn, self.state(), self.view(key), output))
        raise AssertionError("run did not end within the task bound")


def load(text: str) -> dict[str, Any]:
    return parse_definition(text)


def op(name: str, nxt: str | None = None, **extra: Any) -> dict[str, Any]:
    state = {"name": name, "type": "operation", "action": "agent.run", "input": {"agent": "w", "task": name}, **extra}
    if nxt:
        state["next"] = nxt
    else:
        state["end"] = True
    return state


def test_step_ids_are_deterministic() -> None:
    assert step_id("r", "a") == step_id("r", "a") != step_id("r", "a", "branch") != step_id("r", "a", "", 0)
    assert len(step_id("r", "a")) == 20 and idempotency_key("r", "s", 2) == "r:s:2"


def test_linear_run_and_template_rendering() -> None:
    defn = load("""
id: t
start: a
states:
  - { name: a, type: inject, data: { x: 1 }, next: b }
  - name: b
    type: operation
    action: agent.run
    input: { agent: w, task: "x is {{ x }}", variables: { n: "{{ x }}" } }
    end: true
""")
    seen: list[dict] = []
    r = Replay(defn, {"who": "me"}, execute=lambda name, inp, attempt: seen.append(inp) or {"ok": True}).run()
    assert r.status == model.COMPLETED
    assert seen == [{"agent": "w", "task": "x is 1", "variables": {"n": 1}}]
    assert r.context["x"] == 1 and r.context["steps"]["b"] == {"ok": True}
    assert history.rebuild_context([(k, p) for k, p, _ in r.events]) == r.context


def test_template_error_names_state_and_name() -> None:
    defn = load("""
id: t
start: b
states:
  - { name: b, type: operation, action: agent.run, input: { agent: w, task: "{{ nope }}" }, end: true }
""")
    r = Replay(defn).run()
    assert r.status == model.FAILED and "'b'" in r.error["message"] and "nope" in r.error["message"]
    assert r.calls == []


def test_switch_routes_with_dotted_access_and_default() -> None:
    defn = load("""
id: t
start: cfg
states:
  - { name: cfg, type: inject, data: { config: { thresholds: { errorRate: 0.05 } } }, next: measure }
  - { name: measure, type: inject, data: { error_rate: 0.12 }, resultPath: steps.m, next: decide }
  - name: decide
    type: switch
    dataPath: steps.m
    conditions:
      - { if: "result.error_rate > ctx.config.thresholds.errorRate * 10", next: page }
      - { if: "error_rate > ctx.config.thresholds.errorRate", next: mitigate }
    defaultNext: fine
  - { name: page, type: inject, data: { chose: page }, end: true }
  - { name: mitigate, type: inject, data: { chose: mitigate }, end: true }
  - { name: fine, type: inject, data: { chose: fine }, end: true }
""")
    r = Replay(defn).run()
    assert r.status == model.COMPLETED and r.context["chose"] == "mitigate"


def test_switch_with_no_match_and_no_default_fails_with_values() -> None:
    defn = load("""
id: t
start: d
states:
  - { name: d, type: switch, dataPath: workflow.input, conditions: [ { if: "result.get('x', 0) > 1", next: e } ] }
  - { name: e, type: inject, data: {}, end: true }
""")
    r = Replay(defn, {"x": 0}).run()
    assert r.status == model.FAILED and r.error["type"] == "switch" and r.error["details"]["values"]["result"] == {"x": 0}


def test_switch_condition_error_names_condition_and_names() -> None:
    defn = load("""
id: t
start: d
states:
  - { name: d, type: switch, conditions: [ { if: "missing_name > 1", next: e } ], defaultNext: e }
  - { name: e, type: inject, data: {}, end: true }
""")
    r = Replay(defn, {"seen": 1}).run()
    assert r.status == model.FAILED and r.error["condition"] == "missing_name > 1"
    assert "missing_name" in r.error["message"] and "seen" in r.error["names"]


PARALLEL = """
id: p
start: diag
states:
  - name: diag
    type: parallel
    branches:
      - name: pods
        states:
          - { name: check_pods, type: operation, action: agent.run, input: { agent: w, task: "pods" }, resultPath: result, next: route }
          - name: route
            type: switch
            conditions: [ { if: "result.ok", next: good } ]
            defaultNext: bad
          - { name: good, type: inject, data: { verdict: good }, end: true }
          - { name: bad, type: inject, data: { verdict: bad }, end: true }
      - name: errors
        states:
          - { name: check_errors, type: operation, action: agent.run, input: { agent: w, task: "errors" }, resultPath: result, end: true }
    resultPath: steps.diagnostics
    next: after
  - { name: after, type: operation, action: agent.run, input: { agent: w, task: "{{ steps.diagnostics.pods.verdict }}" }, end: true }
"""


def test_parallel_branch_local_writes_and_transitions_inside_branches() -> None:
    inputs: list[dict] = []

    def execute(name: str, inp: dict, attempt: int) -> dict:
        inputs.append(inp)
        return {"ok": name == "check_pods", "name": name}

    r = Replay(load(PARALLEL), execute=execute).run()
    assert r.status == model.COMPLETED
    assert r.context["steps"]["diagnostics"] == {
        "pods": {"result": {"ok": True, "name": "check_pods"}, "verdict": "good"},
        "errors": {"result": {"ok": False, "name": "check_errors"}},
    }
    assert "result" not in r.context  # branch writes stayed branch-local
    assert inputs[-1]["task"] == "good"
    assert history.rebuild_context([(k, p) for k, p, _ in r.events]) == r.context


def test_parallel_branch_failure_fails_state_and_cancels_others() -> None:
    def execute(name: str, inp: dict, attempt: int) -> dict:
        if name == "check_errors":
            raise RuntimeError("boom")
        return {"ok": True}

    r = Replay(load(PARALLEL), execute=execute).run()
    assert r.status == model.FAILED and r.error["type"] == "branch_failed" and r.error["cause"]["stateName"] == "check_errors"
    statuses = {s["state"]: s["status"] for s in r.steps.values()}
    assert statuses["diag"] == model.FAILED
    assert ("after", 1) not in r.calls


def test_parallel_join_any_and_at_least() -> None:
    base = PARALLEL.replace('"{{ steps.diagnostics.pods.verdict }}"', '"done"')
    text = base.replace("resultPath: steps.diagnostics", "join: { mode: any }\n    resultPath: steps.diagnostics")
    r = Replay(load(text)).run()
    assert r.status == model.COMPLETED and len(r.context["steps"]["diagnostics"]) == 1
    text = base.replace("resultPath: steps.diagnostics", "join: { atLeast: 1 }\n    resultPath: steps.diagnostics")

    def execute(name: str, inp: dict, attempt: int) -> dict:
        if name == "check_pods":
            raise RuntimeError("pods down")
        return {"ok": True}

    r = Replay(load(text), execute=execute).run()
    assert r.status == model.COMPLETED and list(r.context["steps"]["diagnostics"]) == ["errors"]


FOREACH = """
id: f
start: each
states:
  - name: each
    type: foreach
    itemsPath: services
    itemName: service
    maxConcurrency: {conc}
    iterator:
      states:
        - { name: check, type: operation, action: agent.run, input: { agent: w, task: "{{ service.name }} {{ _index }}/{{ _total }}" }, resultPath: r, end: true }
    resultPath: steps.results
    end: true
"""


def test_foreach_results_in_item_order_and_concurrency_bound() -> None:
    services = [{"name": f"s{i}"} for i in range(5)]
    live: list[int] = []
    r = Replay(load(FOREACH.replace("{conc}", "2")), {"services": services},
               execute=lambda name, inp, attempt: {"task": inp["task"]})
    r.apply(ip.start_run(r.defn, r.state()))
    # Enter the foreach: exactly maxConcurrency iterations are scheduled.
    key = r.queue.popleft()
    r.apply(ip.begin_step(r.defn, r.state(), r.view(key)))
    live.append(len(r.queue))
    assert live == [2]
    r2 = Replay(load(FOREACH.replace("{conc}", "2")), {"services": services},
                execute=lambda name, inp, attempt: {"task": inp["task"]}).run()
    assert r2.status == model.COMPLETED
    assert r2.context["steps"]["results"] == [{"r": {"task": f"s{i} {i}/5"}} for i in range(5)]


def test_foreach_empty_list_gives_empty_result_and_non_list_fails() -> None:
    r = Replay(load(FOREACH.replace("{conc}", "1")), {"services": []}).run()
    assert r.status == model.COMPLETED and r.context["steps"]["results"] == []
    r = Replay(load(FOREACH.replace("{conc}", "1")), {"services": "nope"}).run()
    assert r.status == model.FAILED and "not a list" in r.error["message"]


def test_nested_parallel_inside_foreach_and_foreach_inside_parallel() -> None:
    defn = normalize_definition({
        "id": "n", "start": "outer",
        "states": [{
            "name": "outer", "type": "foreach", "itemsPath": "xs", "maxConcurrency": 2,
            "iterator": {"states": [{
                "name": "par", "type": "parallel", "end": True, "resultPath": "p",
                "branches": [
                    {"name": "a", "states": [op("a1")]},
                    {"name": "b", "states": [{"name": "inner", "type": "foreach", "itemsPath": "item.ys", "itemName": "y",
                                              "iterator": {"states": [op("leaf")]}, "resultPath": "ys", "end": True}]},
                ],
            }]},
            "resultPath": "steps.out", "end": True,
        }],
    })
    r = Replay(defn, {"xs": [{"ys": [1, 2]}, {"ys": []}, {"ys": [3]}]}).run()
    assert r.status == model.COMPLETED
    out = r.context["steps"]["out"]
    assert [len(o["p"]["b"]["ys"]) for o in out] == [2, 0, 1]
    assert out[0]["p"]["a"] == {"steps": {"a1": {"from": "a1"}}}


def test_retry_with_backoff_then_success_and_exhaustion() -> None:
    defn = normalize_definition({"id": "r", "start": "a", "states": [
        op("a", retry={"maxAttempts": 3, "backoffSeconds": 2, "backoffRate": 3, "maxBackoffSeconds": 5})]})
    attempts: list[int] = []

    def flaky(name: str, inp: dict, attempt: int) -> dict:
        attempts.append(attempt)
        if attempt < 3:
            raise RuntimeError("try again")
        return {"ok": attempt}

    r = Replay(defn, execute=flaky).run()
    assert r.status == model.COMPLETED and attempts == [1, 2, 3] and r.context["steps"]["a"] == {"ok": 3}
    assert r.clock == 2 + 5  # 2 s, then 6 s capped at 5 s
    failed = [p for k, p, _ in r.events if k == "step.failed"]
    assert [f["willRetry"] for f in failed] == [True, True]

    r = Replay(defn, execute=lambda n, i, a: (_ for _ in ()).throw(RuntimeError("always"))).run()
    assert r.status == model.FAILED and [s["status"] for s in r.steps.values()] == [model.FAILED] * 3


def test_timeout_error_is_timed_out_and_run_timeout_ends_run() -> None:
    defn = normalize_definition({"id": "r", "start": "a", "states": [op("a")]})
    r = Replay(defn)
    r.apply(ip.start_run(defn, r.state()))
    key = r.queue.popleft()
    r.steps[key]["status"] = model.RUNNING
    t = ip.step_failed(defn, r.state(), r.view(key), {"type": "timeout", "message": "slow"})
    r.apply(t)
    assert r.steps[key]["status"] == model.TIMED_OUT and r.status == model.FAILED

    slow = normalize_definition({"id": "r", "start": "s", "timeoutSeconds": 5, "states": [
        {"name": "s", "type": "sleep", "duration": "1m", "end": True}]})
    r = Replay(slow).run()
    assert r.status == model.TIMED_OUT and r.clock == 5
    assert [s["status"] for s in r.steps.values()] == [model.CANCELLED]


def test_sleep_then_continue() -> None:
    defn = normalize_definition({"id": "r", "start": "s", "states": [
        {"name": "s", "type": "sleep", "duration": "30s", "next": "a"}, op("a")]})
    r = Replay(defn).run()
    assert r.status == model.COMPLETED and r.clock == 30 and r.context["steps"]["s"] == {"sleptSeconds": 30.0}


def test_try_catch_finally() -> None:
    defn = normalize_definition({"id": "t", "start": "guard", "states": [{
        "name": "guard", "type": "try", "next": "after",
        "try": [op("risky", "after_risky"), op("after_risky")],
        "catch": [{"name": "handle", "type": "inject", "data": {"handled": "{{ error.stateName }}"}, "end": True}],
        "finally": [{"name": "cleanup", "type": "inject", "data": {"cleaned": True}, "end": True}],
    }, op("after")]})

    def execute(name: str, inp: dict, attempt: int) -> dict:
        if name == "risky":
            raise RuntimeError("nope")
        return {"ok": name}

    r = Replay(defn, execute=execute).run()
    assert r.status == model.COMPLETED
    assert r.context["cleaned"] is True and r.context["handled"] == "{{ error.stateName }}"  # inject data is literal
    assert [c[0] for c in r.calls] == ["risky", "after"]

    no_catch = copy.deepcopy(defn)
    no_catch["states"]["guard"]["catch"] = None
    r = Replay(no_catch, execute=execute).run()
    assert r.status == model.FAILED and r.context["cleaned"] is True  # finally ran, then the error went on


def test_transform_sees_previous_output_as_input() -> None:
    defn = load("""
id: t
start: a
states:
  - { name: a, type: operation, action: agent.run, input: { agent: w, task: t }, resultPath: steps.a, next: shape }
  - name: shape
    type: transform
    expression: |
      {"bad": [p["name"] for p in input.pods if p.get("status") == "Error"], "ns": ctx.workflow.input.ns}
    resultPath: steps.shaped
    end: true
""")
    pods = {"pods": [{"name": "x", "status": "Error"}, {"name": "y", "status": "Running"}]}
    r = Replay(defn, {"ns": "prod"}, execute=lambda n, i, a: pods).run()
    assert r.status == model.COMPLETED and r.context["steps"]["shaped"] == {"bad": ["x"], "ns": "prod"}


# -- properties ------------------------------------------------------------------------------------
def _states(draw: Callable, depth: int, prefix: str) -> list[dict[str, Any]]:
    """A random chain of inject/operation/switch/parallel/foreach states that ends."""
    count = draw(st.integers(1, 4))
    names = [f"{prefix}s{i}" for i in range(count)]
    out = []
    for i, name in enumerate(names):
        nxt = names[i + 1] if i + 1 < count else None
        kinds = ["inject", "operation", "switch"] + (["parallel", "foreach"] if depth < 2 else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "switch" and nxt is None:
            kind = "inject"
        state: dict[str, Any] = {"name": name, "type": kind}
        if kind == "inject":
            state["data"] = {name: draw(st.integers(0, 9))}
        elif kind == "operation":
            state.update(action="agent.run", input={"agent": "w", "task": name})
        elif kind == "switch":
            later = names[i + 1:]
            state["conditions"] = [{"if": f"{draw(st.integers(0, 9))} > 4", "next": draw(st.sampled_from(later))}]
            state["defaultNext"] = later[0]  # every state stays reachable
            out.append(state)
            continue
        elif kind == "parallel":
            state["branches"] = [{"name": f"b{j}", "states": _states(draw, depth + 1, f"{name}b{j}")} for j in range(draw(st.integers(1, 3)))]
            state["join"] = draw(st.sampled_from([{"mode": "all"}, {"mode": "any"}]))
        elif kind == "foreach":
            state.update(itemsPath="items", maxConcurrency=draw(st.integers(1, 3)),
                         iterator={"states": _states(draw, depth + 1, f"{name}i")})
        if nxt:
            state["next"] = nxt
        else:
            state["end"] = True
        out.append(state)
    return out


@st.composite
def workflows(draw: Callable) -> tuple[dict[str, Any], list[int]]:
    states = _states(draw, 0, "")
    items = draw(st.lists(st.integers(0, 5), max_size=4))
    return normalize_definition({"id": "gen", "start": states[0]["name"], "states": states}), items


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows(), st.sets(st.integers(0, 30), max_size=3))
def test_generated_workflows_terminate_replay_stably_and_rebuild(case: tuple, failing: set[int]) -> None:
    defn, items = case
    counter = {"n": 0}

    def execute(name: str, inp: dict, attempt: int) -> dict:
        counter["n"] += 1
        if counter["n"] in failing:
            raise RuntimeError("injected failure")
        return {"done": name}

    first = Replay(defn, {"items": items}, execute=execute).run()
    assert first.status in (model.COMPLETED, model.FAILED)
    assert not any(s["status"] in model.OPEN_STEP_STATUSES for s in first.steps.values())
    counter["n"] = 0
    second = Replay(defn, {"items": items}, execute=execute).run()
    assert list(first.steps) == list(second.steps)  # same step ids and attempts, in the same order
    assert json.dumps(first.context, sort_keys=True) == json.dumps(second.context, sort_keys=True)
    assert history.rebuild_context([(k, p) for k, p, _ in first.events]) == first.context
