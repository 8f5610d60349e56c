"""Agent files: `environments/<env>/agents/<name>.prompt` in the dotprompt format.

Parsing is dotpromptz's (`parse_document`), so front matter errors carry a line and column and the
format stays the one Genkit/Firebase tooling reads. On top of it we keep the fields Station adds
(`endpoint`, `baseUrl`, `apiKeyEnv`) and turn Picoschema into JSON Schema once, at load, so the
executor, the flow check and the API all see plain JSON Schema.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotpromptz import DotpromptError, ParsedPrompt, parse_document

from station_wf.agents.schemas import SchemaFileError, to_json_schema
from station_wf.agents.secrets import api_key_env_problem
from station_wf.agents.station_prompt import is_station_agent, station_facts

log = logging.getLogger(__name__)

AGENT_SUFFIX = ".prompt"
# Re-scan the directory at most this often when asked for an agent (edits apply without a restart).
STALE_CHECK_S = 1.0
# Catalogs of other environments (`name@env`, `?environment=`) kept at once; the least recently used
# goes first, and a directory that does not exist is never cached, so odd names cost no memory.
MAX_SIBLINGS = 32
_ENV_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class AgentFileError(ValueError):
    pass


@dataclass(frozen=True)
class AgentSpec:
    """One parsed agent file. Schemas are JSON Schema (Picoschema already converted)."""

    name: str
    source_file: str
    content_hash: str
    template: str
    source: str = ""
    environment: str | None = None
    model: str | None = None
    endpoint: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    front_matter: dict[str, Any] = field(default_factory=dict)
    display_name: str | None = None  # Station: metadata.name is a display name, the id is the file stem
    output_format: str | None = None  # `output.format: json` asks the model for JSON
    notes: tuple[str, ...] = ()  # front matter loaded but not used yet (Station's tools, max_steps, ...)
    max_concurrency: int | None = None  # issue 18: steps of this agent running at once, deployment-wide (LLM quota)
    notes: tuple[str, ...] = ()  # front matter loaded but not used yet (Station's app, tags, ...)
    tools: tuple[str, ...] = ()  # issue 20: MCP tools (`__get_pods`) and agents (`__agent_<name>`) it may call
    max_steps: int | None = None  # issue 20: model turns of the tool loop (None: STATION_AGENT_MAX_STEPS)

    def to_dict(self, *, template: bool = True) -> dict[str, Any]:
        """The API's view of an agent (camelCase, like the rest of the API)."""
        out: dict[str, Any] = {
            "name": self.name,
            "environment": self.environment,
            "description": self.description,
            "model": self.model,
            "endpoint": self.endpoint,
            "baseUrl": self.base_url,
            "apiKeyEnv": self.api_key_env,
            "inputSchema": self.input_schema,
            "outputSchema": self.output_schema,
            "config": self.config,
            "contentHash": self.content_hash,
            "sourceFile": self.source_file,
            "displayName": self.display_name,
            "notes": list(self.notes),
            "maxConcurrency": self.max_concurrency,
            "tools": list(self.tools),
            "maxSteps": self.max_steps,
        }
        if template:
            out["template"] = self.template
        return out


def _opt_str(front: dict[str, Any], key: str, where: str) -> str | None:
    value = front.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise AgentFileError(f"{where}: '{key}' must be a non-empty string, got {type(value).__name__}")
    return value.strip()


def parse_agent_text(text: str, source_file: str, environment: str | None = None) -> AgentSpec:
    """Parse one agent file's text; every problem is an AgentFileError naming the file."""
    try:
        parsed: ParsedPrompt[Any] = parse_document(text, source_name=source_file)
    except DotpromptError as exc:
        raise AgentFileError(str(exc)) from None
    front: dict[str, Any] = dict(parsed.raw or {})
    metadata = front.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise AgentFileError(f"{source_file}: 'metadata' must be a mapping")
    stem = Path(source_file).name.removesuffix(AGENT_SUFFIX)
    station = station_facts(front, stem) if is_station_agent(front) else None
    name = station.name if station else metadata.get("name") or front.get("name") or stem
    if not isinstance(name, str) or not _NAME_RE.match(name) or "@" in name:
        raise AgentFileError(f"{source_file}: agent name {name!r} may contain only letters, digits, '_', '-', '.'")
    schemas: dict[str, dict[str, Any] | None] = {}
    for part in ("input", "output"):
        section = front.get(part) or {}
        if not isinstance(section, dict):
            raise AgentFileError(f"{source_file}: '{part}' must be a mapping with 'schema'")
        try:
            schemas[part] = to_json_schema(section.get("schema"))
        except SchemaFileError as exc:
            raise AgentFileError(f"{source_file}: {part}.schema: {exc}") from None
    config = front.get("config") or {}
    if not isinstance(config, dict):
        raise AgentFileError(f"{source_file}: 'config' must be a mapping")
    api_key_env = _opt_str(front, "apiKeyEnv", source_file)
    refused = api_key_env_problem(api_key_env) if api_key_env is not None else None
    if refused:
        raise AgentFileError(f"{source_file}: apiKeyEnv: {refused}")
    model = station.model if station and station.model else _opt_str(front, "model", source_file)
    endpoint = _opt_str(front, "endpoint", source_file)
    if model is None and endpoint is None:
        raise AgentFileError(f"{source_file}: needs 'model' (like openai/gpt-4o-mini) or 'endpoint' (an HTTP agent URL)")
    max_concurrency = front.get("maxConcurrency")
    if max_concurrency is not None and (isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int)
                                        or not 1 <= max_concurrency <= 100_000):
        raise AgentFileError(f"{source_file}: 'maxConcurrency' must be an integer 1-100000, got {max_concurrency!r:.40}")
    tools, max_steps = _tool_fields(front, source_file)
    return AgentSpec(
        name=name,
        source_file=source_file,
        content_hash="sha256:" + hashlib.sha256(text.encode()).hexdigest(),
        template=parsed.template,
        source=text,
        environment=environment,
        model=model,
        endpoint=endpoint,
        base_url=_opt_str(front, "baseUrl", source_file),
        api_key_env=api_key_env,
        description=_opt_str(front, "description", source_file),
        input_schema=schemas["input"],
        output_schema=schemas["output"],
        config=dict(config),
        front_matter=front,
        display_name=station.display_name if station else None,
        output_format=station.output_format if station else None,
        notes=station.notes if station else (),
        max_concurrency=max_concurrency,
        tools=tools,
        max_steps=max_steps,
    )


