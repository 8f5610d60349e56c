"""YAML composed into plain values that keep the line and column of every path.

The loader composes the node tree itself (libyaml when present) and builds values from it, so
duplicate keys, odd tags, and alias or merge-key bombs are reported instead of silently accepted.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from station_wf.dsl import limits
from station_wf.dsl.problems import Mark, PathT, Report
from station_wf.dsl.spec import MISSING

_YAML_STR = "tag:yaml.org,2002:str"
_YAML_SCALARS = (
    _YAML_STR, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
)
_YAML_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_YAML_MAP = "tag:yaml.org,2002:map"
_YAML_SEQ = "tag:yaml.org,2002:seq"
_YAML_MERGE = "tag:yaml.org,2002:merge"
_MAX_NODES = 200_000
# libyaml composes ~7x faster than the pure-Python parser (a 750 KB file: 1.7 s instead of 11.6 s), with
# the same node tree and marks; the pure one stays the fallback where the wheel has no libyaml.
_COMPOSER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class Builder:
    """Plain values from a composed YAML node tree, with the 1-based line of every path."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.marks: dict[PathT, Mark] = {}
        self.raw: dict[PathT, str] = {}
        self.nodes: dict[PathT, yaml.ScalarNode] = {}
        self._loader = yaml.SafeLoader("")
        self._active: set[int] = set()
        self._count = 0
        self._merged = 0

    def build(self, node: yaml.Node, path: PathT) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            raise TooLarge
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._active:
            self.report.add(path, mark_of_node(node), "recursive YAML alias")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _YAML_SEQ:
                    self.report.add(path, mark_of_node(node), f"unsupported YAML tag {node.tag!r}")
                    return None
                out: list[Any] = []
                for index, item in enumerate(node.value):
                    item_path = (*path, index)
                    self.marks[item_path] = mark_of_node(item)
                    out.append(self.build(item, item_path))
                return out
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            self.report.add(path, mark_of_node(node), "unsupported YAML node")
            return None
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: PathT) -> Any:
        self.raw[path] = node.value
        self.nodes[path] = node
        if node.tag == _YAML_TIMESTAMP:
            return node.value  # keep what the user wrote: datetimes are not JSON
        if node.tag not in _YAML_SCALARS:
            self.report.add(path, mark_of_node(node), f"unsupported YAML tag {node.tag!r}")
            return None
        try:
            value = self._loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError) as exc:
            self.report.add(path, mark_of_node(node), f"invalid {node.tag.rsplit(':', 1)[-1]} value: {exc}")
            return None
        if node.style == '"' and isinstance(value, str) and _SURROGATE_RE.search(value):
            # JSON writes astral characters as escaped surrogate pairs; YAML leaves them unpaired.
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value

    def _key(self, node: yaml.Node, path: PathT) -> str | None:
        """Keys are the text written (so `on:` stays "on", not True); complex keys are refused."""
        if not isinstance(node, yaml.ScalarNode):
            self.report.add(path, mark_of_node(node), "mapping keys must be plain strings")
            return None
        return str(node.value)

    def _mapping(self, node: yaml.MappingNode, path: PathT) -> dict[str, Any]:
        if node.tag != _YAML_MAP:
            self.report.add(path, mark_of_node(node), f"unsupported YAML tag {node.tag!r}")
            return {}
        explicit: list[tuple[yaml.Node, yaml.Node]] = []
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _YAML_MERGE:
                merges.append(value_node)
            else:
                explicit.append((key_node, value_node))
        explicit_keys = {k.value for k, _ in explicit if isinstance(k, yaml.ScalarNode)}
        out: dict[str, Any] = {}
        for merge in merges:  # `<<: *anchor`: merged keys first, explicit keys override them
            for key_node, value_node in self._merge_pairs(merge, path, depth=0):
                key = str(key_node.value)
                if key in explicit_keys or key in out:
                    continue
                key_path = (*path, key)
                self.marks[key_path] = mark_of_node(key_node)
                out[key] = self.build(value_node, key_path)
        first_line: dict[str, int] = {}
        for key_node, value_node in explicit:
            key = self._key(key_node, path)
            if key is None:
                continue
            key_path = (*path, key)
            if key in first_line:
                self.report.add(
                    key_path, mark_of_node(key_node), f"duplicate key '{key}' (first defined on line {first_line[key]})"
                )
                continue
            first_line[key] = _line(key_node)
            self.marks[key_path] = mark_of_node(key_node)
            out[key] = self.build(value_node, key_path)
        return out

    def _merge_pairs(self, node: yaml.Node, path: PathT, depth: int) -> list[tuple[yaml.Node, yaml.Node]]:
        """The (key, value) pairs a `<<` merge brings in, nested merges flattened, earlier sources winning."""
        if depth > 32:
            self.report.add(path, mark_of_node(node), "YAML merge keys nested too deeply")
            return []
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        seen: set[str] = set()
        for source in sources:
            self._merged += 1 + len(getattr(source, "value", ()))  # the work doubles per level of a bomb
            if self._merged > limits.MAX_MERGE_PAIRS:
                raise TooLarge(f"YAML '<<' merge keys expand to more than {limits.MAX_MERGE_PAIRS} pairs")
            if not isinstance(source, yaml.MappingNode):
                self.report.add(path, mark_of_node(source), "a '<<' merge needs a mapping or a list of mappings")
                continue
            own = [(k, v) for k, v in source.value if k.tag != _YAML_MERGE and isinstance(k, yaml.ScalarNode)]
            own_keys = {str(k.value) for k, _ in own}
            inherited: list[tuple[yaml.Node, yaml.Node]] = []
            for k, v in source.value:
                if k.tag == _YAML_MERGE:
                    inherited += [p for p in self._merge_pairs(v, path, depth + 1) if str(p[0].value) not in own_keys]
            for k, v in inherited + own:
                if str(k.value) not in seen:
                    seen.add(str(k.value))
                    pairs.append((k, v))
        return pairs


class TooLarge(Exception):
    """The document expands to more nodes than any workflow needs (alias and merge-key bombs)."""

    def __init__(self, message: str = f"the document expands to more than {_MAX_NODES} YAML nodes") -> None:
        super().__init__(message)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def mark_of_node(node: yaml.Node) -> Mark:
    return int(node.start_mark.line) + 1, int(node.start_mark.column) + 1



def compose(text: str, looks_json: bool) -> tuple[Any, str, Exception | None]:
    """The YAML node tree (None for an empty document) and the text composed, or MISSING and the error."""
    try:
        return yaml.compose(text, Loader=_COMPOSER), text, None
    except (yaml.YAMLError, RecursionError) as exc:
        error: Exception = exc
    if looks_json:  # JSON allows tabs as whitespace, YAML does not; outside JSON strings they are only that
        untabbed = text.replace("\t", " ")
        try:
            return yaml.compose(untabbed, Loader=_COMPOSER), untabbed, None
        except (yaml.YAMLError, RecursionError):
            pass
    return MISSING, text, error


def report_yaml_error(exc: Exception | None, report: Report) -> None:
    """A YAML syntax error as one problem, located by the parser's mark."""
    if isinstance(exc, RecursionError):
        report.add((), None, "the document is nested too deeply")
    elif isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        position = (mark.line + 1, mark.column + 1) if mark is not None else None
        message = exc.problem or str(exc)
        if exc.context:
            message += f" ({exc.context})"
        report.add((), position, f"invalid YAML: {message}")
    else:
        report.add((), None, f"invalid YAML: {exc}")
