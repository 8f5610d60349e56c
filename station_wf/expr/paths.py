"""Context paths (DESIGN section 3): ``a.b.0.c``, ``a[0].b``, ``$.a.b``, ``ctx.a``.

``resultPath``, ``dataPath``, ``itemsPath`` and ``summaryPath`` all use this one syntax, so
every part of the engine reads and writes the context the same way. Pure functions, no I/O.

* ``""``, ``"$"`` and ``"ctx"`` mean the context root; ``$.`` and ``ctx.`` prefixes are dropped.
* A segment of digits (``a.0``) or a bracketed integer (``a[0]``, ``a[-1]``) is a list index;
  on a dict it falls back to the string key (``"0"``), since JSON objects only have string keys.
* ``a["odd.key"]`` / ``a['odd key']`` address keys that contain dots or spaces.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

__all__ = ["RESERVED_INPUT_KEYS", "RESERVED_ROOT_KEYS", "PathError", "Segment", "get_path", "parse_path", "set_path"]

Segment = str | int


class PathError(ValueError):
    """A path is malformed, or does not resolve in the object it is applied to."""


class _Missing:
    """Sentinel type: lets ``None`` be a legitimate default."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()

_INT_RE = re.compile(r"-?\d+\Z")
RESERVED_ROOT_KEYS = ("workflow", "steps")
"""Context keys the engine owns (DESIGN 3); a merge into the root never overwrites them."""
RESERVED_INPUT_KEYS = (*RESERVED_ROOT_KEYS, "ctx")
"""Keys a run's input may not carry: the engine's own plus `ctx`, the name expressions read the context by."""
_ROOTS = frozenset({"", "$", "ctx"})


@lru_cache(maxsize=4096)
def parse_path(path: str) -> tuple[Segment, ...]:
    """Split a path into segments; ``()`` is the root. Cached: paths come from definitions."""
    if not isinstance(path, str):
        raise PathError(f"path must be a string, got {type(path).__name__}")
    text = path.strip()
    if text in _ROOTS:
        return ()
    for prefix in ("$", "ctx"):
        if text.startswith(prefix) and text[len(prefix)] in ".[":
            text = text[len(prefix) :]
            if text.startswith("."):
                text = text[1:]
            break
    segments: list[Segment] = []
    i, n = 0, len(text)
    expect_segment = True  # at start or right after a '.'
    while i < n:
        ch = text[i]
        if ch == "[":
            if expect_segment and segments:
                raise PathError(f"path {path!r}: '.' followed by '['")
            end = text.find("]", i)
            if end < 0:
                raise PathError(f"path {path!r}: unclosed '['")
            inner = text[i + 1 : end].strip()
            if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
                segments.append(inner[1:-1])
            elif _INT_RE.match(inner):
                segments.append(int(inner))
            else:
                raise PathError(f'path {path!r}: bad index [{inner}] (use [0] or ["key"])')
            i = end + 1
            expect_segment = False
            if i < n and text[i] not in ".[":
                raise PathError(f"path {path!r}: expected '.' or '[' after ']'")
        elif ch == ".":
            if expect_segment:
                raise PathError(f"path {path!r}: empty segment")
            i += 1
            expect_segment = True
            if i == n:
                raise PathError(f"path {path!r}: ends with '.'")
        else:
            j = i
            while j < n and text[j] not in ".[":
                j += 1
            name = text[i:j].strip()
            if not name:
                raise PathError(f"path {path!r}: empty segment")
            segments.append(int(name) if _INT_RE.match(name) else name)
            i = j
            expect_segment = False
    return tuple(segments)


def _render(segments: tuple[Segment, ...]) -> str:
    """Format a segment prefix for error messages (``$`` for the root)."""
    out = "$"
    for seg in segments:
        out += f"[{seg}]" if isinstance(seg, int) else f".{seg}"
    return out


def _step(obj: Any, seg: Segment) -> Any:
    """One lookup; returns ``_MISSING`` when the segment is absent."""
    if isinstance(obj, dict):
        if isinstance(seg, int):
            return obj.get(str(seg), obj.get(seg, _MISSING))
        return obj.get(seg, _MISSING)
    if isinstance(obj, (list, tuple)) and isinstance(seg, int):
        if -len(obj) <= seg < len(obj):
            return obj[seg]
    return _MISSING


def get_path(obj: Any, path: str, default: Any = _MISSING) -> Any:
    """Resolve ``path`` in ``obj``; raise ``PathError`` naming the missing segment unless ``default``."""
    segments = parse_path(path)
    cur = obj
    for idx, seg in enumerate(segments):
        nxt = _step(cur, seg)
        if nxt is _MISSING:
            if default is not _MISSING:
                return default
            where = _render(segments[:idx])
            if isinstance(cur, (dict, list, tuple)):
                what = "index" if isinstance(seg, int) and not isinstance(cur, dict) else "key"
                raise PathError(f"path {path!r}: {what} {seg!r} not found at {where}")
            raise PathError(f"path {path!r}: cannot look up {seg!r} in {type(cur).__name__} at {where}")
        cur = nxt
    return cur


def set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    """Write ``value`` at ``path`` in place, creating intermediate dicts.

    The root path merges a dict value into ``obj`` (shallow), refusing one that carries the
    engine's own keys (``RESERVED_ROOT_KEYS``); a list index must exist or
    equal the list's length (append). Existing non-container values are never overwritten
    by intermediates: that would silently drop data, so it is a ``PathError``.
    """
    if not isinstance(obj, dict):
        raise PathError(f"set_path needs a dict root, got {type(obj).__name__}")
    segments = parse_path(path)
    if not segments:
        if not isinstance(value, dict):
            raise PathError(
                f"path {path!r} is the root: only an object can be merged there, got {type(value).__name__}"
            )
        taken = [key for key in RESERVED_ROOT_KEYS if key in value]
        if taken:  # an agent answering {"steps": ...} must not erase every earlier result
            raise PathError(
                f"path {path!r} is the root: the result has key {taken[0]!r}, which the engine owns; "
                "write it below a key instead (resultPath: 'result')"
            )
        obj.update(value)
        return
    cur: Any = obj
    for idx, seg in enumerate(segments[:-1]):
        nxt = _step(cur, seg)
        if nxt is _MISSING:
            if isinstance(cur, dict):
                nxt = {}
                cur[str(seg) if isinstance(seg, int) else seg] = nxt
            elif isinstance(cur, list):
                raise PathError(f"path {path!r}: index {seg!r} out of range at {_render(segments[:idx])}")
            else:
                raise PathError(
                    f"path {path!r}: cannot set inside {type(cur).__name__} at {_render(segments[:idx])}"
                )
        cur = nxt
    last = segments[-1]
    where = _render(segments[:-1])
    if isinstance(cur, dict):
        cur[str(last) if isinstance(last, int) else last] = value
    elif isinstance(cur, list):
        if not isinstance(last, int):
            raise PathError(f"path {path!r}: key {last!r} on a list at {where}")
        if last == len(cur):
            cur.append(value)
        elif -len(cur) <= last < len(cur):
            cur[last] = value
        else:
            raise PathError(f"path {path!r}: index {last} out of range (len {len(cur)}) at {where}")
    else:
        raise PathError(f"path {path!r}: cannot set inside {type(cur).__name__} at {where}")
