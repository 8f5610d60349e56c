"""A workflow's `concurrency: {limit, key}` (issue 18): how many of its runs may be active at once, per key;
checked by the loader, applied by `governance/admission.py`.

`key` is a template over the run input limited to paths (`"{{ input.customer }}"`, `"{{ input.region }}-{{
input.tier }}"`): it is rendered inside the start transaction, on the writer thread, so it must
never need the Starlark sandbox (DESIGN: no expression on the writer). A missing path renders as
the empty string, so a run without the field shares the key `""` rather than failing to start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from station_wf.expr.paths import get_path
from station_wf.expr.templates import to_text

MAX_KEY_TEMPLATE = 512
MAX_KEY_LENGTH = 256
MAX_LIMIT = 1_000_000
_SEGMENT = re.compile(r"\{\{\s*input((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d{1,6}\])*)\s*\}\}")
_MISSING = object()


@dataclass(frozen=True)
class Concurrency:
    limit: int
    key: str | None = None

    def render_key(self, run_input: Any) -> str:
        """The run's key: the template with each `{{ input.path }}` replaced (missing: empty)."""
        if not self.key:
            return ""

        def one(match: re.Match[str]) -> str:
            path = match.group(1).lstrip(".")
            value = run_input if not path else get_path(run_input, path, _MISSING) if isinstance(run_input, dict) else _MISSING
            return "" if value is _MISSING or value is None else to_text(value)

        return _SEGMENT.sub(one, self.key)[:MAX_KEY_LENGTH]


def problems(value: Any) -> list[tuple[tuple[str, ...], str]]:
    """What is wrong with a `concurrency` value as written, each with its sub-path (for file:line)."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [((), "must be an object {limit, key?}")]
    out: list[tuple[tuple[str, ...], str]] = []
    for extra in sorted(set(value) - {"limit", "key"}):
        out.append(((extra,), "unknown field (concurrency takes limit and key)"))
    limit = value.get("limit")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        out.append((("limit",), f"must be an integer 1-{MAX_LIMIT}, got {limit!r:.40}"))
    key = value.get("key")
    if key is not None:
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_TEMPLATE:
            out.append((("key",), f"must be a non-empty template of at most {MAX_KEY_TEMPLATE} characters"))
        elif "{{" in _SEGMENT.sub("", key) or "}}" in _SEGMENT.sub("", key):
            out.append((("key",), "may hold only {{ input.<path> }} segments (no expressions: it is rendered "
                                  "inside the start transaction)"))
    return out


def of_definition(defn: dict[str, Any]) -> Concurrency | None:
    """The checked definition's limit (the loader validated it), or None when it has none."""
    value = defn.get("concurrency")
    if not isinstance(value, dict) or not isinstance(value.get("limit"), int):
        return None
    return Concurrency(int(value["limit"]), value.get("key"))
