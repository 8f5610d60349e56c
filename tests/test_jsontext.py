"""The stored JSON text (`store/jsontext.py`, msgspec with a `json` fallback): the same text and the same
values as Python's json for everything we store, valid JSON always, integers of any size exact."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from station_wf.store.jsontext import dumps, dumps_bytes, loads


def _reference(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@pytest.mark.parametrize("value", [
    {"b": 1, "a": [1, 2.5, None, True, False], "é": "ü ☃ \U0001f600", "z": {"y": {}}},
    [0, -1, 9223372036854775807, -9223372036854775808, 0.1, -0.0, 1.5e-300, 123456.789],
    "line\nbreak \"quoted\" \\ back \u2028 \x00 \x1f",
    {"esc": "</script>"},
])
def test_the_text_parses_to_what_json_would_have_written(value: Any) -> None:
    text = dumps(value)
    assert json.loads(text) == json.loads(_reference(value))
    assert json.dumps(json.loads(text)) == json.dumps(json.loads(_reference(value)))  # key order too
    assert dumps_bytes(value) == text.encode()


def test_dict_key_order_is_kept_and_nothing_is_ascii_escaped() -> None:
    text = dumps({"z": 1, "a": 2, "m": {"é": "ü"}})
    assert text == '{"z":1,"a":2,"m":{"é":"ü"}}'


def test_non_finite_floats_become_null_at_any_depth() -> None:
    value = {"x": float("nan"), "y": [float("inf"), {"z": -math.inf}], "ok": 1.5}
    assert json.loads(dumps(value)) == {"x": None, "y": [None, {"z": None}], "ok": 1.5}
    # A value msgspec refuses (a str subclass) takes the json path, which nulls them the same way.
    class Tag(str):
        pass
    assert json.loads(dumps({Tag("k"): float("nan"), "t": Tag("v")})) == {"k": None, "t": "v"}


def test_integers_beyond_64_bits_are_stored_and_read_back_exactly() -> None:
    big = {"pos": 2**64 + 1, "neg": -(2**70), "huge": 10**40}
    text = dumps(big)
    assert text == '{"pos":18446744073709551617,"neg":-1180591620717411303424,"huge":10000000000000000000000000000000000000000}'
    assert loads(text) == big and all(isinstance(v, int) for v in loads(text).values())


def test_non_str_keys_are_written_as_json_writes_them() -> None:
    for value in ({1: "a", 2.5: "b"}, {True: 1, None: 2}, {False: [1]}):
        assert json.loads(dumps(value)) == json.loads(_reference(value))


def test_a_lone_surrogate_behaves_as_before() -> None:
    """json writes it (the str then fails where SQLite encodes it); the fallback keeps exactly that."""
    assert dumps({"s": "\ud800"}) == _reference({"s": "\ud800"})


def test_loads_reads_what_json_reads_and_fails_as_json_fails() -> None:
    assert loads('{"a":1,"a":2}') == {"a": 2}
    assert loads(b'{"k":"\\u00fc"}') == {"k": "ü"}
    assert math.isnan(loads('{"x": NaN}')["x"]) and loads("1e999") == math.inf  # json's leniency, unchanged
    assert loads('"\\ud800"') == "\ud800"
    for bad in ("{", "not json", "", b"\xff\xfe"):
        with pytest.raises(ValueError):
            loads(bad)


def test_depth_is_not_bounded_here_but_never_crashes() -> None:
    """Depth limits are enforced where values come in (storable.check_value, the sandbox); here an
    absurdly deep value raises RecursionError (as json does) instead of taking the process down."""
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        dumps(deep)
    with pytest.raises(RecursionError):
        loads("[" * 100_000 + "]" * 100_000)
    assert loads(dumps([[[[[1]]]]])) == [[[[[1]]]]]


def test_answers_are_strict_json_whatever_a_stored_row_holds() -> None:
    """`dumps_safe` (the API's encoder) takes the fast path and falls back for what msgspec refuses."""
    from station_wf.services.storable import dumps_safe

    assert dumps_safe({"b": [1, float("nan")], "a": 2**70}) == '{"b":[1,null],"a":1180591620717411303424}'
    assert json.loads(dumps_safe({"s": "x\ud800y"})) == {"s": "x?y"}  # a lone surrogate, replaced
    assert json.loads(dumps_safe({1: float("inf")})) == {"1": None}
