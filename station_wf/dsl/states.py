"""One check per state type (`_t_operation`, `_t_switch`, ...), plus retry and join, as a mixin of the checker.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from station_wf.dsl import limits
from station_wf.dsl.diagnostics import clip
from station_wf.dsl.fields import unknown_message
from station_wf.dsl.problems import PathT, format_path
from station_wf.dsl.spec import (
    AGENT_INPUT_KEYS,
    APPROVAL_INPUT_KEYS,
    APPROVAL_OUTCOMES,
    CHILD_INPUT_KEYS,
    CONTINUE_AS_NEW,
    CONTINUE_INPUT_KEYS,
    IDENT_RE,
    JOIN_MODES,
    KNOWN_ACTIONS,
    MISSING,
    NAME_RE,
    RESERVED_ITEM_NAMES,
    RUN_CHILD,
    STATION_INPUT_RENAMES,
    canonical_action,
    is_number,
    is_template,
    json_copy,
    kind_of,
    parse_duration,
)
from station_wf.expr import approvers as approver_rules
from station_wf.expr.paths import parse_path


class StateTypes:
    """The per-type checks of the checker (a mixin of `Checker`): one `_t_<type>` per state type."""

    def _t_operation(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        input_path: PathT = (*path, "input")
        given = self._dict(item, "input", path)
        payload: dict[str, Any] = json_copy(given) if given is not None else {}
        self._templates(given, input_path)
        key_paths: dict[str, PathT] = {}
        action: str | None = None
        if "action" in item:
            raw = item["action"]
            if not isinstance(raw, str):
                self.error((*path, "action"), f"must be a string, got {kind_of(raw)}")
            else:
                action = canonical_action(raw)
                if action is None:
                    self.error((*path, "action"), f"unknown action '{raw}' (known: {', '.join(KNOWN_ACTIONS)})")
        else:
            marker = payload.get("task")
            action = canonical_action(marker) if isinstance(marker, str) else None
            if action is None:
                self.error((*path, "action"), f"missing required key 'action' (one of {', '.join(KNOWN_ACTIONS)})")
            else:  # Station: `input.task: agent.run`, the prompt in `agent_task`
                del payload["task"]
                for old, new in STATION_INPUT_RENAMES.items():
                    if old not in payload:
                        continue
                    if new in payload:
                        self.error((*input_path, old), f"'{old}' and '{new}' mean the same; use only '{new}'")
                        continue
                    payload[new] = payload.pop(old)
                    key_paths[new] = (*input_path, old)
        if action is not None:
            self._action_input(action, payload, input_path, key_paths)
        return {
            "action": action,
            "input": payload,
            "timeoutSeconds": self._number(item, "timeoutSeconds", path, minimum=0, exclusive=True),
            "retry": self._retry(item, path),
        }

    def _action_input(self, action: str, payload: dict[str, Any], input_path: PathT, key_paths: dict[str, PathT]) -> None:
        """What each executor needs from `input`; template strings pass, their type is known only at run time."""

        def at(key: str) -> PathT:
            return key_paths.get(key, (*input_path, key))

        if action == "agent.run":
            for key in payload:
                if key not in AGENT_INPUT_KEYS:
                    self.error(at(key), unknown_message(key, AGENT_INPUT_KEYS, "in agent.run input"))
            if "agent" not in payload:
                self.error((*input_path, "agent"), "missing required key 'agent' (the agent to run)")
            elif not isinstance(payload["agent"], str) or not payload["agent"].strip():
                self.error(at("agent"), f"must be a non-empty string, got {kind_of(payload['agent'])}")
            if payload.get("task") is not None and not isinstance(payload["task"], str):
                self.error(at("task"), f"must be a string, got {kind_of(payload['task'])}")
            if "variables" in payload and not isinstance(payload["variables"], dict):
                self.error(at("variables"), f"must be a mapping, got {kind_of(payload['variables'])}")
            self._input_timeout(payload, at)
        elif action == "human.approval":
            for key in payload:
                if key not in APPROVAL_INPUT_KEYS:
                    self.error(at(key), unknown_message(key, APPROVAL_INPUT_KEYS, "in human.approval input"))
            if "message" in payload and not isinstance(payload["message"], str):
                self.error(at("message"), f"must be a string, got {kind_of(payload['message'])}")
            if payload.get("approvers") == []:
                del payload["approvers"]  # written as "anyone": the same as leaving it out
            elif "approvers" in payload:
                self._approvers(payload["approvers"], at("approvers"))
            if "summaryPath" in payload:
                self._check_path(payload["summaryPath"], at("summaryPath"))
            for key in ("onReject", "onTimeout"):
                if key in payload and payload[key] not in APPROVAL_OUTCOMES:
                    self.error(at(key), f"must be one of {', '.join(APPROVAL_OUTCOMES)}, got {payload[key]!r}")
            self._input_timeout(payload, at)
        elif action in (RUN_CHILD, CONTINUE_AS_NEW):
            self._child_input(action, payload, at)
        elif action == "signal.wait":
            self._input_timeout(payload, at)
            if "onTimeout" in payload and payload["onTimeout"] not in APPROVAL_OUTCOMES:
                self.error(at("onTimeout"), f"must be one of {', '.join(APPROVAL_OUTCOMES)}, "
                           f"got {payload['onTimeout']!r}")

    def _child_input(self, action: str, payload: dict[str, Any], at: Callable[[str], PathT]) -> None:
        """`workflow.run {workflow, version?, input?, wait?, allowRecursion?}`, `workflow.continueAsNew {input?,
        version?}`; a template stands for any value (checked again when rendered: core/children.py)."""
        known = CHILD_INPUT_KEYS if action == RUN_CHILD else CONTINUE_INPUT_KEYS
        for key in payload:
            if key not in known:
                self.error(at(key), unknown_message(key, known, f"in {action} input"))
        if action == RUN_CHILD:
            name = payload.get("workflow")
            if name is None:
                self.error(at("workflow"), "missing required key 'workflow' (the id of the workflow to run)")
            elif not isinstance(name, str) or not name.strip():
                self.error(at("workflow"), f"must be a workflow id, got {kind_of(name)}")
        version = payload.get("version")
        if version is not None and version != "latest" and not is_template(version) and (
                not isinstance(version, int) or isinstance(version, bool) or version < 1):
            self.error(at("version"), f"must be a positive integer or 'latest', got {version!r:.40}")
        if "input" in payload and not isinstance(payload["input"], dict) and not is_template(payload["input"]):
            self.error(at("input"), f"must be a mapping (the run's input), got {kind_of(payload['input'])}")
        for key in ("wait", "allowRecursion"):
            if key in payload and not isinstance(payload[key], bool) and not is_template(payload[key]):
                self.error(at(key), f"must be true or false, got {kind_of(payload[key])}")

    def _reserved_result(self, state: dict[str, Any], path: PathT) -> None:
        """The engine's `workflow` and `steps` keys are never a result's target (DESIGN 3)."""
        result_path = state.get("resultPath")
        if result_path is not None and limits.reserved_result_path_problem(result_path):
            self.error((*path, "resultPath"), str(limits.reserved_result_path_problem(result_path)))
        elif state["type"] == "inject" and (result_path is None or parse_path(result_path) == ()):
            problem = limits.root_merge_problem(state.get("data"))
            if problem:
                self.error((*path, "data"), f"inject {problem}")

    def _approvers(self, value: Any, path: PathT) -> bool:
        """`user:`/`team:` entries or templates (see expr.approvers); True when the value is usable."""
        problems = approver_rules.load_problems(value)
        for sub, message in problems:
            self.error((*path, *sub), message)
        return not problems

    def _input_timeout(self, payload: dict[str, Any], at: Callable[[str], PathT]) -> None:
        value = payload.get("timeoutSeconds")
        if value is None or is_template(value):
            return
        if not is_number(value) or not math.isfinite(value) or value <= 0:
            self.error(at("timeoutSeconds"), f"must be a number > 0, got {value!r:.40}")
        elif limits.number_problem("timeoutSeconds", value):
            self.error(at("timeoutSeconds"), str(limits.number_problem("timeoutSeconds", value)))

    def _t_agent(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        agent = self._str(item, "agent", path, required=True)
        task_key = self._alias(item, path, "task", "prompt")
        task = self._str(item, task_key, path, nonempty=False) if task_key else None
        payload: dict[str, Any] = {"agent": agent, "task": task}
        variables = self._dict(item, "input", path)
        for key in ("agent", task_key, "input"):
            if key is not None and key in item:
                self._templates(item[key], (*path, key))
        if variables is not None:
            payload["variables"] = json_copy(variables)
        return {
            "action": "agent.run",
            "input": payload,
            "timeoutSeconds": self._number(item, "timeoutSeconds", path, minimum=0, exclusive=True),
            "retry": self._retry(item, path),
        }

    def _t_human_approval(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        message_key = self._alias(item, path, "message", "prompt")
        for key in (message_key, "approvers"):
            if key is not None and key in item:
                self._templates(item[key], (*path, key))
        if message_key:
            message = self._str(item, message_key, path, nonempty=False)
            if message is not None:
                payload["message"] = message
        if item.get("approvers") not in (None, []) and self._approvers(item["approvers"], (*path, "approvers")):
            approvers = item["approvers"]
            payload["approvers"] = list(approvers) if isinstance(approvers, list) else approvers
        timeout_key = self._alias(item, path, "timeout_seconds", "timeoutSeconds")
        if timeout_key:
            timeout = self._number(item, timeout_key, path, minimum=0, exclusive=True)
            if timeout is not None:
                payload["timeoutSeconds"] = timeout
        summary = self._path_field(item, "summaryPath", path)
        if summary is not None:
            payload["summaryPath"] = summary
        for key in ("onReject", "onTimeout"):
            choice = self._choice(item, key, path, APPROVAL_OUTCOMES)
            if choice is not None:
                payload[key] = choice
        return {"action": "human.approval", "input": payload, "timeoutSeconds": None, "retry": None}

    def _t_inject(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        if "data" not in item:
            self.error((*path, "data"), "missing required key 'data'")
        return {"data": json_copy(item.get("data"))}

    def _t_switch(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        conditions: list[dict[str, Any]] = []
        items = self._list(item, "conditions", path, required=True)
        if items is not None and not items:
            self.error((*path, "conditions"), "a switch needs at least one condition")
        for index, cond in enumerate(items or []):
            cpath: PathT = (*path, "conditions", index)
            if not isinstance(cond, dict):
                self.error(cpath, f"a condition must be a mapping with 'if' and 'next', got {kind_of(cond)}")
                continue
            self._unknown_keys(cond, cpath, ("if", "condition", "next"), "in a switch condition")
            if_key = self._alias(cond, cpath, "if", "condition")
            expr = self._str(cond, if_key, cpath) if if_key else None
            if if_key is None:
                self.error((*cpath, "if"), "missing required key 'if' (a Starlark condition)")
            elif expr is not None:
                self._starlark(expr, (*cpath, if_key), "condition")
            target = self._str(cond, "next", cpath, required=True)
            if target is not None:
                refs.append((target, (*cpath, "next")))
            conditions.append({"if": expr, "next": target})
        default = self._str(item, "defaultNext", path)
        if default is not None:
            refs.append((default, (*path, "defaultNext")))
        return {"dataPath": self._path_field(item, "dataPath", path), "conditions": conditions, "defaultNext": default}

    def _t_parallel(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        branches: list[dict[str, Any]] = []
        items = self._list(item, "branches", path, required=True)
        if items is not None and not items:
            self.error((*path, "branches"), "a parallel state needs at least one branch")
        seen: dict[str, PathT] = {}
        for index, branch in enumerate(items or []):
            bpath: PathT = (*path, "branches", index)
            if not isinstance(branch, dict):
                self.error(bpath, f"a branch must be a mapping with 'name' and 'states', got {kind_of(branch)}")
                continue
            name = self._str(branch, "name", bpath, required=True)
            if name is not None and not NAME_RE.match(name):
                self.error((*bpath, "name"), f"branch name '{name}' must start with a letter or '_' and contain "
                           "only letters, digits, '_' and '-'")
            elif name is not None and name in seen:
                self.error((*bpath, "name"), f"duplicate branch name '{name}' (first used at {format_path(seen[name])})")
            elif name is not None:
                seen[name] = bpath
            block = self._block(branch, bpath, allow_list=False, keys=("name", "start", "states"))
            branches.append({"name": name, "start": block["start"], "states": block["states"]})
        return {"branches": branches, "join": self._join(item, path, len(items or []))}

    def _join(self, item: dict[str, Any], path: PathT, branch_count: int) -> dict[str, Any]:
        if "join" not in item or item["join"] is None:
            return {"mode": "all", "atLeast": None}
        jpath: PathT = (*path, "join")
        join = item["join"]
        if isinstance(join, str):
            join = {"mode": join}
        if not isinstance(join, dict):
            self.error(jpath, f"must be a mapping like {{mode: all}}, got {kind_of(join)}")
            return {"mode": "all", "atLeast": None}
        self._unknown_keys(join, jpath, ("mode", "atLeast"), "in a join")
        at_least = join.get("atLeast", MISSING)
        mode = join.get("mode")
        if mode is None:
            mode = "all" if at_least is MISSING else "atLeast"
        elif mode not in JOIN_MODES:
            self.error((*jpath, "mode"), f"join mode must be one of {', '.join(JOIN_MODES)}, got {mode!r}")
            return {"mode": "all", "atLeast": None}
        if mode != "atLeast":
            if at_least is not MISSING:
                self.error((*jpath, "atLeast"), f"'atLeast' only applies to join mode 'atLeast' (mode is '{mode}')")
            return {"mode": mode, "atLeast": None}
        if at_least is MISSING:
            self.error((*jpath, "atLeast"), "join mode 'atLeast' needs 'atLeast: n'")
            return {"mode": mode, "atLeast": None}
        if not isinstance(at_least, int) or isinstance(at_least, bool):
            self.error((*jpath, "atLeast"), f"must be an integer, got {kind_of(at_least)}")
            return {"mode": mode, "atLeast": None}
        if branch_count and not 1 <= at_least <= branch_count:
            self.error((*jpath, "atLeast"), f"must be between 1 and {branch_count} (the number of branches), "
                       f"got {at_least}")
        return {"mode": mode, "atLeast": at_least}

    def _t_foreach(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        items_path = self._path_field(item, "itemsPath", path, required=True)
        item_name = self._str(item, "itemName", path)
        if item_name is not None and not IDENT_RE.match(item_name):
            self.error((*path, "itemName"), f"itemName '{item_name}' must be an identifier (letters, digits, '_')")
        elif item_name in RESERVED_ITEM_NAMES:
            self.error((*path, "itemName"), f"itemName '{item_name}' is reserved")
        concurrency = self._number(item, "maxConcurrency", path, minimum=1, integer=True)
        if "iterator" not in item:
            self.error((*path, "iterator"), "missing required key 'iterator' (the states run for each item)")
            iterator: dict[str, Any] = {"start": None, "states": {}}
        else:
            iterator = self._block(item["iterator"], (*path, "iterator"), allow_list=False)
        return {
            "itemsPath": items_path,
            "itemName": item_name or "item",
            "maxConcurrency": concurrency if concurrency is not None else 1,
            "iterator": iterator,
        }

    def _t_transform(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        expr = self._str(item, "expression", path, required=True)
        if expr is not None:
            self._starlark(expr, (*path, "expression"), "expression")
        return {"expression": expr}

    def _t_sleep(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        key = self._alias(item, path, "duration", "durationSeconds")
        seconds: float | None = None
        if key is None:
            self.error((*path, "duration"), "missing required key 'duration' (like '30s', '5m' or '1h30m')")
        else:
            value = item[key]
            if key == "duration" and isinstance(value, str):
                seconds = parse_duration(value)
                if seconds is None:
                    self.error((*path, key), f"invalid duration '{clip(value)}' (use like '250ms', '30s', '5m', '1h30m')")
            elif is_number(value) and math.isfinite(value) and value >= 0:
                seconds = float(value)
            else:
                self.error((*path, key), f"must be a duration string or a number of seconds >= 0, got {value!r:.40}")
            if seconds is not None and limits.seconds_problem(seconds):
                self.error((*path, key), f"duration {limits.seconds_problem(seconds)}")
                seconds = None
        return {"durationSeconds": seconds}

    _t_timer = _t_sleep

    def _t_try(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "try" not in item:
            self.error((*path, "try"), "missing required key 'try' (the states to run)")
        for part in ("try", "catch", "finally"):
            value = item.get(part)
            out[part] = self._block(value, (*path, part), allow_list=True) if value is not None else None
        if out["try"] is None:
            out["try"] = {"start": None, "states": {}}
        return out

    def _t_cron(self, item: dict[str, Any], path: PathT, refs: list[tuple[str, PathT]]) -> dict[str, Any]:
        return self._schedule(item, path) or {}
