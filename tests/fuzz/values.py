"""Odd values, raw bodies, path ids and query values for the API fuzz: fixed lists plus a seeded random part.

JSON text is built by `dump`, which can also emit what `json.dumps` cannot (a 5,000-digit integer, `1e309`,
nesting deeper than Python's recursion limit) through `Raw` leaves, so every body is exactly what we mean.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

SEED = 20261201


@dataclass(frozen=True)
class Raw:
    """A JSON fragment emitted verbatim."""

    text: str


def dump(value: Any) -> str:
    """JSON text of `value`; `Raw` leaves verbatim; NaN/Infinity as the bare words json.loads accepts."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + dump(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def nested_list(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


def nested_object(depth: int) -> Raw:
    return Raw('{"a":' * depth + "1" + "}" * depth)


def odd_values() -> list[tuple[str, Any]]:
    """(label, value) pairs: each is put in every fuzzed field of every body."""
    return [
        ("null", None), ("true", True), ("false", False), ("zero", 0), ("-0.0", -0.0), ("1e308", 1e308),
        ("1e309", Raw("1e309")), ("-1e309", Raw("-1e309")), ("NaN", Raw("NaN")), ("Infinity", Raw("Infinity")),
        ("-Infinity", Raw("-Infinity")), ("2^63", 2**63), ("2^64", 2**64), ("-2^63-1", -(2**63) - 1), ("10^20", 10**20),
        ("5000-digit int", Raw("9" * 5000)), ("1.5", 1.5), ("-1", -1), ("empty string", ""), ("100 KB string", "x" * 100_000),
        ("NUL", "\u0000"), ("NUL inside", "a\u0000b"), ("lone surrogate", Raw('"\\ud800"')),
        ("reversed surrogates", Raw('"\\udfff\\ud800"')), ("lone low surrogate", Raw('"x\\udc00y"')),
        ("RTL override", "\u202eevil"), ("combining marks", "e" + "\u0301" * 200), ("CJK", "工作流程"), ("emoji", "🚀🔥" * 10),
        ("path traversal", "../../etc/passwd"), ("percent NUL", "%00"), ("template", "{{ ctx }}"),
        ("template error", "{{ 1 // 0 }}"), ("html", "<script>alert(1)</script>"), ("sql", "' OR 1=1; DROP TABLE x; --"),
        ("empty list", []), ("empty object", {}), ("list of lists", [[[]]]), ("proto", {"__proto__": {"admin": True}}),
        ("10k ints", list(range(10_000))), ("nested list 500", nested_list(500)), ("nested object 200", nested_object(200)),
        ("nested list 2000", nested_list(2000)), ("10 KB key", {"k" * 10_000: 1}), ("object with NaN", {"v": Raw("NaN")}),
    ]


