"""Station's own agent `.prompt` files, loaded as they are.

Station (cloudshipai/station, e.g. `bundles/demos/aws-k8s-grafana/agents/*.prompt`) writes dotprompt
files whose `metadata.name` is a display name ("AWS Cost Spike RCA") and whose agent is referenced
by the file's stem; `model` is bare (`gpt-4o-mini`, Station's configured OpenAI-compatible provider);
the body reads the step's task as `{{userInput}}`; `output.format: json` asks for JSON; and `tools`,
`max_steps`, `app`, `app_type` drive Station's own agent loop. This module decides those facts for
one file's front matter; `catalog.parse_agent_text` applies them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Front matter Station reads, shown as a note saying what it does here.
_NOTED = {
    "tools": "offered to the model from the environment's MCP servers and agents (docs/agents.md)",
    "max_steps": "bounds the model turns of the tool loop; past it the step fails",
    "app": "Station's app grouping is kept as information only",
    "app_type": "Station's app grouping is kept as information only",
    "tags": "kept as information only",
}
_STATION_KEYS = ("max_steps", "tools", "app", "app_type")
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
BARE_MODEL_PROVIDER = "openai"  # bare model names go to the OpenAI-compatible provider (OPENAI_BASE_URL)


@dataclass(frozen=True)
class StationAgentFacts:
    """What a Station agent file means here: its id, display name, model and notes."""

    name: str
    display_name: str | None
    model: str | None
    output_format: str | None
    notes: tuple[str, ...] = field(default_factory=tuple)


def is_station_agent(front: dict[str, Any]) -> bool:
    """Station's files: Station-only keys, a display name that is not an id, or a bare model name."""
    metadata = front.get("metadata") if isinstance(front.get("metadata"), dict) else {}
    name = metadata.get("name")
    model = front.get("model")
    return (any(key in front for key in _STATION_KEYS)
            or (isinstance(name, str) and not _ID_RE.match(name))
            or (isinstance(model, str) and "/" not in model and not front.get("endpoint")))


def station_facts(front: dict[str, Any], stem: str) -> StationAgentFacts:
    """The agent id is the file stem (how Station workflows reference it); metadata.name is shown beside."""
    metadata = front.get("metadata") if isinstance(front.get("metadata"), dict) else {}
    display = metadata.get("name") if isinstance(metadata.get("name"), str) else None
    model = front.get("model")
    notes: list[str] = []
    if isinstance(model, str) and model.strip() and "/" not in model and not front.get("endpoint"):
        notes.append(f"model '{model}' has no provider prefix: it runs on the OpenAI-compatible provider "
                     f"as '{BARE_MODEL_PROVIDER}/{model}'")
        model = f"{BARE_MODEL_PROVIDER}/{model.strip()}"
    for key, why in _NOTED.items():
        if key in front or key in metadata:
            notes.append(f"'{key}': {why}")
    output = front.get("output") if isinstance(front.get("output"), dict) else {}
    fmt = output.get("format") if isinstance(output.get("format"), str) else None
    return StationAgentFacts(stem, display if display != stem else None, model if isinstance(model, str) else None,
                             fmt, tuple(notes))


def uses_user_input(template: str) -> bool:
    """A body that places `{{userInput}}` itself: the task is not appended as another user turn."""
    return bool(re.search(r"\{\{\{?\s*userInput\s*\}?\}\}", template))
