"""OpenTelemetry traces: `WorkflowRun` -> `StateTransition` -> `StepExecute` -> `AgentExecute`.

A run outlives any one daemon process, so its span cannot stay open in memory. Instead the
`WorkflowRun` span is started and ended when the run is created, and its W3C `traceparent` is stored
with the run and sent in the NATS headers of every task. Each step later re-enters the trace from that
string (`step_spans`), so a step executed after a restart, by a fresh `TracerProvider`, still lands
in its run's trace. The string is only ever produced and read by `TraceContextTextMapPropagator`.

Exporters follow the standard `OTEL_*` variables, plus `STATION_TRACE_FILE` (JSON lines, for tests
that run the daemon as a child process). With no exporter configured, tracing is off and every helper
is a cheap no-op that still forwards an existing `traceparent` unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

TRACE_FILE_ENV = "STATION_TRACE_FILE"
TRACEPARENT = "traceparent"

SPAN_RUN = "WorkflowRun"
SPAN_TRANSITION = "StateTransition"
SPAN_STEP = "StepExecute"
SPAN_AGENT = "AgentExecute"

# Attributes that describe the state (and so belong on StateTransition too); the rest are step-only.
_TRANSITION_KEYS = ("workflow.id", "workflow.version", "run.id", "state.name", "state.type")
# Step statuses that are not failures (anything else marks the spans as errors).
_OK_STATUSES = frozenset({"ok", "succeeded", "success", "completed"})

_PROPAGATOR = TraceContextTextMapPropagator()
_NOOP_TRACER: trace.Tracer = trace.NoOpTracer()

_lock = threading.Lock()
_configured = False
_provider: TracerProvider | None = None
_tracer: trace.Tracer = _NOOP_TRACER


# -- exporters ----------------------------------------------------------------------------------
class JsonLinesSpanExporter(SpanExporter):
    """One finished span per line, flushed at once: a test in another process can read the file
    while the daemon runs, and a restarted daemon appends to the same file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_to_dict(s), default=str, separators=(",", ":")) + "\n" for s in spans)
        try:
            with self._lock:
                if self._file is None:
                    parent = os.path.dirname(self.path)
                    if parent:
                        os.makedirs(parent, exist_ok=True)
                    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across exports
                self._file.write(lines)
                self._file.flush()
        except OSError:
            log.exception("trace file %s: cannot write spans", self.path)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            if self._file is not None:
                self._file.flush()
        return True


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """The JSON-lines record: ids as lowercase hex, the same spelling as in `traceparent`."""
    ctx = span.get_span_context()
    parent = span.parent
    start, end = span.start_time, span.end_time
    return {
        "name": span.name,
        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
        "span_id": format(ctx.span_id, "016x") if ctx else None,
        "parent_id": format(parent.span_id, "016x") if parent is not None else None,
        "kind": span.kind.name,
        "attributes": dict(span.attributes or {}),
        "start_ns": start,
        "end_ns": end,
        "duration_ms": round((end - start) / 1e6, 3) if start is not None and end is not None else None,
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "service": (span.resource.attributes.get("service.name") if span.resource else None),
    }


def _otlp_exporter() -> SpanExporter | None:
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip().lower()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcExporter,
            )

            return GrpcExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT/HEADERS/TIMEOUT itself
    except ImportError as exc:
        log.warning("tracing: OTLP (%s) exporter not installed (%s); spans are not exported", protocol, exc)
        return None


def _exporters_from_env(env: Mapping[str, str]) -> list[tuple[SpanExporter, bool]]:
    """(exporter, batch?) pairs chosen by OTEL_TRACES_EXPORTER and STATION_TRACE_FILE."""
    chosen: list[tuple[SpanExporter, bool]] = []
    names_env = env.get("OTEL_TRACES_EXPORTER")
    if names_env is None or not names_env.strip():
        has_endpoint = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        names = ["otlp"] if has_endpoint else []
    else:
        names = [n.strip().lower() for n in names_env.split(",") if n.strip()]
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            exporter = _otlp_exporter()
            if exporter is not None:
                chosen.append((exporter, True))
        elif name == "console":
            chosen.append((ConsoleSpanExporter(), False))
        else:
            log.warning("tracing: OTEL_TRACES_EXPORTER=%s is not supported (otlp, console, none)", name)
    trace_file = env.get(TRACE_FILE_ENV)
    if trace_file:
        chosen.append((JsonLinesSpanExporter(trace_file), False))
    return chosen