def raw_bodies(valid: str) -> list[tuple[str, bytes]]:
    """(label, bytes): malformed and odd raw bodies; `valid` is a well-formed body of the route, used as a base."""
    half = valid.encode()[: max(1, len(valid) // 2)]
    fifty_k = "{" + ",".join(f'"k{i}":{i}' for i in range(50_000)) + "}"
    return [
        ("empty", b""), ("whitespace", b"  \n\t "), ("open brace", b"{"), ("open key", b'{"a":'), ("truncated", half),
        ("trailing garbage", valid.encode() + b"garbage"), ("two documents", valid.encode() + b"\n" + valid.encode()),
        ("BOM", b"\xef\xbb\xbf" + valid.encode()), ("UTF-16", valid.encode("utf-16")), ("UTF-16-BE", valid.encode("utf-16-be")),
        ("UTF-32", valid.encode("utf-32")), ("latin-1", valid.replace("}", ',"x":"\u00e9\u00ff"}', 1).encode("latin-1")),
        ("invalid UTF-8", b'{"a":"\xff\xfe\xfd"}'), ("overlong UTF-8", b'{"a":"\xc0\xae\xc0\xae"}'),
        ("encoded surrogate", b'{"a":"\xed\xa0\x80"}'), ("gzip magic", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"),
        ("raw NUL", b'{"a":"\x00"}'), ("bare NUL", b"\x00"), ("control chars", b'{"a":"\x01\x02\x1b"}'),
        ("duplicate keys", (valid[:-1] + "," + valid[1:]).encode() if valid.startswith("{") else valid.encode()),
        ("null", b"null"), ("true", b"true"), ("number", b"1"), ("string", b'"s"'), ("list", b"[]"), ("NaN", b"NaN"),
        ("1e309", b"1e309"), ("-0", b"-0"), ("deep [ x10k", b"[" * 10_000), ("deep [ x100k", b"[" * 100_000),
        ("deep closed [ x10k", b"[" * 10_000 + b"]" * 10_000), ('deep {"a": x10k', b'{"a":' * 10_000),
        ('deep closed {"a": x10k', b'{"a":' * 10_000 + b"1" + b"}" * 10_000), ("50k keys", fifty_k.encode()),
        ("1 MiB + 1", b'{"a":"' + b"x" * ((1 << 20) - 7) + b'"}'), ("2 MiB", b" " * (2 << 20)),
    ]


def odd_ids() -> list[tuple[str, str]]:
    """(label, already percent-encoded path segment)."""
    return [
        ("dot dot", "%2E%2E"), ("dot", "%2E"), ("encoded slash", "a%2Fb"), ("traversal", "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd"),
        ("NUL", "%00"), ("NUL inside", "a%00b"), ("ff byte", "%ff"), ("encoded surrogate", "%ED%A0%80"), ("20 KB", "a" * 20_000),
        ("CRLF", "%0d%0aX-Injected:%201"), ("semicolon", "a;b"), ("question", "a%3Fb"), ("hash", "a%23b"), ("space", "a%20b"),
        ("accent", "%C3%A9t%C3%A9"), ("RTL", "%E2%80%AEx"), ("emoji", "%F0%9F%9A%80"), ("minus one", "-1"), ("zero", "0"),
        ("huge number", "99999999999999999999"), ("null", "null"), ("template", "%7B%7Bx%7D%7D"), ("star", "*"),
        ("percent", "%25"), ("quote", "'%22"), ("unknown uuid", "00000000-0000-0000-0000-000000000000"),
    ]


def odd_query_values() -> list[tuple[str, str]]:
    return [
        ("empty", ""), ("minus one", "-1"), ("zero", "0"), ("1001", "1001"), ("abc", "abc"), ("1e3", "1e3"), ("1.5", "1.5"),
        ("+5", "+5"), (" 1", " 1"), ("1_000", "1_000"), ("fullwidth digit", "\uff11"), ("arabic digit", "\u0663"),
        ("2^63", str(2**63)), ("-2^63-1", str(-(2**63) - 1)), ("10^20", "99999999999999999999"), ("5000 digits", "9" * 5000),
        ("NaN", "NaN"), ("inf", "inf"), ("NUL", "\u0000"), ("RTL", "\u202e1"), ("20 KB", "a" * 20_000), ("list", "[]"),
        ("null", "null"), ("true", "true"), ("0x10", "0x10"), ("sql", "' OR 1=1 --"), ("lone surrogate", "%ED%A0%80"),
        ("status list", "RUNNING,COMPLETED,,x"),
    ]


def odd_cursors() -> list[tuple[str, str]]:
    """Cursors: the format is base64url of an integer; these decode to odd things."""
    import base64

    def b64(text: bytes) -> str:
        return base64.urlsafe_b64encode(text).decode().rstrip("=")

    return [
        ("garbage", "!!!"), ("bad padding", "a"), ("decodes to 10^20", b64(b"100000000000000000000")),
        ("decodes to 2^63", b64(str(2**63).encode())), ("decodes to -1", b64(b"-1")), ("decodes to text", b64(b"hello")),
        ("decodes to bytes", b64(b"\xff\xfe")), ("decodes to NUL", b64(b"\x00")), ("decodes to 5000 digits", b64(b"9" * 5000)),
        ("decodes to float", b64(b"1.5")), ("decodes to NaN", b64(b"nan")),
    ]


def last_event_ids() -> list[tuple[str, str]]:
    return [
        ("zero", "0"), ("minus", "-5"), ("abc", "abc"), ("huge", "99999999999999999999"), ("2^63", str(2**63)),
        ("2^63-1", str(2**63 - 1)), ("5000 digits", "9" * 5000), ("float", "1.5"), ("inner space", "1 2"), ("hex", "0x1"),
        ("empty", ""), ("fullwidth", "\uff13"), ("1_0", "1_0"),
    ]


def idempotency_keys() -> list[tuple[str, bytes]]:
    return [
        ("empty", b""), ("inner space", b"a b"), ("256 chars", b"k" * 256), ("10 KB", b"k" * 10_000), ("latin-1", b"cl\xe9"),
        ("UTF-8 bytes", "clé-🚀".encode()), ("tab inside", b"a\tb"), ("percent", b"%00"), ("json", b'{"a":1}'),
    ]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A small random JSON value drawn from the odd values (seeded)."""
    roll = rng.random()
    if depth < 3 and roll < 0.2:
        return {rng.choice(["a", "", "__proto__", "workflowId", "\u202e", "x" * 50]): random_json(rng, depth + 1)
                for _ in range(rng.randint(0, 3))}
    if depth < 3 and roll < 0.35:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return rng.choice(ODD_SMALL)


ODD_SMALL = [v for label, v in odd_values() if label not in ("100 KB string", "10k ints", "nested list 2000", "10 KB key")]
