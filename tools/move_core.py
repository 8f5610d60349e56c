"""Rewrite imports after the pure core moved to `station_wf/core/` (issue 13). Idempotent: re-run it
after a rebase and it rewrites only what still uses the old names.

    python tools/move_core.py station_wf tests benchmarks && ruff check --fix --select I station_wf tests benchmarks

`ip.NAME` (the old `engine/interpreter.py`) is split by where NAME now lives: the vocabulary in
`core.model` (imported as `model`), the event functions in `core.interpreter` (still `ip`), the
history helpers in `core.history`, the built-in waits in `core.waits`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

MODEL = {
    "PENDING", "RUNNING", "WAITING_APPROVAL", "WAITING_SIGNAL", "PAUSED", "COMPLETED", "FAILED", "CANCELLED",
    "TIMED_OUT", "TERMINAL_RUN_STATUSES", "ACTIVE_RUN_STATUSES", "SUCCEEDED", "OPEN_STEP_STATUSES",
    "CONTAINER_TYPES", "RESERVED_INPUT_KEYS", "StepView", "Signal", "RunState", "NewApproval", "NewStep",
    "StepUpdate", "NewTimer", "Event", "Transition", "Execute", "Rules", "derive_status",
}
HISTORY = {"initial_context", "empty_engine", "started_payload", "rebuild_context"}
WAITS = {"approval_decided", "signal_received", "approval_id_for"}
SCOPES = {"scope_states", "view"}
MODULE_OF = {**{n: "model" for n in MODEL}, **{n: "history" for n in HISTORY}, **{n: "waits" for n in WAITS},
             **{n: "scopes" for n in SCOPES}}
ALIAS = {"model": "model", "history": "history", "waits": "waits", "scopes": "scopes", "interpreter": "ip"}

# Whole-module moves: old dotted path -> new dotted path.
MOVES = {
    "station_wf.engine.identity": "station_wf.core.identity",
    "station_wf.engine.station_flow": "station_wf.core.station_flow",
    "station_wf.dsl.approvers": "station_wf.expr.approvers",
    "station_wf.executors.agent_run": "station_wf.agents.executor",
    "station_wf.schedules.cron": "station_wf.expr.cron",
    "station_wf.schedules": "station_wf.expr.cron",
}

# Names that moved out of a module which stays: old module -> {name: new module}.
NAME_MOVES = {
    "station_wf.dsl.loader": {
        "DefinitionError": "station_wf.dsl.problems", "Problem": "station_wf.dsl.problems",
        "format_path": "station_wf.dsl.problems", "parse_duration": "station_wf.dsl.spec",
        "KNOWN_ACTIONS": "station_wf.dsl.spec", "WORKFLOW_FILE_SUFFIXES": "station_wf.dsl.spec",
    },
}

OLD_IP = re.compile(r"^(?P<indent>[ \t]*)from station_wf\.engine import interpreter as ip[ \t]*\n", re.M)
OLD_FROM_IP = re.compile(r"^(?P<indent>[ \t]*)from station_wf\.engine\.interpreter import (?P<names>[^\n(]+)\n", re.M)

# Calls whose API moved with the core (not imports, but they must follow the move).
FOLLOW = [
    (re.compile(r"^[ \t]*ip\.EXPRESSION_TIMEOUT_S = [^\n]*\n", re.M), ""),  # now LIMITS.rules, set by limits.configure
    (re.compile(r"\bLIMITS\.step_timeout\("), "LIMITS.rules.step_timeout("),
    (re.compile(r"pending_signals\(conn, run\.run_id\)\)(?!, rules)"), "pending_signals(conn, run.run_id), rules=limits.LIMITS.rules)"),
]


def _split_ip(text: str) -> str:
    match = OLD_IP.search(text)
    if not match:
        return text
    used: set[str] = set()

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        module = MODULE_OF.get(name, "interpreter")
        used.add(module)
        return f"{ALIAS[module]}.{name}"

    text = re.sub(r"(?<![\w.])ip\.([A-Za-z_]\w*)", repl, text)
    indent = match.group("indent")
    lines = []
    for module in sorted(used):
        alias = ALIAS[module]
        lines.append(f"{indent}from station_wf.core import {module}" + (f" as {alias}" if alias != module else "") + "\n")
    return OLD_IP.sub("".join(lines), text, count=1)


def _split_from_ip(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        indent = m.group("indent")
        by_module: dict[str, list[str]] = {}
        for name in (n.strip() for n in m.group("names").split(",")):
            by_module.setdefault(MODULE_OF.get(name.split(" as ")[0], "interpreter"), []).append(name)
        return "".join(f"{indent}from station_wf.core.{mod} import {', '.join(names)}\n" for mod, names in sorted(by_module.items()))

    return OLD_FROM_IP.sub(repl, text)


def _moves(text: str) -> str:
    for old, new in MOVES.items():
        old_pkg, _, old_mod = old.rpartition(".")
        new_pkg, _, new_mod = new.rpartition(".")
        text = re.sub(rf"\bfrom {re.escape(old)} import\b", f"from {new} import", text)
        alias = f" as {old_mod}" if new_mod != old_mod else ""
        text = re.sub(rf"\bfrom {re.escape(old_pkg)} import {old_mod}\b(?! as)", f"from {new_pkg} import {new_mod}{alias}", text)
        text = re.sub(rf"\bfrom {re.escape(old_pkg)} import {old_mod} as\b", f"from {new_pkg} import {new_mod} as", text)
    return text


def _name_moves(text: str) -> str:
    for old, moved in NAME_MOVES.items():
        pattern = re.compile(rf"^(?P<indent>[ \t]*)from {re.escape(old)} import (?:\((?P<many>[^)]*)\)|(?P<one>[^\n(]+))\n", re.M)

        def repl(m: re.Match[str], old: str = old, moved: dict[str, str] = moved) -> str:
            names = [n.strip() for n in (m.group("many") or m.group("one")).replace("\n", " ").split(",") if n.strip()]
            by_module: dict[str, list[str]] = {}
            for name in names:
                by_module.setdefault(moved.get(name.split(" as ")[0], old), []).append(name)
            return "".join(f"{m.group('indent')}from {mod} import {', '.join(ns)}\n" for mod, ns in sorted(by_module.items()))

        text = pattern.sub(repl, text)
    return text


def rewrite(text: str) -> str:
    for pattern, new in FOLLOW:
        text = pattern.sub(new, text)
    text = _split_ip(text)
    text = _split_from_ip(text)
    text = _name_moves(text)
    return _moves(text)


def main(roots: list[str]) -> int:
    changed = 0
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            if path.parts[:2] == ("station_wf", "core") or path.name == "move_core.py" or path.as_posix() == "station_wf/dsl/loader.py":
                continue
            old = path.read_text()
            new = rewrite(old)
            if path.parts[0] == "station_wf" and "RunState(" in new and "rules=" not in new:
                print(f"WARNING {path}: builds a RunState without rules= (the daemon's settings would be ignored)")
            if new != old:
                path.write_text(new)
                changed += 1
                print(f"rewrote {path}")
    print(f"{changed} files rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or ["station_wf", "tests", "benchmarks"]))
