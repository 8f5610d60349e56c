"""LLM providers, chosen by an agent's `model` prefix (`openai/...`) or its `endpoint:`.

A provider is one module with one class satisfying `Provider`; register it in `PROVIDERS` and agents
whose model starts with `<prefix>/` use it. Providers only talk to the model: rendering, schema
validation and result shaping stay in the executor, so every provider gets them for free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from station_wf.agents.catalog import AgentSpec
from station_wf.agents.prompt import RenderedPrompt
from station_wf.executors.base import StepCall, StepError
from station_wf.expr.limits import value_depth_exceeds

if TYPE_CHECKING:
    from station_wf.config import Settings

MAX_ERROR_BODY = 2000


@dataclass(frozen=True)
class AgentLimits:
    """What one agent call may cost the daemon: a peer is never trusted to be small, quick or shallow.

    A body is read in chunks up to `max_response_bytes` (an endpoint streaming gigabytes is an OOM
    otherwise); a peer that accepts the connection and never answers is cut after `read_timeout_s`
    without a byte, so it cannot hold a worker slot forever even when the step has no timeout; a JSON
    answer nested deeper than `max_output_depth` is refused before it reaches the context, where
    `deepcopy` and `json.dumps` would overflow on it.
    """

    max_response_bytes: int = 4 * 1024 * 1024
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0
    max_output_depth: int = 64

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentLimits:
        return cls(max_response_bytes=settings.agent_max_response_bytes,
                   connect_timeout_s=settings.agent_connect_timeout_seconds,
                   read_timeout_s=settings.agent_read_timeout_seconds)


@dataclass(frozen=True)
class AgentRequest:
    """One call of one agent: the step, the agent version, the model name without its prefix."""

    call: StepCall
    spec: AgentSpec
    agent_ref: str
    model: str | None
    task: Any  # usually a string; a single `{{ }}` template keeps its value's type
    variables: dict[str, Any]
    prompt: RenderedPrompt | None  # None for providers with renders_prompt = False
    limits: AgentLimits = field(default_factory=AgentLimits)


@dataclass
class ProviderReply:
    """The model's answer. `output` is the parsed JSON when `is_json`, else the text."""

    output: Any
    is_json: bool
    text: str | None = None
    model: str | None = None
    usage: dict[str, int | None] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    name: str
    renders_prompt: bool  # False: the remote side owns the prompt (HTTP agents)

    async def complete(self, request: AgentRequest, http: aiohttp.ClientSession) -> ProviderReply:
        """Call the model once. Raise StepError for a failed call; never retry (the engine does).
        Must stay cancellable: the worker cancels it on timeout and shutdown."""
        ...


PROVIDERS: dict[str, Provider] = {}


def select_provider(spec: AgentSpec) -> tuple[Provider, str | None]:
    """`endpoint:` wins (the HTTP agent protocol); else the `model` prefix picks the provider."""
    _ensure_builtins()
    if spec.endpoint:
        return PROVIDERS["http"], spec.model
    model = spec.model or ""
    prefix, sep, rest = model.partition("/")
    if not sep or not rest:
        raise StepError(f"agent {spec.name!r}: model {model!r} must be '<provider>/<model>' "
                        f"(providers: {', '.join(sorted(p for p in PROVIDERS if p != 'http'))})", type="validation")
    provider = PROVIDERS.get(prefix)
    if provider is None or prefix == "http":
        raise StepError(f"agent {spec.name!r}: no provider for model prefix {prefix!r} "
                        f"(known: {', '.join(sorted(p for p in PROVIDERS if p != 'http'))})", type="validation")
    return provider, rest


def _ensure_builtins() -> None:
    if "http" in PROVIDERS:
        return
    from station_wf.agents.providers.http_agent import HttpAgentProvider
    from station_wf.agents.providers.openai_chat import OpenAIChatProvider

    PROVIDERS.setdefault("http", HttpAgentProvider())
    PROVIDERS.setdefault("openai", OpenAIChatProvider())


def request_timeout(call: StepCall, limits: AgentLimits) -> aiohttp.ClientTimeout:
    """The step timeout as a per-request bound too, plus the connect and read bounds that hold even
    when the step has no timeout (a per-request timeout replaces the session's, so all are set here)."""
    return aiohttp.ClientTimeout(total=call.timeout_seconds, connect=limits.connect_timeout_s,
                                 sock_connect=limits.connect_timeout_s, sock_read=limits.read_timeout_s)


async def read_body(resp: aiohttp.ClientResponse, what: str, limits: AgentLimits,
                    metadata: dict[str, Any] | None = None) -> str:
    """The body as text, read in chunks and never past `max_response_bytes` (then a clear StepError).

    Redirects are never followed (`allow_redirects=False` at every call): the endpoint is what the agent
    file names, and a 307 from a compromised or misconfigured agent must not re-POST the step's input
    (and read the answer) from another host, such as a cloud metadata address.
    """
    limit = limits.max_response_bytes
    try:
        if 300 <= resp.status < 400:
            location = resp.headers.get("Location", "")
            raise StepError(f"{what} answered HTTP {resp.status}, a redirect to {location[:200]!r}; redirects are "
                            "not followed: point the agent at the final URL",
                            details={"status": resp.status, "location": location[:MAX_ERROR_BODY]}, metadata=metadata)
        if resp.content_length is not None and resp.content_length > limit:
            raise _too_big(what, limit, metadata)
        chunks: list[bytes] = []
        total = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > limit:
                raise _too_big(what, limit, metadata)
            chunks.append(chunk)
    except BaseException:
        resp.close()  # cancelled, redirected or too big mid-body: drop the connection, never pool it
        raise
    return b"".join(chunks).decode(resp.charset or "utf-8", errors="replace")


def _too_big(what: str, limit: int, metadata: dict[str, Any] | None) -> StepError:
    return StepError(f"{what} answered with more than {limit} bytes (STATION_AGENT_MAX_RESPONSE_BYTES)",
                     type="response_too_large", details={"limitBytes": limit}, metadata=metadata)


def loads_json(text: str, what: str, limits: AgentLimits, metadata: dict[str, Any] | None = None) -> Any:
    """json.loads that refuses a value nested deeper than the limit (ValueError: not JSON at all)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise too_deep(what, limits, metadata) from None
    if value_depth_exceeds(value, limits.max_output_depth):
        raise too_deep(what, limits, metadata)
    return value


def too_deep(what: str, limits: AgentLimits, metadata: dict[str, Any] | None = None) -> StepError:
    return StepError(f"{what} answered JSON nested more than {limits.max_output_depth} levels deep",
                     type="validation", details={"maxDepth": limits.max_output_depth}, metadata=metadata)


def timeout_error(what: str, call: StepCall, metadata: dict[str, Any] | None = None,
                  limits: AgentLimits | None = None) -> StepError:
    if call.timeout_seconds is None and limits is not None:  # no step timeout: the read/connect bound cut it
        return StepError(f"{what} sent nothing for {limits.read_timeout_s:g}s (STATION_AGENT_READ_TIMEOUT_SECONDS) "
                         f"or did not accept the connection within {limits.connect_timeout_s:g}s", type="timeout",
                         metadata=metadata)
    return StepError(f"{what} did not answer within {call.timeout_seconds}s", type="timeout", metadata=metadata)


def http_error(what: str, status: int, body: str, metadata: dict[str, Any] | None = None) -> StepError:
    return StepError(f"{what} answered HTTP {status}", details={"status": status, "body": body[:MAX_ERROR_BODY]},
                     metadata=metadata)
