"""Render an agent's dotprompt template into chat messages (dotpromptz does the Handlebars work).

The workflow engine has already rendered the step's `{{ }}` Starlark templates in `task` and
`variables`; what is rendered here is the agent file's own Handlebars body, with the variables
(plus `task`) as its input.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from dotpromptz import DataArgument, Dotprompt, PromptFunction, TextPart

from station_wf.agents.catalog import AgentSpec
from station_wf.agents.station_prompt import uses_user_input
from station_wf.expr.templates import to_text

_ROLE_MARKER = re.compile(r"\{\{\s*role\s")
_ROLES = {"system": "system", "user": "user", "model": "assistant", "assistant": "assistant"}


class PromptRenderError(ValueError):
    pass


@dataclass(frozen=True)
class RenderedPrompt:
    """What a chat model is sent. `prompt` is the rendered template as text (for the run's history)."""

    prompt: str
    messages: list[dict[str, str]]
    explicit_roles: bool


class PromptRenderer:
    """Compiles each agent version once (keyed by content hash) and renders it per call."""

    def __init__(self) -> None:
        self._dotprompt = Dotprompt()
        self._compiled: dict[str, PromptFunction[Any]] = {}
        self._lock = threading.Lock()

    async def _compile(self, spec: AgentSpec) -> PromptFunction[Any]:
        found = self._compiled.get(spec.content_hash)
        if found is None:
            source = spec.source or f"---\n---\n{spec.template}"
            try:
                found = await self._dotprompt.compile(source)
            except Exception as exc:  # noqa: BLE001 - dotpromptz raises plain ValueErrors
                raise PromptRenderError(f"template of {spec.source_file}: {exc}") from None
            with self._lock:
                if len(self._compiled) > 1024:
                    self._compiled.clear()
                self._compiled[spec.content_hash] = found
        return found

    async def render(self, spec: AgentSpec, task: Any, variables: dict[str, Any]) -> RenderedPrompt:
        """System = the rendered template, user = the task; a template with `{{role}}` markers keeps
        its own roles and the task is appended as a last user turn. Without a task the rendered
        template is the user turn (a chat needs one)."""
        fn = await self._compile(spec)
        data = {"task": task, "userInput": task, **variables}  # Handlebars renders non-strings itself
        try:
            rendered = await fn(DataArgument(input=data))
        except Exception as exc:  # noqa: BLE001 - Handlebars errors are plain exceptions
            raise PromptRenderError(f"template of {spec.source_file}: {exc}") from None
        messages: list[dict[str, str]] = []
        for message in rendered.messages:
            texts: list[str] = []
            for part in message.content:
                if not isinstance(part, TextPart):
                    raise PromptRenderError(f"{spec.source_file}: only text prompts are supported "
                                            f"(found a {type(part).__name__})")
                texts.append(part.text)
            content = "".join(texts).strip()
            role = _ROLES.get(str(getattr(message.role, "value", message.role)), "user")
            if content:
                messages.append({"role": role, "content": content})
        explicit = bool(_ROLE_MARKER.search(spec.template))
        prompt = "\n\n".join(m["content"] for m in messages)
        if not explicit:
            messages = [{"role": "system", "content": prompt}] if prompt else []
        task_text = "" if task is None or uses_user_input(spec.template) else to_text(task)
        if task_text.strip():
            messages.append({"role": "user", "content": task_text})
        elif not any(m["role"] == "user" for m in messages) and messages and messages[-1]["role"] == "system":
            messages[-1] = {"role": "user", "content": messages[-1]["content"]}
        if not messages:
            raise PromptRenderError(f"{spec.source_file}: the rendered prompt is empty and there is no task")
        return RenderedPrompt(prompt=prompt, messages=messages, explicit_roles=explicit)
