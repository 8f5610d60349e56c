"""The wire form (`station_wf/protocol.py`) on its own: no server, no database."""

from __future__ import annotations

import json

import pytest

from station_wf import protocol as p


def test_step_task_round_trips_with_its_headers_and_message_id() -> None:
    task = p.step_task("run-1", "abc123", 2, "run-1:abc123:2", "00-trace-span-01")
    env = p.encode_task(task)
    assert env.subject == "wf.task.step.run-1.abc123"
    assert env.msg_id == "step:run-1:abc123:2"
    assert env.payload == {"runId": "run-1", "stepId": "abc123", "attempt": 2}
    assert env.headers == {"idempotency-key": "run-1:abc123:2", "traceparent": "00-trace-span-01"}
    assert json.loads(env.body) == env.payload
    back = p.decode_task(env.subject, env.body, env.headers)
    assert back == task and back.work_key == ("run-1", "abc123", 2)


def test_run_task_round_trips_and_has_no_idempotency_header() -> None:
    env = p.encode_task(p.run_task("run-9"))
    assert (env.subject, env.msg_id, env.payload, env.headers) == ("wf.task.run.run-9", "run:run-9:start", {"runId": "run-9"}, {})
    assert p.decode_task(env.subject, env.body) == p.run_task("run-9")
    assert p.decode_task(env.subject, env.body).work_key == ("run-9", "", 0)


def test_a_redispatch_gets_its_own_message_id_and_the_same_subject() -> None:
    task = p.step_task("r", "s", 1, "r:s:1")
    resumed = p.encode_task(p.step_task("r", "s", 1, "r:s:1", redispatch="resume42"))
    assert resumed.msg_id == "step:r:s:1:resume42" and resumed.subject == p.encode_task(task).subject
    assert p.encode_task(task.again("r7")).msg_id == "step:r:s:1:r7"
    assert p.encode_task(task.again("a").again("b")).msg_id == "step:r:s:1:a:b"
    assert p.encode_task(p.run_task("r", redispatch="resume1")).msg_id == "run:r:start:resume1"


def test_every_task_subject_is_inside_the_stream_filter() -> None:
    prefix = p.TASK_SUBJECT_FILTER.rstrip(">")
    for task in (p.run_task("r"), p.step_task("r", "s", 1, "k")):
        assert p.encode_task(task).subject.startswith(prefix)
    assert p.TASK_SUBJECTS == ["wf.task.>"] and p.EVENT_SUBJECTS == ["wf.event.>"]


@pytest.mark.parametrize(("subject", "data"), [
    ("wf.task.step.r.s", b"not json"),
    ("wf.task.step.r.s", b"[1, 2]"),
    ("wf.task.step.r.s", b'{"runId": "r", "stepId": "s"}'),            # no attempt
    ("wf.task.step.r.s", b'{"runId": "r", "stepId": "s", "attempt": "x"}'),
    ("wf.task.run.r", b"{}"),
    ("wf.task.resume.r", b'{"runId": "r"}'),                           # a subject no engine writes
    ("wf.task.step.r.s", b"\xff\xfe"),
])
def test_malformed_tasks_are_refused_with_one_error_type(subject: str, data: bytes) -> None:
    with pytest.raises(p.MalformedTask):
        p.decode_task(subject, data, {})


def test_a_step_task_needs_its_key() -> None:
    with pytest.raises(ValueError, match="idempotency key"):
        p.encode_task(p.Task("step", "r", "s", 1))


def _row(**over: object) -> dict[str, object]:
    row: dict[str, object] = {"run_id": "run-1", "seq": 7, "type": "step.succeeded", "step_id": "s1",
                              "payload": json.dumps({"output": {"x": [1, "é", None]}}), "actor": None,
                              "created_at": "2026-01-01T00:00:00.000000Z"}
    row.update(over)
    return row


def test_the_spliced_event_equals_the_one_event_shape() -> None:
    for row in (_row(), _row(step_id=None, type="run.created", actor='al"ice')):
        subject, body, msg_id = p.encode_event(row)
        assert json.loads(body) == p.event_body(row)
        assert msg_id == f"evt:run-1:{row['seq']}"
        assert subject == ("wf.event.step.run-1.s1" if row["step_id"] else "wf.event.run.run-1")


def test_an_event_stub_keeps_the_identity_and_drops_the_payload() -> None:
    row = _row()
    subject, body, msg_id = p.encode_event_stub(row, 12345)
    stub = json.loads(body)
    assert (subject, msg_id) == p.encode_event(row)[::2]
    assert stub["truncated"] is True and stub["bytes"] == 12345 and "payload" not in stub
    assert {k: stub[k] for k in ("runId", "seq", "type", "stepId", "actor", "time")} == {
        k: v for k, v in p.event_body(row).items() if k != "payload"}


def test_the_header_block_is_the_nats_header_section_with_the_message_id_first() -> None:
    block = p.header_block("step:r:s:1", {"idempotency-key": "r:s:1", "traceparent": " 00-a-b-01\r\n"})
    assert block == (b"NATS/1.0\r\nNats-Msg-Id: step:r:s:1\r\nidempotency-key: r:s:1\r\n"
                     b"traceparent: 00-a-b-01\r\n\r\n")
    assert p.header_block("evt:r:3") == b"NATS/1.0\r\nNats-Msg-Id: evt:r:3\r\n\r\n"
    assert b"\r\n\r\n" not in p.header_block("x\r\ninjected: 1")[:-4]  # no line break smuggled in


def test_the_event_encoding_keeps_unicode_and_big_numbers_of_the_stored_payload() -> None:
    row = _row(payload='{"n":18446744073709551617,"s":"é☃"}', actor="ünï")
    subject, body, _ = p.encode_event(row)
    assert json.loads(body) == p.event_body(row) and json.loads(body)["payload"]["n"] == 2**64 + 1
    assert "é☃".encode() in body and "ünï".encode() in body
