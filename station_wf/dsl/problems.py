"""Problems found in a definition and where they are: `Problem`, `DefinitionError`, the report.

Every problem names the file, line, column and path of the offending key, because users fix files,
not stack traces. `Report` resolves a path to the nearest located ancestor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

PathT = tuple[str | int, ...]
"""A location inside a definition: mapping keys and list indices, outermost first."""
Mark = tuple[int, int]
"""A 1-based (line, column) position in the source text."""

_PLAIN_KEY_RE = re.compile(r"^[A-Za-z0-9_$-]+$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a definition, located as precisely as the input allows."""

    file: str | None
    line: int | None
    path: str
    message: str
    column: int | None = None

    def __str__(self) -> str:
        """`FILE:LINE:COL: PATH: MESSAGE`, the shape editors and compilers use, so tools can jump there."""
        where = self.file or ""
        if self.line is not None:
            pos = f"{self.line}:{self.column}" if self.column is not None else str(self.line)
            where = f"{where}:{pos}" if where else f"line {pos}"
        return ": ".join(part for part in (where, self.path, self.message) if part)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the API returns."""
        return {"file": self.file, "line": self.line, "column": self.column, "path": self.path,
                "message": self.message}


class DefinitionError(Exception):
    """One or more problems in a definition; str() is one readable line per problem."""

    problems: list[Problem]
    workflow_id: str | None
    """The definition's `id` when it could be read, so callers can say which workflow is broken."""

    def __init__(self, problems: Iterable[Problem], workflow_id: str | None = None) -> None:
        self.problems = list(problems)
        self.workflow_id = workflow_id
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems, self.workflow_id))


def format_path(path: PathT) -> str:
    """Render a path the way users read it: `states[2].input.agent`, odd keys as `["a b"]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY_RE.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


class Report:
    """Collects problems; resolves a path's position from the nearest located ancestor."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.marks: dict[PathT, Mark] = {}
        # Only for YAML/JSON text: the scalar nodes and the text they came from, to locate a position
        # *inside* a string (a Starlark syntax error, a broken template) when an error needs it.
        self.nodes: dict[PathT, yaml.ScalarNode] = {}
        self.text: str | None = None
        self.workflow_id: str | None = None

    def add(self, path: PathT, mark: Mark | None, message: str) -> None:
        line, column = mark if mark is not None else (None, None)
        self.problems.append(Problem(self.source, line, format_path(path), message, column))

    def error(self, path: PathT, message: str) -> None:
        self.add(path, self.mark_of(path), message)

    def mark_of(self, path: PathT) -> Mark | None:
        probe = path
        while True:
            if probe in self.marks:
                return self.marks[probe]
            if not probe:
                return None
            probe = probe[:-1]

    def inside(self, path: PathT, offset: int) -> Mark | None:
        """Where character `offset` of the string at `path` is in the file, if the scalar maps 1:1.

        Plain and quoted one-line scalars without escapes, and literal (`|`) blocks, map directly; folded
        or escaped scalars do not, and then the caller falls back to the key's position.
        """
        node = self.nodes.get(path)
        if node is None or self.text is None or not 0 <= offset <= len(node.value):
            return None
        value = node.value
        start = node.start_mark
        if node.style in (None, '"', "'"):
            quote = 1 if node.style else 0
            written = self.text[start.index + quote:node.end_mark.index - quote]
            if written != value or "\n" in value:
                return None
            return start.line + 1, start.column + quote + offset + 1
        if node.style == "|":
            k = value.count("\n", 0, offset)
            col = offset - (value.rfind("\n", 0, offset) + 1)
            lines = self.text.split("\n", start.line + k + 2)
            index = start.line + 1 + k  # the block starts on the line after its `|` header
            if index >= len(lines):
                return None
            written, line_value = lines[index], value.split("\n")[k]
            if not written.endswith(line_value):
                return None
            return index + 1, len(written) - len(line_value) + col + 1
        return None

    def raise_if_any(self) -> None:
        if self.problems:
            ordered = sorted(self.problems, key=lambda p: (p.line is None, p.line or 0, p.column or 0))
            raise DefinitionError(ordered, self.workflow_id)
