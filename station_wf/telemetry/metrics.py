"""A tiny in-process metrics registry rendered in the Prometheus text format 0.0.4.

Why not prometheus_client at runtime: the daemon needs three metric families plus a few gauges that are
computed at scrape time (they are queries against SQLite and JetStream, not counters kept in memory),
and this is small enough to own. Every operation takes a lock: the SQLite writer thread may record too.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# Step durations: from in-process executors (milliseconds) to model calls (minutes).
STEP_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                                   120.0, 300.0, 600.0)

LabelValues = tuple[str, ...]


def format_value(value: float) -> str:
    """Go-style floats as Prometheus writes them (+Inf, -Inf, NaN)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid metric name {name!r}")


class _Metric:
    type_name = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), registry: Registry | None = None) -> None:
        _check_name(name)
        for label in labelnames:
            if not _LABEL_RE.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} on {name}")
        self.name = name
        self.help = help
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def _key(self, labels: Mapping[str, object]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.type_name}"]
        lines.extend(self._samples())
        return lines

    def _samples(self) -> list[str]:
        raise NotImplementedError


class _Scalar(_Metric):
    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), registry: Registry | None = None) -> None:
        super().__init__(name, help, labelnames, registry)
        self._values: dict[LabelValues, float] = {}

    def get(self, **labels: object) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def _samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels_text(zip(self.labelnames, key, strict=True))} {format_value(v)}"
                for key, v in items]


class Counter(_Scalar):
    """Monotonic; by convention its name ends in `_total`."""

    type_name = "counter"

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Scalar):
    type_name = "gauge"

    def set(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: object) -> None:
        self.inc(-amount, **labels)


class Histogram(_Metric):
    """Per-bucket counts kept non-cumulative and summed at render time (the exposition is cumulative)."""

    type_name = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), registry: Registry | None = None,
                 buckets: Sequence[float] = STEP_BUCKETS) -> None:
        if "le" in labelnames:
            raise ValueError("'le' is reserved for histogram buckets")
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError("histogram buckets must be distinct and non-empty")
        super().__init__(name, help, labelnames, registry)
        self.bounds: tuple[float, ...] = tuple(bounds)
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}  # counts (+Inf last), [sum]

    def observe(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        index = bisect.bisect_left(self.bounds, value)  # le is inclusive: value == bound falls in that bucket
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = ([0] * (len(self.bounds) + 1), [0.0])
            series[0][index] += 1
            series[1][0] += value

    def count(self, **labels: object) -> int:
        with self._lock:
            series = self._series.get(self._key(labels))
            return sum(series[0]) if series else 0

    def _samples(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._series.items())
        lines: list[str] = []
        for key, (counts, total) in items:
            base = list(zip(self.labelnames, key, strict=True))
            running = 0
            for bound, n in zip((*self.bounds, math.inf), counts, strict=True):
                running += n
                lines.append(f"{self.name}_bucket{_labels_text([*base, ('le', format_value(bound))])} {running}")
            lines.append(f"{self.name}_sum{_labels_text(base)} {format_value(total)}")
            lines.append(f"{self.name}_count{_labels_text(base)} {running}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def register(self, metric: _Metric) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric

    def names(self) -> list[str]:
        with self._lock:
            return list(self._metrics)

    def metrics(self) -> list[_Metric]:
        with self._lock:
            return list(self._metrics.values())


REGISTRY = Registry()

runs_started_total = Counter("station_wf_runs_started_total", "Workflow runs started.", ["workflow"], REGISTRY)
runs_finished_total = Counter("station_wf_runs_finished_total",
                              "Workflow runs that reached a terminal status (COMPLETED, FAILED, CANCELLED, TIMED_OUT).",
                              ["workflow", "status"], REGISTRY)
step_duration_seconds = Histogram("station_wf_step_duration_seconds", "Wall time of one step attempt's executor call.",
                                  ["executor"], REGISTRY, buckets=STEP_BUCKETS)

# Gauges the daemon computes at scrape time and hands to `render_prometheus(extra_gauges=...)`.
ACTIVE_RUNS = "station_wf_active_runs"
JETSTREAM_NUM_PENDING = "station_wf_jetstream_num_pending"
JETSTREAM_NUM_ACK_PENDING = "station_wf_jetstream_num_ack_pending"
OUTBOX_DEPTH = "station_wf_outbox_depth"
TIMER_BACKLOG = "station_wf_timer_backlog"

GAUGE_HELP: dict[str, str] = {
    ACTIVE_RUNS: "Runs not yet finished, by status.",
    JETSTREAM_NUM_PENDING: "Tasks in the work stream not yet delivered to the worker's consumer.",
    JETSTREAM_NUM_ACK_PENDING: "Tasks delivered to the worker and not yet acknowledged.",
    OUTBOX_DEPTH: "Committed tasks and events not yet published to NATS.",
    TIMER_BACKLOG: "Durable timers that are due but have not fired yet.",
}


def _render_gauge(name: str, samples: Sequence[tuple[Mapping[str, object], float]]) -> list[str]:
    _check_name(name)
    help_text = GAUGE_HELP.get(name, name.replace("_", " "))
    lines = [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        for label in labels:
            if not _LABEL_RE.match(label):
                raise ValueError(f"invalid label name {label!r} on {name}")
        pairs = sorted((k, str(v)) for k, v in labels.items())
        lines.append(f"{name}{_labels_text(pairs)} {format_value(float(value))}")
    return lines


def render_prometheus(
    extra_gauges: Mapping[str, Sequence[tuple[Mapping[str, object], float]]] | None = None,
    registry: Registry = REGISTRY,
) -> str:
    """The whole registry plus scrape-time gauges, e.g.
    `{ACTIVE_RUNS: [({"status": "RUNNING"}, 3.0)], OUTBOX_DEPTH: [({}, 0.0)]}`. Serve with CONTENT_TYPE."""
    lines: list[str] = []
    taken = set(registry.names())
    for metric in registry.metrics():
        lines.extend(metric.render())
    for name, samples in (extra_gauges or {}).items():
        if name in taken:
            raise ValueError(f"extra gauge {name} collides with a registered metric")
        lines.extend(_render_gauge(name, samples))
    return "\n".join(lines) + "\n"
