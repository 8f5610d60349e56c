"""The grammar tables of a workflow definition: state types and their keys, names, durations.

Owns the vocabulary the checker enforces (which keys each state type takes, the name and duration
regexes, the action names). Imports only `expr/` (the reserved keys are defined once, in `expr.paths`).
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

from station_wf.expr.paths import RESERVED_INPUT_KEYS

WORKFLOW_FILE_SUFFIXES = (".workflow.yaml", ".workflow.yml", ".workflow.json")

KNOWN_ACTIONS = ("agent.run", "human.approval", "signal.wait", "workflow.run", "workflow.continueAsNew")
RUN_CHILD, CONTINUE_AS_NEW = "workflow.run", "workflow.continueAsNew"
CHILD_INPUT_KEYS = ("workflow", "version", "input", "wait", "allowRecursion")
CONTINUE_INPUT_KEYS = ("input", "version")
ACTION_ALIASES = {"await": "signal.wait", "await.signal": "signal.wait"}

STATE_TYPES = (
    "operation", "agent", "human_approval", "inject", "switch", "parallel", "foreach",
    "transform", "sleep", "timer", "try", "cron",
)

# Input keys a `human.approval` / `onReject` / `onTimeout` may name (DESIGN 3).
APPROVAL_OUTCOMES = ("fail", "cancel", "continue")
JOIN_MODES = ("all", "any", "atLeast")
# Names a foreach item may not take: they would shadow the context or iteration globals.
RESERVED_ITEM_NAMES = (*RESERVED_INPUT_KEYS, "_index", "_total")

MISSING: Any = object()

TOP_KEYS = (
    "id", "version", "name", "description", "inputSchema", "timeoutSeconds", "start", "states",
    "schedules", "metadata", "specVersion", "concurrency",
)
COMMON_KEYS = ("name", "id", "type", "next", "transition", "end", "resultPath", "description", "metadata")
TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "operation": ("action", "input", "timeoutSeconds", "retry"),
    "agent": ("agent", "task", "prompt", "input", "timeoutSeconds", "retry"),
    "human_approval": (
        "message", "prompt", "approvers", "timeout_seconds", "timeoutSeconds", "summaryPath", "onReject",
        "onTimeout",
    ),
    "inject": ("data",),
    "switch": ("dataPath", "conditions", "defaultNext"),
    "parallel": ("branches", "join"),
    "foreach": ("itemsPath", "itemName", "maxConcurrency", "iterator"),
    "transform": ("expression",),
    "sleep": ("duration", "durationSeconds"),
    "timer": ("duration", "durationSeconds"),
    "try": ("try", "catch", "finally"),
    "cron": ("cron", "timezone", "enabled", "input"),
}
ANY_STATE_KEYS = tuple(dict.fromkeys(COMMON_KEYS + tuple(k for keys in TYPE_KEYS.values() for k in keys)))
# Common keys that make no sense for a type: reported with a specific message, not "unknown key".
FORBIDDEN_COMMON: dict[str, dict[str, str]] = {
    "switch": {
        "next": "a switch state routes with 'conditions' and 'defaultNext'; 'next' is not allowed",
        "transition": "a switch state routes with 'conditions' and 'defaultNext'; 'transition' is not allowed",
        "end": "a switch state routes with 'conditions' and 'defaultNext'; 'end' is not allowed",
        "resultPath": "a switch state produces no result; 'resultPath' is not allowed",
    },
    "cron": {
        "end": "a cron state only marks the start of the workflow; it needs 'next', not 'end'",
        "resultPath": "a cron state produces no result; 'resultPath' is not allowed",
    },
}
RETRY_KEYS = ("maxAttempts", "backoffSeconds", "backoffRate", "maxBackoffSeconds", "jitter")
AGENT_INPUT_KEYS = ("agent", "task", "variables", "timeoutSeconds")
APPROVAL_INPUT_KEYS = ("message", "approvers", "timeoutSeconds", "summaryPath", "onReject", "onTimeout")
# Station's snake_case input keys, renamed when an operation uses Station's `input.task: <action>` form.
STATION_INPUT_RENAMES = {"agent_task": "task", "timeout_seconds": "timeoutSeconds", "summary_path": "summaryPath"}

WORKFLOW_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# No dots: state and branch names are joined with '.' into scope paths and `steps.<name>` result paths.
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def kind_of(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_template(value: Any) -> bool:
    """Input values may be `{{ }}` templates rendered at run time; their type is unknown here."""
    return isinstance(value, str) and "{{" in value



def json_copy(value: Any) -> Any:
    """A deep copy that turns tuples into lists, so the result is plain JSON."""
    if isinstance(value, dict):
        return {key: json_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_copy(item) for item in value]
    return copy.copy(value)


def parse_duration(value: str) -> float | None:
    """'30s', '5m', '1h30m', '250ms', '1d' or a bare number of seconds -> seconds; None if malformed."""
    text = value.strip()
    if len(text) > 64:  # a 5,000-digit number is not a duration (and float() reads it as inf)
        return None
    try:
        seconds = float(text)
    except ValueError:
        if not _DURATION_RE.match(text):
            return None
        seconds = sum(float(amount) * _DURATION_UNITS[unit] for amount, unit in _DURATION_PART_RE.findall(text))
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def canonical_action(name: str) -> str | None:
    if name in KNOWN_ACTIONS:
        return name
    return ACTION_ALIASES.get(name)