# -- set-up -------------------------------------------------------------------------------------
def setup_tracing(
    service_name: str = "station-wf",
    *,
    exporters: Sequence[SpanExporter] | None = None,
    env: Mapping[str, str] | None = None,
) -> TracerProvider | None:
    """Configure tracing once per process; later calls return the same provider (or None when off).

    `exporters` (each behind a SimpleSpanProcessor) replaces the environment's choice: tests pass an
    InMemorySpanExporter. The provider is kept here rather than installed as the global one, because
    the global can be set only once per process and tests build several (a simulated restart).
    """
    global _configured, _provider, _tracer
    with _lock:
        if _configured:
            return _provider
        env = os.environ if env is None else env
        _configured = True
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        if exporters is not None:
            pairs = [(e, False) for e in exporters]
        else:
            pairs = _exporters_from_env(env)
        if not pairs:
            return None
        name = env.get("OTEL_SERVICE_NAME") or service_name
        provider = TracerProvider(resource=Resource.create({"service.name": name}), shutdown_on_exit=False)
        for exporter, batch in pairs:
            provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        _provider = provider
        _tracer = provider.get_tracer("station_wf")
        return provider


def shutdown_tracing() -> None:
    """Flush and close the exporters (batched OTLP spans would be lost otherwise); tracing is then off
    until `setup_tracing` is called again. Call at daemon shutdown; tests use it between 'processes'."""
    global _configured, _provider, _tracer
    with _lock:
        provider, _provider = _provider, None
        _tracer = _NOOP_TRACER
        _configured = False
    if provider is not None:
        provider.shutdown()


def tracing_enabled() -> bool:
    return _provider is not None


