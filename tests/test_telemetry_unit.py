"""Unit tests of station_wf.telemetry: span hierarchy across a traceparent round-trip, the JSON-lines
exporter, Prometheus exposition, JSON logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from station_wf.telemetry import logs as tlogs
from station_wf.telemetry import metrics as tm
from station_wf.telemetry import tracing as tt

INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STEP_ATTRS = {
    "workflow.id": "wf", "workflow.version": 2, "run.id": "run-1", "state.name": "ask",
    "state.type": "operation", "step.id": "ask", "attempt": 1, "executor": "agent.run",
}


@pytest.fixture(autouse=True)
def _no_tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", tt.TRACE_FILE_ENV):
        monkeypatch.delenv(var, raising=False)
    tt.shutdown_tracing()
    yield
    tt.shutdown_tracing()


def _by_name(spans) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


# -- tracing ------------------------------------------------------------------------------------
def test_disabled_by_default_and_helpers_pass_traceparent_through() -> None:
    assert tt.setup_tracing() is None
    assert tt.setup_tracing() is None  # idempotent
    assert tt.new_run_traceparent(INCOMING, {"run.id": "r"}) == INCOMING
    assert tt.new_run_traceparent(None, {}) is None
    with tt.step_spans(INCOMING, STEP_ATTRS) as step:
        assert tt.inject_traceparent() == INCOMING  # agents still receive the run's trace
        with tt.agent_span({"agent.name": "a"}) as agent:
            agent.update({"agent.tokens.total": 3})
        step.set_status("succeeded")
    with tt.step_spans(None, STEP_ATTRS) as step:
        assert tt.inject_traceparent() is None
        step.set_status("failed", "timeout")
    assert tt.inject_traceparent() is None


def test_exporter_selection_from_env(tmp_path: Path) -> None:
    assert tt.setup_tracing(env={"OTEL_TRACES_EXPORTER": "none"}) is None
    tt.shutdown_tracing()
    provider = tt.setup_tracing(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert provider is not None and tt.setup_tracing() is provider
    tt.shutdown_tracing()
    provider = tt.setup_tracing(env={tt.TRACE_FILE_ENV: str(tmp_path / "t.jsonl"), "OTEL_SERVICE_NAME": "svc"})
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "svc"
    tt.shutdown_tracing()
    assert tt.setup_tracing(env={"OTEL_SDK_DISABLED": "true", tt.TRACE_FILE_ENV: str(tmp_path / "x")}) is None


def test_span_hierarchy_survives_a_restart_through_the_stored_traceparent() -> None:
    # "Process" 1: the API creates the run and stores its traceparent; one step runs.
    first = InMemorySpanExporter()
    tt.setup_tracing(exporters=[first])
    stored = tt.new_run_traceparent(INCOMING, {"workflow.id": "wf", "run.id": "run-1"})
    assert stored is not None and stored != INCOMING
    with tt.step_spans(stored, STEP_ATTRS) as step:
        outgoing = tt.inject_traceparent()
        with tt.agent_span({"agent.name": "helper", "agent.model": "m"}) as agent:
            agent.update(tt.token_attributes({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}))
        step.set_status("succeeded")
    tt.shutdown_tracing()

    # "Process" 2: a new provider; the next step only has the stored string (from the NATS headers).
    second = InMemorySpanExporter()
    tt.setup_tracing(exporters=[second])
    with tt.step_spans(stored, {**STEP_ATTRS, "step.id": "ask", "attempt": 2}) as step:
        step.set_status("failed", "timeout", "step timed out after 1s")

    spans1 = _by_name(first.get_finished_spans())
    spans2 = _by_name(second.get_finished_spans())
    run = spans1["WorkflowRun"][0]
    trace_id = run.context.trace_id
    assert format(trace_id, "032x") == INCOMING.split("-")[1]  # the caller's trace became the run's parent
    assert run.parent.span_id == int(INCOMING.split("-")[2], 16)
    assert stored.split("-")[2] == format(run.context.span_id, "016x")

    for spans in (spans1, spans2):
        transition, step_span = spans["StateTransition"][0], spans["StepExecute"][0]
        assert transition.context.trace_id == step_span.context.trace_id == trace_id
        assert transition.parent.span_id == run.context.span_id
        assert step_span.parent.span_id == transition.context.span_id
        assert transition.attributes["state.name"] == "ask"
        assert "step.id" not in transition.attributes
        assert step_span.attributes["executor"] == "agent.run"
        assert step_span.attributes["workflow.version"] == 2

    agent = spans1["AgentExecute"][0]
    step1 = spans1["StepExecute"][0]
    assert agent.parent.span_id == step1.context.span_id
    assert agent.attributes["agent.tokens.total"] == 12 and agent.attributes["agent.model"] == "m"
    assert outgoing is not None and outgoing.split("-")[2] == format(step1.context.span_id, "016x")
    assert step1.attributes["status"] == "succeeded" and step1.status.status_code.name == "OK"

    step2 = spans2["StepExecute"][0]
    assert step2.attributes["attempt"] == 2 and step2.attributes["error.type"] == "timeout"
    assert step2.status.status_code.name == "ERROR"
    assert spans2["StateTransition"][0].attributes["status"] == "failed"


def test_escaping_exception_marks_spans_failed() -> None:
    exporter = InMemorySpanExporter()
    tt.setup_tracing(exporters=[exporter])
    with pytest.raises(RuntimeError), tt.step_spans(None, STEP_ATTRS):
        raise RuntimeError("boom")
    step = _by_name(exporter.get_finished_spans())["StepExecute"][0]
    assert step.status.status_code.name == "ERROR" and step.attributes["status"] == "failed"
    assert step.parent is not None and step.events[0].name == "exception"


async def test_context_follows_into_tasks_created_inside_the_step() -> None:
    """The worker runs the executor in its own asyncio task: the step span must still be its parent."""
    exporter = InMemorySpanExporter()
    tt.setup_tracing(exporters=[exporter])

    async def executor() -> str | None:
        await asyncio.sleep(0)
        with tt.agent_span({"agent.name": "a"}):
            return tt.inject_traceparent()

    stored = tt.new_run_traceparent(None, {"run.id": "r"})
    with tt.step_spans(stored, STEP_ATTRS) as step:
        sent = await asyncio.wait_for(asyncio.create_task(executor()), 5)
        step.set_status("succeeded")
    spans = _by_name(exporter.get_finished_spans())
    agent, step_span = spans["AgentExecute"][0], spans["StepExecute"][0]
    assert agent.parent.span_id == step_span.context.span_id
    assert sent is not None and sent.split("-")[2] == format(agent.context.span_id, "016x")


def test_json_lines_exporter_writes_parseable_lines(tmp_path: Path) -> None:
    path = tmp_path / "spans" / "trace.jsonl"
    tt.setup_tracing(env={tt.TRACE_FILE_ENV: str(path)})
    stored = tt.new_run_traceparent(None, {"run.id": "r", "workflow.id": "wf"})
    with tt.step_spans(stored, STEP_ATTRS) as step:
        step.update({"extra": {"nested": True}})
        step.set_status("succeeded")
    # Lines are on disk before shutdown: another process can read them while the daemon runs.
    records = [json.loads(line) for line in path.read_text().splitlines()]
    tt.shutdown_tracing()
    tt.setup_tracing(env={tt.TRACE_FILE_ENV: str(path)})  # a "restarted daemon" appends
    with tt.step_spans(stored, STEP_ATTRS) as step:
        step.set_status("succeeded")
    tt.shutdown_tracing()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["name"] for r in records] == ["WorkflowRun", "StepExecute", "StateTransition", "StepExecute", "StateTransition"]
    by_id = {r["span_id"]: r for r in records}
    run = records[0]
    assert run["parent_id"] is None and len(run["trace_id"]) == 32 and len(run["span_id"]) == 16
    assert all(r["trace_id"] == run["trace_id"] for r in records)
    for step_rec in (records[1], records[3]):
        transition = by_id[step_rec["parent_id"]]
        assert transition["name"] == "StateTransition" and transition["parent_id"] == run["span_id"]
        assert step_rec["attributes"]["run.id"] == "run-1" and step_rec["status"] == "OK"
        assert step_rec["end_ns"] >= step_rec["start_ns"] and step_rec["service"] == "station-wf"
    assert json.loads(records[1]["attributes"]["extra"]) == {"nested": True}


# -- metrics ------------------------------------------------------------------------------------
def _families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_prometheus_text_parses_and_buckets_are_cumulative() -> None:
    reg = tm.Registry()
    started = tm.Counter("t_runs_started_total", "Runs started.", ["workflow"], reg)
    hist = tm.Histogram("t_step_seconds", "Step time.\nSecond line \\ backslash.", ["executor"], reg, buckets=[0.1, 1, 10])
    started.inc(workflow='we"ird\\name\nx')
    started.inc(2, workflow="b")
    for value in (0.05, 0.1, 0.5, 5, 50):
        hist.observe(value, executor="agent.run")
    text = tm.render_prometheus({
        tm.ACTIVE_RUNS: [({"status": "RUNNING"}, 3), ({"status": "PAUSED"}, 1)],
        tm.OUTBOX_DEPTH: [({}, 0)],
        tm.TIMER_BACKLOG: [],
    }, registry=reg)
    fams = _families(text)
    assert fams["t_runs_started"].type == "counter"
    counts = {s.labels["workflow"]: s.value for s in fams["t_runs_started"].samples if s.name.endswith("_total")}
    assert counts == {'we"ird\\name\nx': 1.0, "b": 2.0}  # escaping round-trips

    h = fams["t_step_seconds"]
    assert h.type == "histogram" and h.documentation == "Step time.\nSecond line \\ backslash."
    buckets = [(float(s.labels["le"]), s.value) for s in h.samples if s.name.endswith("_bucket")]
    assert buckets == [(0.1, 2), (1.0, 3), (10.0, 4), (math.inf, 5)]  # le is inclusive; cumulative
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:], strict=False))
    by_name = {s.name: s.value for s in h.samples if not s.name.endswith("_bucket")}
    assert by_name["t_step_seconds_count"] == 5 and by_name["t_step_seconds_sum"] == pytest.approx(55.65)

    active = {s.labels["status"]: s.value for s in fams[tm.ACTIVE_RUNS].samples}
    assert fams[tm.ACTIVE_RUNS].type == "gauge" and active == {"RUNNING": 3, "PAUSED": 1}
    assert fams[tm.OUTBOX_DEPTH].samples[0].value == 0
    assert tm.TIMER_BACKLOG in fams
    assert "# TYPE t_step_seconds histogram" in text and text.endswith("\n")


def test_module_metrics_render_and_move() -> None:
    before = tm.runs_started_total.get(workflow="unit-wf")
    tm.runs_started_total.inc(workflow="unit-wf")
    tm.runs_finished_total.inc(workflow="unit-wf", status="COMPLETED")
    tm.step_duration_seconds.observe(0.2, executor="unit.exec")
    assert tm.runs_started_total.get(workflow="unit-wf") == before + 1
    fams = _families(tm.render_prometheus({tm.JETSTREAM_NUM_PENDING: [({}, 4)],
                                           tm.JETSTREAM_NUM_ACK_PENDING: [({}, 1)]}))
    assert {"station_wf_runs_started", "station_wf_runs_finished", "station_wf_step_duration_seconds",
            tm.JETSTREAM_NUM_PENDING, tm.JETSTREAM_NUM_ACK_PENDING} <= set(fams)
    count = [s for s in fams["station_wf_step_duration_seconds"].samples
             if s.name.endswith("_count") and s.labels["executor"] == "unit.exec"]
    assert count[0].value >= 1


def test_metric_misuse_is_refused() -> None:
    reg = tm.Registry()
    c = tm.Counter("x_total", "x", ["a"], reg)
    with pytest.raises(ValueError):
        c.inc(b="1")
    with pytest.raises(ValueError):
        c.inc(-1, a="1")
    with pytest.raises(ValueError):
        tm.Counter("x_total", "dup", [], reg)
    with pytest.raises(ValueError):
        tm.Histogram("h", "h", ["le"], reg)
    with pytest.raises(ValueError):
        tm.render_prometheus({"x_total": [({}, 1)]}, registry=reg)
    with pytest.raises(ValueError):
        tm.render_prometheus({"bad name": [({}, 1)]}, registry=reg)


# -- logs ---------------------------------------------------------------------------------------
@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def test_json_logs_carry_step_fields(restore_root_logging: None) -> None:
    out = io.StringIO()
    tlogs.configure_logging("INFO", "json", stream=out)
    tlogs.configure_logging("INFO", "json", stream=out)  # replaces, does not duplicate
    logger = logging.getLogger("station_wf.test")
    tlogs.step_log(logger, run_id="r1", step_id="s1", attempt=2, executor="agent.run", duration_ms=12.34567,
                   status="failed", error_type="timeout")
    tlogs.step_log(logger, run_id="r1", step_id="s2", attempt=1, executor="agent.run", duration_ms=3, status="succeeded")
    logger.debug("hidden")
    try:
        raise ValueError("bad")
    except ValueError:
        logger.exception("with traceback", extra={"run_id": "r9"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert {"ts", "level", "logger", "msg", *tlogs.STEP_FIELDS} <= set(first)
    assert first["level"] == "WARNING" and first["logger"] == "station_wf.test"
    assert (first["run_id"], first["step_id"], first["attempt"], first["executor"]) == ("r1", "s1", 2, "agent.run")
    assert first["duration_ms"] == 12.346 and first["status"] == "failed" and first["error_type"] == "timeout"
    assert first["ts"].endswith("Z")
    assert lines[1]["level"] == "INFO" and lines[1]["error_type"] is None
    assert lines[2]["run_id"] == "r9" and lines[2]["exc_type"] == "ValueError" and "Traceback" in lines[2]["exc"]


def test_json_log_lines_stay_one_strict_json_object_whatever_the_extras(restore_root_logging: None) -> None:
    """Extra fields of any type: unknown objects as their str(), NaN as null, non-str keys as text."""
    import datetime

    class Thing:
        def __str__(self) -> str:
            return "thing!"

    out = io.StringIO()
    tlogs.configure_logging("INFO", "json", stream=out)
    logger = logging.getLogger("station_wf.test")
    logger.info("odd", extra={"obj": Thing(), "when": datetime.date(2026, 1, 2), "ratio": float("nan"), "u": "ü"})
    logger.info("keys", extra={"mapping": {1: "a", None: "b"}})
    strict = [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in a log line"))
              for line in out.getvalue().splitlines()[:1]]
    assert strict[0]["obj"] == "thing!" and strict[0]["when"] == "2026-01-02" and strict[0]["ratio"] is None
    assert strict[0]["u"] == "ü" and "\\u" not in out.getvalue().splitlines()[0]
    assert sorted(json.loads(out.getvalue().splitlines()[1])["mapping"].values()) == ["a", "b"]  # keys as text


def test_json_logs_include_trace_ids_inside_a_step(restore_root_logging: None) -> None:
    out = io.StringIO()
    tlogs.configure_logging("INFO", "json", stream=out)
    exporter = InMemorySpanExporter()
    tt.setup_tracing(exporters=[exporter])
    with tt.step_spans(None, STEP_ATTRS) as step:
        logging.getLogger("x").info("inside")
        step.set_status("succeeded")
    record = json.loads(out.getvalue().splitlines()[0])
    span = _by_name(exporter.get_finished_spans())["StepExecute"][0]
    assert record["span_id"] == format(span.context.span_id, "016x")


def test_text_logs_and_bad_settings(restore_root_logging: None) -> None:
    out = io.StringIO()
    tlogs.configure_logging("debug", "text", stream=out)
    logging.getLogger("t").info("hello %s", "world", extra={"run_id": "r1"})
    assert "INFO t: hello world run_id=r1" in out.getvalue()
    with pytest.raises(ValueError):
        tlogs.configure_logging("INFO", "xml")
    with pytest.raises(ValueError):
        tlogs.configure_logging("LOUD", "json")
    with pytest.raises(ValueError):
        tlogs.step_log(logging.getLogger("t"), run_id="r", step_id="s", attempt=1, executor="e", duration_ms=1,
                       status="failed", error_type="oops")


def test_classify_error() -> None:
    assert tlogs.classify_error(None) is None
    assert tlogs.classify_error({"type": "timeout"}) == "timeout"
    assert tlogs.classify_error({"type": "validation"}, attempt=1, will_retry=False) == "validation"
    assert tlogs.classify_error({"type": "timeout"}, attempt=3, will_retry=False) == "retry_exhausted"
    assert tlogs.classify_error({"type": "timeout"}, attempt=2, will_retry=True) == "timeout"
    assert tlogs.classify_error({"type": "executor_error"}) == "agent_error"
    assert tlogs.classify_error({"type": "cancelled"}) is None


def test_cancelled_step_is_not_an_error() -> None:
    exporter = InMemorySpanExporter()
    tt.setup_tracing(exporters=[exporter])
    with pytest.raises(asyncio.CancelledError), tt.step_spans(None, STEP_ATTRS):
        raise asyncio.CancelledError
    step = _by_name(exporter.get_finished_spans())["StepExecute"][0]
    assert step.attributes["status"] == "cancelled" and step.status.status_code.name == "UNSET"
