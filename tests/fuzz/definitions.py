"""Mutated workflow definitions (seeded): structure, size, nesting, YAML bombs, encodings, numbers, cron and
time zones, input schemas (remote `$ref`, ReDoS), expressions, templates, and random byte/structure mutations.

Each mutant says what must happen to it: `refuse` (validate says invalid and create answers 4xx), or
nothing (either answer is fine, but no 5xx and no stall). `run_input` asks for a run to be started when
the definition is accepted (the `$ref` and ReDoS cases do their damage when a run starts).
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from typing import Any

from station_wf.expr.cron import CronSchedule
from tests.fuzz.values import SEED, Raw, dump, random_json

JSON = "application/json"
YAML = "application/yaml"


@dataclass
class Mutant:
    label: str
    text: bytes
    ctype: str = JSON
    refuse: bool = False
    create: bool = True          # also POST /workflows (JSON only)
    run_input: dict[str, Any] | None = None


def base(wid: str = "m") -> dict[str, Any]:
    return {"id": wid, "start": "a", "states": [
        {"name": "a", "type": "inject", "data": {"x": 1}, "next": "b"},
        {"name": "b", "type": "inject", "data": {}, "end": True},
    ]}


def js(obj: Any) -> bytes:
    return dump(obj).encode("utf-8", errors="surrogatepass")


def with_state(state: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"id": "m", "start": state["name"], "states": [state], **top}


def chain(n: int) -> dict[str, Any]:
    states = [{"name": f"s{i}", "type": "inject", "data": {}, "next": f"s{i + 1}"} for i in range(n - 1)]
    states.append({"name": f"s{n - 1}", "type": "inject", "data": {}, "end": True})
    return {"id": "m", "start": "s0", "states": states}


def nested(kind: str, depth: int) -> bytes:
    """A parallel/foreach/try nested `depth` deep, built as text (deeper than json.dumps can recurse)."""
    inner = '{"name":"leaf","type":"inject","data":{},"end":true}'
    heads = {
        "parallel": ('{{"name":"n{i}","type":"parallel","branches":[{{"name":"b","states":[', ']}],"end":true}'),
        "foreach": ('{{"name":"n{i}","type":"foreach","itemsPath":"items","iterator":{{"states":[', ']},"end":true}'),
        "try": ('{{"name":"n{i}","type":"try","try":[', '],"end":true}'),
    }
    head, tail = heads[kind]
    text = "".join(head.format(i=i) for i in range(depth)) + inner + tail * depth
    return f'{{"id":"m","start":"n0","states":[{text}]}}'.encode()


def merge_bomb(levels: int) -> bytes:
    lines = ["x0: &x0 {k0: 1}"]
    lines += [f"x{i}: &x{i} {{<<: [*x{i - 1}, *x{i - 1}], k{i}: {i}}}" for i in range(1, levels)]
    lines += ["id: mb", "start: s", "states:", f"  - {{ name: s, type: inject, data: *x{levels - 1}, end: true }}"]
    return "\n".join(lines).encode()


def billion_laughs() -> bytes:
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    lines += ["id: bl", "start: s", "states:", "  - { name: s, type: inject, data: { v: *a9 }, end: true }"]
    return "\n".join(lines).encode()


def cron_refused(expr: str, tz: str = "UTC") -> bool:
    """The scheduler is the judge: what it cannot parse must not pass validation."""
    try:
        CronSchedule.parse(expr, tz)
    except Exception:  # noqa: BLE001 - any refusal by the scheduler
        return True
    return False


def tz_refused(tz: str) -> bool:
    """The scheduler judges time zones too (it trims surrounding blanks, as it does for cron fields)."""
    return cron_refused("0 0 1 1 *", tz)


def structural() -> list[Mutant]:
    b = base()
    out = [
        Mutant("valid base", js(b)),
        Mutant("missing target", js(with_value(b, ["states", 0, "next"], "nowhere")), refuse=True),
        Mutant("start names no state", js({**b, "start": "ghost"}), refuse=True),
        Mutant("no states", js({**b, "states": []}), refuse=True),
        Mutant("duplicate state names", js({**b, "states": [b["states"][1], b["states"][1]], "start": "b"}), refuse=True),
        Mutant("unknown state type", js(with_value(b, ["states", 0, "type"], "teleport")), refuse=True),
        Mutant("cycle without end", js({"id": "m", "start": "a", "states": [
            {"name": "a", "type": "inject", "data": {}, "next": "b"}, {"name": "b", "type": "inject", "data": {}, "next": "a"}]})),
        Mutant("self loop", js(with_state({"name": "a", "type": "inject", "data": {}, "next": "a"}))),
        Mutant("next and end", js(with_value(b, ["states", 1, "next"], "a"))),
        Mutant("10k-state chain", js(chain(10_000))),
        Mutant("5000 parallel branches", js(with_state({"name": "p", "type": "parallel", "end": True, "branches": [
            {"name": f"b{i}", "states": [{"name": f"x{i}", "type": "inject", "data": {}, "end": True}]} for i in range(5000)]}))),
        Mutant("900 KB string", js(with_value(b, ["states", 0, "data", "x"], "y" * 900_000))),
        Mutant("allOf x5000 schema", js({**b, "inputSchema": {"allOf": [{"type": "object"}] * 5000}})),
    ]
    for kind in ("parallel", "foreach", "try"):
        for depth in (5, 200, 400, 2000):
            out.append(Mutant(f"{kind} nested {depth} deep", nested(kind, depth)))
    return out


def yaml_texts() -> list[Mutant]:
    good = b"id: y\nstart: s\nstates:\n  - { name: s, type: inject, data: { v: 1 }, end: true }\n"
    return [
        Mutant("merge-key bomb 18 levels", merge_bomb(18), YAML, refuse=True, create=False),
        Mutant("merge-key bomb 19 levels", merge_bomb(19), YAML, refuse=True, create=False),
        Mutant("billion laughs", billion_laughs(), YAML, refuse=True, create=False),
        Mutant("recursive alias", b"id: &a [*a]\nstart: s\nstates: []\n", YAML, refuse=True, create=False),
        Mutant("python tag", good.replace(b"{ v: 1 }", b"!!python/object/apply:os.system ['true']"), YAML, refuse=True, create=False),
        Mutant("binary tag", good.replace(b"{ v: 1 }", b"!!binary aGVsbG8="), YAML, create=False),
        Mutant("set tag", good.replace(b"{ v: 1 }", b"!!set {a, b}"), YAML, create=False),
        Mutant("custom tag", good.replace(b"{ v: 1 }", b"!evil {a: 1}"), YAML, refuse=True, create=False),
        Mutant("non-UTF-8", good.replace(b"v: 1", b"v: \xff\xfe"), YAML, create=False),
        Mutant("latin-1", good.replace(b"v: 1", "v: caf\u00e9".encode("latin-1")), YAML, create=False),
        Mutant("UTF-16", good.decode().encode("utf-16"), YAML, create=False),
        Mutant("NUL byte", good.replace(b"v: 1", b"v: a\x00b"), YAML, create=False),
        Mutant("CR line ends", good.replace(b"\n", b"\r"), YAML, create=False),
        Mutant("tabs", good.replace(b"  - ", b"\t- "), YAML, create=False),
        Mutant("deep flow [ x10k", b"id: d\nv: " + b"[" * 10_000 + b"]" * 10_000, YAML, refuse=True, create=False),
        Mutant("deep block nesting 3000", b"id: d\nv:\n" + b"".join(b" " * i + b"- \n" for i in range(3000)), YAML,
               refuse=True, create=False),
        Mutant("one huge line 900 KB", b"id: h\nstart: s\nstates:\n  - { name: s, type: inject, data: { v: '" + b"x" * 900_000
               + b"' }, end: true }\n", YAML, create=False),
        Mutant("10k-state chain (YAML)", json.dumps(chain(10_000)).encode(), YAML, create=False),
    ]


def numbers() -> list[Mutant]:
    out = []
    bad = [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"), ("1e309", "1e309"), ("5000 digits", "9" * 5000)]
    op = {"name": "a", "type": "operation", "action": "agent.run", "input": {"agent": "echo", "task": "t"}, "end": True}
    fields = [
        ("state timeoutSeconds", lambda v: with_state({**op, "timeoutSeconds": v})),
        ("workflow timeoutSeconds", lambda v: {**base(), "timeoutSeconds": v}),
        ("retry maxAttempts", lambda v: with_state({**op, "retry": {"maxAttempts": v}})),
        ("retry backoffSeconds", lambda v: with_state({**op, "retry": {"maxAttempts": 2, "backoffSeconds": v}})),
        ("foreach maxConcurrency", lambda v: with_state({"name": "f", "type": "foreach", "itemsPath": "items", "maxConcurrency": v,
                                                         "iterator": {"states": [{"name": "i", "type": "inject", "data": {}, "end": True}]},
                                                         "end": True})),
        ("join atLeast", lambda v: with_state({"name": "p", "type": "parallel", "join": {"mode": "atLeast", "atLeast": v}, "end": True,
                                               "branches": [{"name": "b", "states": [{"name": "x", "type": "inject", "data": {},
                                                                                     "end": True}]}]})),
        ("approval timeoutSeconds", lambda v: with_state({"name": "h", "type": "operation", "action": "human.approval",
                                                          "input": {"message": "m", "approvers": ["user:a"], "timeoutSeconds": v},
                                                          "end": True})),
    ]
    for fname, make in fields:
        for vlabel, raw in bad:
            out.append(Mutant(f"{fname} = {vlabel}", js(make(Raw(raw))), refuse=True))
        for vlabel, v in (("-1", -1), ("0", 0), ("2^64", 2**64), ("string", "10"), ("1.5", 1.5)):
            out.append(Mutant(f"{fname} = {vlabel}", js(make(v))))
    durations = ["1h", "0s", "-1s", "1e309s", "1.5h", "PT1H", "", "forever", "9" * 5000 + "s", "1 h", "1d", "NaNs", "infs", "0.0001ms"]
    for d in durations:
        refuse = d in ("1e309s", "9" * 5000 + "s", "NaNs", "infs", "forever", "")
        out.append(Mutant(f"sleep duration {d!r}" if len(d) < 20 else f"sleep duration of {len(d) - 1} digits", js(with_state({"name": "z", "type": "sleep", "duration": d, "end": True})),
                          refuse=refuse))
    return out


def schedules() -> list[Mutant]:
    crons = ["x y z w v", "*/0 * * * *", "99 * * * *", "0-99999 * * * *", "0 0 31 2 *", "L * * * *", "0 0 ? * MON#5", "",
             "* * * *", "* * * * * * *", "0 0 1 1 *", "*/15 * * * *", "60 * * * *", "* 24 * * *", "1-0 * * * *",
             "*/99999999999999999999 * * * *", "\u0000 * * * *", "@reboot", "@hourly", "0 0 * * 8"]
    out = []
    for cron in crons:
        out.append(Mutant(f"cron {cron[:20]!r}", js({**base(), "schedules": [{"cron": cron, "timezone": "UTC"}]}),
                          refuse=cron_refused(cron)))
    zones = ["UTC", "Europe/Paris", "../../etc/passwd", "Mars/Olympus", "", "UTC+25", "\u0000", "America/New_York",
             "Etc/GMT+14", "EST5EDT", "/etc/localtime", "posixrules", "europe/paris", "x" * 10_000, "Europe/Paris\n"]
    for tz in zones:
        out.append(Mutant(f"timezone {tz[:20]!r}", js({**base(), "schedules": [{"cron": "0 0 1 1 *", "timezone": tz}]}),
                          refuse=tz_refused(tz)))
    return out


def input_schemas(ref_url: str) -> list[Mutant]:
    """`ref_url(path)` gives a URL on the recording listener: any request to it is a finding."""
    schemas: list[tuple[str, Any, dict[str, Any]]] = [
        ("remote $ref", {"$ref": ref_url("/ref/a.json")}, {}),
        ("remote $schema", {"$schema": ref_url("/ref/meta.json"), "type": "object"}, {}),
        ("$id base + relative $ref", {"$id": ref_url("/ref/id.json"), "$ref": "other.json"}, {}),
        ("nested remote $ref", {"type": "object", "properties": {"x": {"$ref": ref_url("/ref/x.json")}}}, {"x": 1}),
        ("remote $ref in $defs", {"$defs": {"d": {"$ref": ref_url("/ref/d.json")}}, "$ref": "#/$defs/d"}, {}),
        ("remote $dynamicRef", {"$dynamicRef": ref_url("/ref/dyn.json")}, {}),
        ("file $ref", {"$ref": "file:///etc/passwd"}, {}),
        ("recursive $ref #", {"$ref": "#"}, {}),
        ("self-recursive definitions", {"definitions": {"a": {"$ref": "#/definitions/a"}}, "$ref": "#/definitions/a"}, {}),
        ("ReDoS (a+)+", {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}, {"s": "a" * 26 + "!"}),
        ("ReDoS (a|a)*", {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a|a)*$"}}}, {"s": "a" * 20 + "!"}),
        ("ReDoS patternProperties", {"type": "object", "patternProperties": {"^(a+)+$": {}}}, {"a" * 26 + "!": 1}),
        ("invalid regex", {"type": "object", "properties": {"s": {"pattern": "("}}}, {"s": "x"}),
        ("unknown type", {"type": "nonsense"}, {}),
        ("schema is a list", [1, 2], {}),
        ("format email", {"type": "object", "properties": {"e": {"format": "email"}}}, {"e": "x"}),
    ]
    return [Mutant(f"inputSchema {label}", js({**base(), "inputSchema": schema}), run_input=run_input)
            for label, schema, run_input in schemas]


def expressions() -> list[Mutant]:
    conds = ["#", "", "   ", "x ==", "(", "def f(): pass", "lambda x: x", "load('a', 'b')", "x = 1", "f'{x}'",
             "import os", "x " + "and x " * 5000, "'" + "a" * 100_000 + "'", "[" * 500 + "]" * 500, "1 if else 2",
             "print(1)", "struct(a=1)", "\u0000", "x\ny"]
    out = []
    for c in conds:
        refuse = c in ("#", "", "   ", "x ==", "(", "def f(): pass", "x = 1", "import os", "1 if else 2", "\u0000")
        switch = {"id": "m", "start": "w", "states": [
            {"name": "w", "type": "switch", "conditions": [{"if": c, "next": "e"}], "defaultNext": "e"},
            {"name": "e", "type": "inject", "data": {}, "end": True}]}
        out.append(Mutant(f"switch if {c[:16]!r}", js(switch), refuse=refuse))
        out.append(Mutant(f"transform {c[:16]!r}", js(with_state({"name": "t", "type": "transform", "expression": c, "end": True})),
                          refuse=refuse))
    for t in ["{{", "}}", "{{ }}", "{{ x == }}", "{{ {{ x }} }}", "{{ " + "1+" * 2000 + "1 }}", "{{ x }}" * 5000, "{{ '\u0000' }}"]:
        refuse = t in ("{{ }}", "{{ x == }}")
        out.append(Mutant(f"template {t[:16]!r}", js(with_state({"name": "g", "type": "operation", "action": "agent.run",
                                                                 "input": {"agent": "echo", "task": t}, "end": True})), refuse=refuse))
    return out


def with_value(obj: Any, path: list[Any], value: Any) -> Any:
    out = copy.deepcopy(obj)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def random_mutants(rng: random.Random, structural_n: int = 50, byte_n: int = 40) -> list[Mutant]:
    """Seeded: replace, delete or duplicate a random node of a richer definition; flip/insert/delete bytes of its YAML."""
    rich = {"id": "m", "start": "a", "inputSchema": {"type": "object"}, "states": [
        {"name": "a", "type": "inject", "data": {"items": [1, 2]}, "next": "w"},
        {"name": "w", "type": "switch", "conditions": [{"if": "len(items) > 1", "next": "f"}], "defaultNext": "e"},
        {"name": "f", "type": "foreach", "itemsPath": "items", "iterator": {"states": [
            {"name": "i", "type": "transform", "expression": "item * 2", "end": True}]}, "next": "e"},
        {"name": "e", "type": "operation", "action": "agent.run", "input": {"agent": "echo", "task": "{{ items }}"}, "end": True},
    ]}
    paths = _paths(rich)
    out = []
    for i in range(structural_n):
        path = rng.choice(paths)
        mutated = copy.deepcopy(rich)
        node = mutated
        for key in path[:-1]:
            node = node[key]
        roll = rng.random()
        if roll < 0.6:
            node[path[-1]] = random_json(rng)
        elif roll < 0.8 and isinstance(node, dict):
            del node[path[-1]]
        elif isinstance(node, list):
            node.insert(path[-1], copy.deepcopy(node[path[-1]]))
        else:
            node[f"{path[-1]}_extra"] = random_json(rng)
        out.append(Mutant(f"random structure #{i} at {'.'.join(map(str, path))}", js(mutated)))
    yaml_text = bytearray(json.dumps(rich, indent=1).encode())
    for i in range(byte_n):
        data = bytearray(yaml_text)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[pos] = rng.randrange(256)
            elif op < 0.7:
                data.insert(pos, rng.choice(b"{}[]:,&*!<>|'\"\n\t #-?%@`\x00\xff"))
            else:
                del data[pos]
        out.append(Mutant(f"random bytes #{i}", bytes(data), YAML if i % 2 else JSON, create=False))
    return out


def all_mutants(ref_url: Any) -> list[Mutant]:
    rng = random.Random(SEED)
    return structural() + yaml_texts() + numbers() + schedules() + input_schemas(ref_url) + expressions() + random_mutants(rng)