# -- helpers ------------------------------------------------------------------------------------
def _clean(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """OTel attribute values must be str/bool/int/float (or lists of them); None is dropped, the rest stringified."""
    out: dict[str, Any] = {}
    for key, value in (attrs or {}).items():
        if value is None:
            continue
        if isinstance(value, str | bool | int | float):
            out[key] = value
        elif isinstance(value, list | tuple) and all(isinstance(v, str | bool | int | float) for v in value):
            out[key] = list(value)
        else:
            out[key] = json.dumps(value, default=str)
    return out


def context_from_traceparent(traceparent: str | None) -> context_api.Context | None:
    """The remote parent carried by a stored/received traceparent (None when absent or invalid)."""
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({TRACEPARENT: traceparent})
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def _traceparent_of(span: Span) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(TRACEPARENT)


def new_run_traceparent(parent_traceparent: str | None, attributes: Mapping[str, Any]) -> str | None:
    """Record the `WorkflowRun` span (child of the caller's trace, if any) and return the traceparent
    to store with the run. The span is ended at once: the run may outlive this process, and its steps
    attach to it by this string. With tracing off the caller's traceparent is passed through."""
    if _provider is None:
        return parent_traceparent
    span = _tracer.start_span(SPAN_RUN, context=context_from_traceparent(parent_traceparent),
                              kind=SpanKind.INTERNAL, attributes=_clean(attributes))
    try:
        return _traceparent_of(span) or parent_traceparent
    finally:
        span.end()


class SpanHandle:
    """What a `with` block may add to its span(s) after start: attributes and the final status.
    Wraps non-recording spans too, so callers never check whether tracing is on."""

    __slots__ = ("spans", "_status_set")

    def __init__(self, *spans: Span) -> None:
        self.spans = spans
        self._status_set = False

    @property
    def span(self) -> Span:
        return self.spans[-1]

    def update(self, attrs: Mapping[str, Any]) -> None:
        """Attributes for the innermost span only (the StepExecute or AgentExecute span)."""
        if self.span.is_recording():
            self.span.set_attributes(_clean(attrs))

    def set_status(self, status: str, error_type: str | None = None, message: str | None = None) -> None:
        """`status` as an attribute on every span of the handle; success is OTel OK, cancelled stays
        unset, anything else (failed, timed_out, ...) is an OTel error."""
        self._status_set = True
        failed = status.lower() not in _OK_STATUSES
        for span in self.spans:
            if not span.is_recording():
                continue
            span.set_attribute("status", status)
            if error_type:
                span.set_attribute("error.type", error_type)
            if status.lower() == "cancelled":
                continue  # stopped on purpose: neither OK nor an error
            span.set_status(Status(StatusCode.ERROR, message or error_type or status) if failed else Status(StatusCode.OK))


_NOOP_HANDLE_SPAN = trace.INVALID_SPAN


@contextlib.contextmanager
def _spans(names_attrs: Sequence[tuple[str, dict[str, Any]]], parent: context_api.Context | None) -> Iterator[SpanHandle]:
    spans: list[Span] = []
    ctx = parent
    with contextlib.ExitStack() as stack:
        for name, attrs in names_attrs:
            span = _tracer.start_span(name, context=ctx, attributes=attrs)
            stack.callback(span.end)
            spans.append(span)
            ctx = trace.set_span_in_context(span, ctx)
        handle = SpanHandle(*spans)
        token = context_api.attach(ctx) if ctx is not None else None
        try:
            yield handle
        except BaseException as exc:
            if not handle._status_set:
                cancelled = not isinstance(exc, Exception)
                handle.set_status("cancelled" if cancelled else "failed",
                                  None if cancelled else type(exc).__name__, f"{type(exc).__name__}: {exc}")
            if isinstance(exc, Exception) and handle.span.is_recording():
                handle.span.record_exception(exc)
            raise
        finally:
            if token is not None:
                context_api.detach(token)


def step_spans(traceparent: str | None, attrs: Mapping[str, Any]) -> contextlib.AbstractContextManager[SpanHandle]:
    """`StateTransition` > `StepExecute` under the run's trace, the inner span current for the block
    (so `agent_span` nests under it and `inject_traceparent` names it). Call `handle.set_status(...)`
    before leaving; an escaping exception sets it to failed (cancelled for CancelledError).

    Expected attrs: workflow.id, workflow.version, run.id, state.name, state.type, step.id, attempt,
    executor. With tracing off the run's context is still made current, so `inject_traceparent`
    forwards the stored traceparent."""
    parent = context_from_traceparent(traceparent)
    if _provider is None:
        return _remote_only(parent)
    clean = _clean(attrs)
    transition = {k: clean[k] for k in _TRANSITION_KEYS if k in clean}
    return _spans([(SPAN_TRANSITION, transition), (SPAN_STEP, clean)], parent)


@contextlib.contextmanager
def _remote_only(parent: context_api.Context | None) -> Iterator[SpanHandle]:
    if parent is None:
        yield SpanHandle(_NOOP_HANDLE_SPAN)
        return
    token = context_api.attach(parent)
    try:
        yield SpanHandle(trace.get_current_span(parent))
    finally:
        context_api.detach(token)


def agent_span(attrs: Mapping[str, Any]) -> contextlib.AbstractContextManager[SpanHandle]:
    """`AgentExecute` under the current span (the step's), e.g. attrs agent.name, agent.model;
    add token counts after the call with `handle.update(token_attributes(usage))`."""
    if _provider is None:
        return contextlib.nullcontext(SpanHandle(_NOOP_HANDLE_SPAN))
    return _spans([(SPAN_AGENT, _clean(attrs))], context_api.get_current())


def token_attributes(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """OpenAI-style usage ({prompt,completion,total}_tokens) as span attributes."""
    if not usage:
        return {}
    names = {"prompt_tokens": "agent.tokens.input", "completion_tokens": "agent.tokens.output",
             "total_tokens": "agent.tokens.total", "input_tokens": "agent.tokens.input",
             "output_tokens": "agent.tokens.output"}
    return {names[k]: v for k, v in usage.items() if k in names and isinstance(v, int)}


def inject_traceparent() -> str | None:
    """The current span's traceparent, for outgoing HTTP headers (None outside any trace)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT)
