"""LLM providers, chosen by an agent's `model` prefix (`openai/...`) or its `endpoint:`.

A provider is one module with one class satisfying `Provider`; register it in `PROVIDERS` (or with
`register_provider`) and agents whose model starts with `<prefix>/` use it. Providers only talk to the
model: rendering, schema validation and result shaping stay in the executor, so every provider gets
them for free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from station_wf.agents.catalog import AgentSpec
from station_wf.agents.prompt import RenderedPrompt
from station_wf.executors.base import StepCall, StepError

MAX_ERROR_BODY = 2000


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


def register_provider(prefix: str, provider: Provider) -> None:
    PROVIDERS[prefix] = provider


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


def request_timeout(call: StepCall) -> aiohttp.ClientTimeout:
    """The step timeout as a per-request bound too, so a call is bounded even outside the worker."""
    return aiohttp.ClientTimeout(total=call.timeout_seconds, sock_connect=10)


def timeout_error(what: str, call: StepCall, metadata: dict[str, Any] | None = None) -> StepError:
    return StepError(f"{what} did not answer within {call.timeout_seconds}s", type="timeout", metadata=metadata)


def http_error(what: str, status: int, body: str, metadata: dict[str, Any] | None = None) -> StepError:
    return StepError(f"{what} answered HTTP {status}", details={"status": status, "body": body[:MAX_ERROR_BODY]},
                     metadata=metadata)
