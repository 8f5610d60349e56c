"""The pure interpreter: decisions from (definition, state, event) with no I/O."""

from __future__ import annotations

from station_wf.dsl.loader import parse_definition
from station_wf.engine import interpreter as ip
from station_wf.engine.identity import idempotency_key, step_id

DEFN = parse_definition("""
id: t
start: a
states:
  - name: a
    type: inject
    data: { x: 1 }
    next: b
  - name: b
    type: operation
    action: agent.run
    input: { agent: w, task: "x is {{ x }}", variables: { n: "{{ x }}" } }
    end: true
""")


def test_step_ids_are_deterministic() -> None:
    assert step_id("r", "a") == step_id("r", "a") != step_id("r", "a", "branch") != step_id("r", "a", "", 0)
    assert len(step_id("r", "a")) == 20 and idempotency_key("r", "s", 2) == "r:s:2"


def test_start_plan_and_succeed() -> None:
    ctx = ip.initial_context(DEFN, "r1", 1, {"who": "me"}, "now")
    assert ctx["workflow"]["runId"] == "r1" and ctx["steps"] == {} and ctx["who"] == "me"
    t = ip.start_run(DEFN, "r1", ctx)
    assert t.run_status == ip.RUNNING and [s.state_name for s in t.new_steps] == ["a"]

    a = ip.StepView(t.new_steps[0].step_id, "a", 1)
    plan = ip.plan_step(DEFN, ctx, a)
    assert plan == ip.Immediate({"x": 1})
    t2 = ip.step_succeeded(DEFN, "r1", ctx, a, plan.output)
    assert t2.context["x"] == 1 and "x" not in ctx  # the input context is not mutated
    assert [s.state_name for s in t2.new_steps] == ["b"] and t2.run_status is None

    b = ip.StepView(t2.new_steps[0].step_id, "b", 1)
    plan_b = ip.plan_step(DEFN, t2.context, b)
    assert plan_b == ip.Execute("agent.run", {"agent": "w", "task": "x is 1", "variables": {"n": 1}}, None)
    t3 = ip.step_succeeded(DEFN, "r1", t2.context, b, {"ok": True})
    assert t3.run_status == ip.COMPLETED and t3.context["steps"]["b"] == {"ok": True}
    assert [e.type for e in t3.events] == ["step.succeeded", "run.completed"]


def test_template_error_names_state_and_name() -> None:
    b = ip.StepView(step_id("r", "b"), "b", 1)
    plan = ip.plan_step(DEFN, {"steps": {}}, b)
    assert isinstance(plan, ip.Fail) and "'b'" in plan.error["message"] and "'x'" in plan.error["message"]


def test_failure_fails_the_run() -> None:
    b = ip.StepView(step_id("r", "b"), "b", 1)
    t = ip.step_failed(DEFN, "r", {}, b, {"type": "agent_error", "message": "boom"})
    assert t.run_status == ip.FAILED and t.step_status == ip.FAILED and t.run_error["stateName"] == "b"


def test_rebuild_context_from_events() -> None:
    events = [("run.started", {"context": {"a": 1}}),
              ("step.succeeded", {"write": {"path": "steps.s", "value": {"v": 2}}}),
              ("step.succeeded", {"write": {"path": "ctx", "value": {"b": 3}}})]
    assert ip.rebuild_context(events) == {"a": 1, "steps": {"s": {"v": 2}}, "b": 3}
