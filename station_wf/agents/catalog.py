"""Agent files: dotprompt front matter (`model`, `endpoint`, schemas, config) and the prompt body.

The front matter is parsed here with YAML; prompt rendering and LLM providers plug in behind
`AgentSpec` without changing the executor.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


class AgentFileError(ValueError):
    pass


@dataclass(frozen=True)
class AgentSpec:
    name: str
    source_file: str
    content_hash: str
    template: str
    model: str | None = None
    endpoint: str | None = None
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    front_matter: dict[str, Any] = field(default_factory=dict)


def parse_agent_file(path: Path) -> AgentSpec:
    text = path.read_text()
    front: dict[str, Any] = {}
    body = text
    if text.startswith("---"):
        parts = text.split("\n---", 1)
        if len(parts) != 2:
            raise AgentFileError(f"{path}: front matter opened with '---' is never closed")
        try:
            front = yaml.safe_load(parts[0][3:]) or {}
        except yaml.YAMLError as exc:
            raise AgentFileError(f"{path}: front matter: {exc}") from None
        if not isinstance(front, dict):
            raise AgentFileError(f"{path}: front matter must be a mapping")
        body = parts[1].split("\n", 1)[1] if "\n" in parts[1] else ""
    name = (front.get("metadata") or {}).get("name") or path.name.removesuffix(".prompt")
    return AgentSpec(
        name=name,
        source_file=str(path),
        content_hash="sha256:" + hashlib.sha256(text.encode()).hexdigest(),
        template=body,
        model=front.get("model"),
        endpoint=front.get("endpoint"),
        input_schema=(front.get("input") or {}).get("schema"),
        output_schema=(front.get("output") or {}).get("schema"),
        config=front.get("config") or {},
        front_matter=front,
    )


class AgentCatalog:
    """The agents of one environment, re-read when asked for a name it does not know yet."""

    def __init__(self, environments_dir: Path, environment: str) -> None:
        self.directory = Path(environments_dir) / environment / "agents"
        self._agents: dict[str, AgentSpec] = {}
        self._lock = threading.Lock()
        self.errors: list[str] = []

    def reload(self) -> dict[str, AgentSpec]:
        agents: dict[str, AgentSpec] = {}
        errors: list[str] = []
        if self.directory.is_dir():
            for file in sorted(self.directory.glob("*.prompt")):
                try:
                    spec = parse_agent_file(file)
                except AgentFileError as exc:
                    errors.append(str(exc))
                    continue
                agents[spec.name] = spec
        with self._lock:
            self._agents = agents
            self.errors = errors
        for err in errors:
            log.error("agent file: %s", err)
        return agents

    def get(self, name: str) -> AgentSpec | None:
        found = self._agents.get(name)
        if found is None:
            found = self.reload().get(name)
        return found

    def names(self) -> list[str]:
        return sorted(self._agents)
