"""`openai/<model>`: any OpenAI-compatible Chat Completions server (OpenAI, Ollama, vLLM, llama.cpp,
LM Studio...).

Base URL: the agent's `baseUrl`, else OPENAI_BASE_URL, else https://api.openai.com/v1. Key: the
variable named by the agent's `apiKeyEnv`, else OPENAI_API_KEY; no key means no Authorization header
(local servers need none). An agent with an output schema asks for JSON with
`response_format: json_schema` (strict off, so servers that support only part of JSON Schema still
answer); the schema is enforced by our own validation afterwards either way.
"""

from __future__ import annotations

import os
import re
from typing import Any

import aiohttp

from station_wf.agents.providers import (
    MAX_ERROR_BODY,
    AgentLimits,
    AgentRequest,
    ProviderReply,
    http_error,
    loads_json,
    read_body,
    request_timeout,
    timeout_error,
)
from station_wf.agents.secrets import api_key_env_problem
from station_wf.executors.base import StepError
from station_wf.telemetry.tracing import inject_traceparent

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Front matter `config` keys (dotprompt spelling first) -> Chat Completions parameters. Others are
# ignored: strict servers reject unknown parameters.
CONFIG_KEYS = {
    "temperature": "temperature",
    "maxOutputTokens": "max_tokens",
    "max_tokens": "max_tokens",
    "maxTokens": "max_tokens",
    "topP": "top_p",
    "top_p": "top_p",
    "stopSequences": "stop",
    "stop": "stop",
    "seed": "seed",
}
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n(.*)\n```$", re.DOTALL)
_SCHEMA_NAME = re.compile(r"[^A-Za-z0-9_-]")


def chat_parameters(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        target = CONFIG_KEYS.get(key)
        if target is not None and value is not None:
            out[target] = value
    return out


def parse_json_answer(text: str, limits: AgentLimits | None = None, what: str = "the model") -> Any:
    """The answer as JSON; tolerates a Markdown code fence (small local models add one). Raises ValueError
    when it is not JSON, StepError when it nests deeper than the limits allow."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    return loads_json(body, what, limits or AgentLimits())


class OpenAIChatProvider:
    name = "openai"
    renders_prompt = True

    def endpoint(self, request: AgentRequest) -> tuple[str, dict[str, str]]:
        spec = request.spec
        base = spec.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        headers = {"Idempotency-Key": request.call.idempotency_key}
        tp = inject_traceparent() or request.call.traceparent
        if tp:
            headers["traceparent"] = tp
        key_env = spec.api_key_env or "OPENAI_API_KEY"
        refused = api_key_env_problem(key_env)
        if refused:  # checked at load too; here for specs made any other way
            raise StepError(f"agent {spec.name!r}: apiKeyEnv {refused}", type="configuration")
        key = os.environ.get(key_env)
        if spec.api_key_env and not key:
            raise StepError(f"agent {spec.name!r}: environment variable {key_env} (apiKeyEnv) is not set",
                            type="configuration")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return base.rstrip("/") + "/chat/completions", headers

    def body(self, request: AgentRequest) -> dict[str, Any]:
        assert request.prompt is not None and request.model
        body: dict[str, Any] = {"model": request.model, "messages": request.prompt.messages, "stream": False}
        body.update(chat_parameters(request.spec.config))
        schema = request.spec.output_schema
        if schema is not None:
            name = _SCHEMA_NAME.sub("_", request.spec.name)[:64] or "output"
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": False},
            }
        elif request.spec.output_format == "json":  # Station's `output.format: json` without a schema
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(self, request: AgentRequest, http: aiohttp.ClientSession) -> ProviderReply:
        url, _ = self.endpoint(request)
        what = f"model {request.model!r} at {url}"
        meta: dict[str, Any] = {"baseUrl": url.removesuffix("/chat/completions")}
        text = await self.post(request, http, self.body(request), meta)
        return self.reply(request, text, meta, what)

    async def post(self, request: AgentRequest, http: aiohttp.ClientSession, body: dict[str, Any],
                   meta: dict[str, Any]) -> str:
        """One Chat Completions request; the body's text (the tool loop sends one per model turn)."""
        url, headers = self.endpoint(request)
        what = f"model {request.model!r} at {url}"
        try:
            async with http.post(url, json=body, headers=headers, allow_redirects=False,
                                 timeout=request_timeout(request.call, request.limits)) as resp:
                text = await read_body(resp, what, request.limits, meta)
                if not 200 <= resp.status < 300:
                    raise http_error(what, resp.status, text, meta)
        except TimeoutError:
            raise timeout_error(what, request.call, meta, request.limits) from None
        except aiohttp.ClientError as exc:
            raise StepError(f"{what}: {type(exc).__name__}: {exc}", metadata=meta) from None
        return text

    def reply(self, request: AgentRequest, text: str, meta: dict[str, Any], what: str) -> ProviderReply:
        try:
            data = loads_json(text, what, request.limits, meta)
            choice = data["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise StepError(f"{what} did not answer like Chat Completions",
                            details={"body": text[:MAX_ERROR_BODY]}, metadata=meta) from None
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        meta["finishReason"] = choice.get("finish_reason")
        reply_usage = {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        if message.get("refusal"):
            raise StepError(f"{what} refused: {message['refusal']}", details={"refusal": message["refusal"]},
                            metadata={**meta, "usage": reply_usage})
        content = message.get("content")
        if not isinstance(content, str):
            raise StepError(f"{what} returned no text content (finish_reason {choice.get('finish_reason')!r})",
                            details={"message": message}, metadata={**meta, "usage": reply_usage})
        out = ProviderReply(content, False, text=content, model=data.get("model") or request.model,
                            usage=reply_usage, metadata=meta)
        try:
            parsed = parse_json_answer(content, request.limits, what)
        except ValueError:
            return out
        if request.spec.output_schema is not None or isinstance(parsed, dict):
            out.output, out.is_json = parsed, True
        return out
