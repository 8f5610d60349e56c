"""Who may decide an approval: the one rule, checked at load and again after templating.

`approvers` is a list of `user:<id>` / `team:<id>` strings (a bare `<id>` is Station's spelling of
`user:<id>`). The API reads an empty or missing list as "any principal", so a value that is only known
at run time (a template) must never silently become that: a string would be iterated as characters
(`"user:alice"` -> a principal named `e` approves), `""`/`[]` would let anyone approve, and `[1]` would
break every decision. At load a template is accepted where an entry or the whole list goes; after
rendering the value must be a non-empty list of such strings, or the step fails. Only an author may
open an approval to anyone: by leaving `approvers` out or writing a literal `[]` (the loader drops it).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["APPROVER_RE", "load_problems", "rendered_problem"]

APPROVER_RE = re.compile(r"^(?:(?:user|team):)?[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,199}$")
_ONE_TEMPLATE_RE = re.compile(r"^\s*\{\{.*\}\}\s*$", re.DOTALL)
_EXAMPLE = "like [user:alice, team:ops]"


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def load_problems(value: Any) -> list[tuple[tuple[int, ...], str]]:
    """What is wrong with `approvers` as written, as (sub-path, message); empty when it is fine."""
    if isinstance(value, str):
        if _ONE_TEMPLATE_RE.match(value) and value.count("{{") == 1:
            return []  # one `{{ }}` keeps its value's type: checked as a list when rendered
        if _is_template(value):
            return [((), "a template for the whole list must be exactly one '{{ }}' that gives a list; "
                         "to template one approver write a list: [\"user:{{ who }}\"]")]
        return [((), f"must be a list of approvers {_EXAMPLE}, not a string")]
    if not isinstance(value, list):
        return [((), f"must be a list of approvers {_EXAMPLE}")]
    problems: list[tuple[tuple[int, ...], str]] = []
    for index, entry in enumerate(value):
        if _is_template(entry):
            continue
        problem = _entry_problem(entry)
        if problem:
            problems.append(((index,), problem))
    return problems


def rendered_problem(value: Any) -> str | None:
    """Why a rendered `approvers` value cannot be used (the step then fails); None when it can."""
    if not isinstance(value, list):
        kind = "a string" if isinstance(value, str) else type(value).__name__
        return f"approvers must render to a list of approvers {_EXAMPLE}, got {kind} {value!r:.80}"
    if not value:
        return "approvers rendered to an empty list; refusing to let any principal decide"
    for index, entry in enumerate(value):
        problem = _entry_problem(entry)
        if problem:
            return f"approvers[{index}] {problem}"
    return None


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, str):
        return f"must be a string like 'user:alice' or 'team:ops', got {type(entry).__name__} {entry!r:.40}"
    if not APPROVER_RE.match(entry):
        return f"'{entry:.80}' is not an approver: use 'user:<id>' or 'team:<id>'"
    return None