def _tool_fields(front: dict[str, Any], where: str) -> tuple[tuple[str, ...], int | None]:
    """`tools:` (a list of names) and `max_steps:` (a positive integer), checked at load (issue 20)."""
    tools = front.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list) or not all(isinstance(t, str) and t.strip() for t in tools):
        raise AgentFileError(f"{where}: 'tools' must be a list of tool names (like \"__get_pods\")")
    if len(tools) > 128:
        raise AgentFileError(f"{where}: 'tools' lists {len(tools)} tools; at most 128")
    steps = front.get("max_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000):
        raise AgentFileError(f"{where}: 'max_steps' must be an integer from 1 to 1000, got {steps!r}")
    return tuple(dict.fromkeys(t.strip() for t in tools)), steps


def parse_agent_file(path: Path, environment: str | None = None) -> AgentSpec:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentFileError(f"{path}: {exc}") from None
    return parse_agent_text(text, str(path), environment)


def split_agent_ref(ref: str) -> tuple[str, str | None]:
    """`name` or `name@env` -> (name, env or None)."""
    name, sep, env = ref.partition("@")
    return name.strip(), (env.strip() if sep else None)


def valid_environment(env: str) -> bool:
    """An environment is a directory name: no separators, no '..' (it comes from workflow files and URLs)."""
    return len(env) <= 128 and bool(_ENV_RE.match(env)) and ".." not in env


class AgentCatalog:
    """The agents of one environment. Re-scans (cheaply, by mtime) when the files change."""

    def __init__(self, environments_dir: Path | str, environment: str) -> None:
        self.environments_dir = Path(environments_dir)
        self.environment = environment
        self.directory = self.environments_dir / environment / "agents"
        self._agents: dict[str, AgentSpec] = {}
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._siblings: OrderedDict[str, AgentCatalog] = OrderedDict()
        self.errors: list[str] = []
        self.broken: dict[str, str] = {}  # file stem -> why it did not load

    def _scan_signature(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return ()
        for entry in entries:
            if entry.name.endswith(AGENT_SUFFIX):
                try:
                    st = entry.stat()
                except OSError:
                    continue
                out.append((entry.name, st.st_mtime_ns, st.st_size))
        return tuple(sorted(out))

    def reload(self) -> dict[str, AgentSpec]:
        """Read every agent file now; broken files are logged and listed in `errors`/`broken`."""
        with self._lock:
            signature = self._scan_signature()
            agents: dict[str, AgentSpec] = {}
            errors: list[str] = []
            broken: dict[str, str] = {}
            for file_name, _, _ in signature:
                path = self.directory / file_name
                try:
                    spec = parse_agent_file(path, self.environment)
                except AgentFileError as exc:
                    errors.append(str(exc))
                    broken[file_name.removesuffix(AGENT_SUFFIX)] = str(exc)
                    continue
                if spec.name in agents:
                    msg = f"{path}: agent name {spec.name!r} is already used by {agents[spec.name].source_file}"
                    errors.append(msg)
                    broken[file_name.removesuffix(AGENT_SUFFIX)] = msg
                    continue
                agents[spec.name] = spec
            for err in errors:
                if err not in self.errors:
                    log.error("agent file: %s", err)
            self._agents, self.errors, self.broken = agents, errors, broken
            self._signature = signature
            self._checked_at = time.monotonic()
            return dict(agents)

    def _refresh(self) -> None:
        if self._signature is None:
            self.reload()
            return
        if time.monotonic() - self._checked_at < STALE_CHECK_S:
            return
        if self._scan_signature() != self._signature:
            self.reload()
        else:
            self._checked_at = time.monotonic()

    def get(self, name: str) -> AgentSpec | None:
        self._refresh()
        found = self._agents.get(name)
        if found is None and self._scan_signature() != self._signature:
            found = self.reload().get(name)
        return found

    def all(self) -> list[AgentSpec]:
        self._refresh()
        return [self._agents[name] for name in sorted(self._agents)]

    def sibling(self, environment: str) -> AgentCatalog:
        """The catalog of another environment under the same directory (for `name@env`)."""
        if environment == self.environment:
            return self
        if not valid_environment(environment):
            raise AgentFileError(f"invalid environment name {environment!r}")
        with self._lock:
            found = self._siblings.get(environment)
            if found is not None:
                self._siblings.move_to_end(environment)
                return found
            found = AgentCatalog(self.environments_dir, environment)
            if found.directory.is_dir():
                self._siblings[environment] = found
                while len(self._siblings) > MAX_SIBLINGS:
                    self._siblings.popitem(last=False)
            return found

    def resolve(self, ref: str) -> tuple[AgentSpec | None, AgentCatalog]:
        """Look up `name` or `name@env`; returns the spec (or None) and the catalog searched."""
        name, env = split_agent_ref(ref)
        catalog = self.sibling(env) if env else self
        return catalog.get(name), catalog
