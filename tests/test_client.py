"""The typed client (`station_wf.client`) against a real daemon: start, follow over SSE (and resume after
the daemon restarts), approvals inbox and decisions, signals, cancel, paging, errors; sync and async."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from station_wf.client import ApiError, AsyncClient, Client, StreamEvent, is_terminal
from tests.conftest import PLAIN, WAITS, Daemon, wait_until

GATE = """
id: gate
start: plan
states:
  - { name: plan, type: inject, data: { pods: 3 }, next: ask }
  - name: ask
    type: operation
    action: human.approval
    input: { message: "Restart {{ pods }} pods?", approvers: ["user:alice"], onReject: fail }
    resultPath: decision
    next: done
  - { name: done, type: inject, data: { ok: true }, end: true }
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module (no agents): the tests use their own runs and do not disturb each other."""
    root = Path(tmp_path_factory.mktemp("client"))
    d = Daemon(root, None, {})
    for name, text in (("waits", WAITS), ("plain", PLAIN), ("gate", GATE)):
        d.add_workflow(name, text)
    d.start()
    yield d
    d.kill()  # nothing to check in a graceful stop here; -9 is quicker


@pytest.fixture
def api(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.base, principal="alice", timeout=15) as client:
        yield client


def test_start_follow_signal_and_resume_from_an_event_id(api: Client) -> None:
    run = api.start_run("waits", {"n": 1})
    assert run["workflowId"] == "waits" and run["status"] == "WAITING_SIGNAL"
    seen: list[StreamEvent] = []
    for event in api.stream_run(run["id"], timeout=20):
        seen.append(event)
        if event.id >= run["lastEventSeq"]:  # the backlog up to the start's answer; the stream would wait on
            break
    assert seen and [e.id for e in seen] == list(range(1, len(seen) + 1))  # seq from 1, no gap
    sig = api.signal(run["id"], "go", {"ok": 1}, idempotency_key="sig-1")
    assert sig["name"] == "go"
    assert api.signal(run["id"], "go", {"ok": 1}, idempotency_key="sig-1")["signalId"] == sig["signalId"]
    rest = list(api.stream_run(run["id"], last_event_id=seen[-1].id, timeout=20))
    assert rest and rest[0].id == seen[-1].id + 1 and rest[-1].type == "run.completed" and rest[-1].terminal
    assert [e.id for e in rest] == list(range(seen[-1].id + 1, seen[-1].id + 1 + len(rest)))
    done = api.wait_run(run["id"], timeout=10)  # already ended: the stream gives nothing and ends
    assert done["status"] == "COMPLETED" and done["context"]["got"] == {"ok": 1}
    log = list(api.iter_run_events(run["id"], page_size=2))
    assert [e["seq"] for e in log] == list(range(1, rest[-1].id + 1))


def test_approvals_inbox_approve_and_the_one_error_type(api: Client, daemon: Daemon) -> None:
    run = api.start_run("gate")
    pending = wait_until(lambda: api.run_approvals(run["id"]), what="the approval")
    approval = pending[0]
    assert approval["status"] == "pending" and approval["approvers"] == ["user:alice"]
    inbox = api.list_approvals(workflow_id="gate")
    assert approval["id"] in [a["id"] for a in inbox]
    assert api.get_approval(approval["id"])["runId"] == run["id"]
    with Client(daemon.base, principal="mallory") as other, pytest.raises(ApiError) as err:
        other.approve(approval["id"], "me too")
    assert err.value.status == 403 and err.value.code and err.value.message and err.value.request_id
    decided = api.approve(approval["id"], "go ahead", run_id=run["id"])
    assert decided["status"] == "approved" and decided["decidedBy"] == "alice" and decided["comment"] == "go ahead"
    assert api.wait_run(run["id"], timeout=20)["status"] == "COMPLETED"
    assert approval["id"] not in [a["id"] for a in api.list_approvals()]
    assert approval["id"] in [a["id"] for a in api.list_approvals(status=None)]
    with pytest.raises(ApiError) as err:
        api.reject(approval["id"], "too late")
    assert err.value.status == 409


def test_cancel_pause_resume_and_errors(api: Client) -> None:
    run = api.start_run("waits")
    assert api.pause_run(run["id"])["status"] == "PAUSED"
    assert api.resume_run(run["id"])["status"] == "WAITING_SIGNAL"
    cancelled = api.cancel_run(run["id"], "not needed")
    assert cancelled["status"] == "CANCELLED" and is_terminal(cancelled)
    events = [e.type for e in api.stream_run(run["id"], timeout=10)]
    assert events[-1] == "run.cancelled"
    with pytest.raises(ApiError) as err:
        api.get_run("no-such-run")
    assert (err.value.status, err.value.code) == (404, "not_found") and err.value.request_id
    with pytest.raises(ApiError) as err:
        api.start_run("waits", version=999)
    assert err.value.status == 404
    with pytest.raises(ApiError) as err:
        api.list_runs(limit=0)
    assert err.value.status == 400 and err.value.details == {"limit": 0}
    with Client("http://127.0.0.1:9", timeout=2) as nowhere, pytest.raises(ApiError) as err:
        nowhere.health()
    assert err.value.status == 0 and err.value.code == "unreachable" and err.value.retryable


def test_wait_times_out_with_a_clear_error(api: Client) -> None:
    run = api.start_run("waits")
    with pytest.raises(ApiError) as err:
        api.wait_run(run["id"], timeout=0.5)
    assert err.value.code == "wait_timeout" and err.value.details["status"] == "WAITING_SIGNAL"
    api.cancel_run(run["id"])


def test_batch_start_and_paging(api: Client) -> None:
    results = api.start_runs([{"workflowId": "plain", "input": {"i": i}} for i in range(5)] + [{"workflowId": "nope"}])
    assert [r["status"] for r in results] == [201] * 5 + [404]
    ids = {r["run"]["id"] for r in results[:5]}
    page = api.list_runs(workflow_id="plain", limit=2)
    assert len(page["runs"]) == 2 and page["nextCursor"]
    second = api.list_runs(workflow_id="plain", limit=2, cursor=page["nextCursor"])
    assert not {r["id"] for r in page["runs"]} & {r["id"] for r in second["runs"]}
    every = [r["id"] for r in api.iter_runs(workflow_id="plain", page_size=2)]
    assert len(every) == len(set(every)) and ids <= set(every)
    assert all(r["status"] == "COMPLETED" for r in api.iter_runs(workflow_id="plain", status=["COMPLETED"]))
    assert {w["id"] for w in api.list_workflows()} >= {"plain", "waits", "gate"}
    assert api.get_workflow("plain")["definition"]["id"] == "plain"
    assert api.validate_workflow(PLAIN)["valid"] is True
    assert api.validate_workflow("id: x\nstates: 3\n")["valid"] is False
    assert api.ready()["status"] == "ready" and "station_" in api.metrics()


def test_async_client_global_stream_signal_and_wait(daemon: Daemon) -> None:
    async def main() -> None:
        async with AsyncClient(daemon.base, principal="alice", timeout=15) as api:
            got: list[StreamEvent] = []
            mine: list[StreamEvent] = []
            run: dict = {}

            async def watch() -> None:
                async for event in api.stream_events(timeout=30):
                    got.append(event)
                    if run and event.run_id == run["id"]:
                        mine.append(event)
                        if event.type == "run.completed":
                            return

            task = asyncio.create_task(watch())
            for _ in range(100):  # the stream is live from when it connects: wait until it shows an event
                await api.start_run("plain")
                await asyncio.sleep(0.1)
                if got:
                    break
            assert got, "the global stream showed no event"
            run.update(await api.start_run("waits", {"async": True}))
            page = await api.list_runs(workflow_id="waits", limit=1)
            assert page["runs"][0]["id"] == run["id"]
            await api.signal(run["id"], "go")
            done = await api.wait_run(run["id"], timeout=20)
            assert done["status"] == "COMPLETED"
            await asyncio.wait_for(task, 20)
            assert mine and mine[-1].type == "run.completed"
            assert [e.seq for e in mine] == list(range(1, len(mine) + 1))
            assert [e.id for e in got] == sorted({e.id for e in got})  # global ids: increasing, no copy
            with pytest.raises(ApiError) as err:
                await api.get_run("missing")
            assert err.value.status == 404

    asyncio.run(main())


def test_a_run_stream_resumes_across_a_daemon_restart(daemon: Daemon) -> None:
    """The last test on the module's daemon: it is killed (-9) mid-stream and comes back; the client reconnects from
    its last event id, with no gap and no copy."""
    with Client(daemon.base, timeout=15) as api:
        run = api.start_run("waits", {"restart": True})
        seen: list[StreamEvent] = []
        first = threading.Event()

        def follow() -> None:
            for event in api.stream_run(run["id"], timeout=60):
                seen.append(event)
                first.set()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert first.wait(20)
        daemon.kill()
        daemon.start()
        api.signal(run["id"], "go")
        reader.join(60)
        assert not reader.is_alive()
        assert [e.id for e in seen] == list(range(1, len(seen) + 1)) and seen[-1].type == "run.completed"


def test_the_client_knows_what_ends_a_run_and_reads_sse_frames_as_the_daemon_writes_them() -> None:
    """No daemon: the client's own copies of the server's terminal sets, and the frame parser on the
    daemon's own frame bytes (CRLF, comments, ids) and on multi-line data."""
    from station_wf.client import TERMINAL_EVENTS, TERMINAL_STATUSES
    from station_wf.client.sse import LineParser
    from station_wf.services.events import TERMINAL_EVENTS as SERVER_EVENTS
    from station_wf.services.runs import TERMINAL_RUN_STATUSES
    from station_wf.services.sse_frames import ping_frame, sse_frame

    assert TERMINAL_RUN_STATUSES <= TERMINAL_STATUSES and SERVER_EVENTS <= TERMINAL_EVENTS
    wire = ping_frame() + sse_frame("run.completed", 7, b'{"runId": "r", "seq": 7}') + b"data: a\r\ndata: b\r\n\r\n"
    parser = LineParser()
    events = [e for line in wire.decode().splitlines() + [""] if (e := parser.feed(line)) is not None]
    assert [(e.id, e.type, e.run_id) for e in events[:1]] == [(7, "run.completed", "r")] and events[0].terminal
    assert events[1].data == {"text": "a\nb"} and events[1].type == "message"


def test_the_two_clients_have_the_same_methods_with_the_same_parameters() -> None:
    import inspect

    def public(cls: type) -> dict[str, list[str]]:
        return {name: list(inspect.signature(fn).parameters) for name, fn in vars(cls).items()
                if callable(fn) and not name.startswith("_") and name not in ("close",)}

    assert public(Client) == public(AsyncClient)
    assert len(public(Client)) >= 45


class FlakyStream:
    """A real HTTP server on loopback that serves a run's stream badly: the first connection sends two
    events and drops, the second answers 503 (too many streams), the third resends an old event (a copy)
    then the rest up to run.completed. It records the Last-Event-ID of every connection."""

    def __init__(self) -> None:
        import http.server

        self.last_ids: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                outer.last_ids.append(self.headers.get("Last-Event-ID"))
                n = len(outer.last_ids)
                if n == 2:
                    body = b'{"error": {"code": "too_many_streams", "message": "busy", "details": null, "request_id": "x"}}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                events = [(1, "run.started"), (2, "step.started")] if n == 1 else \
                    [(2, "step.started"), (3, "step.succeeded"), (4, "run.completed")]
                for seq, etype in events:
                    self.wfile.write(f': ping\r\nid: {seq}\r\nevent: {etype}\r\ndata: {{"runId": "r1", "seq": {seq}}}\r\n\r\n'.encode())
                    self.wfile.flush()
                if n == 1:
                    self.wfile.write(b"id: 3\r\nevent: step.succ")  # cut mid-frame: never handed on
                    self.wfile.flush()
                self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stream_reconnects_from_its_last_id_through_drops_busy_answers_and_copies(kind: str) -> None:
    server = FlakyStream()
    try:
        if kind == "sync":
            with Client(server.base) as api:
                got = [(e.id, e.type) for e in api.stream_run("r1", timeout=20)]
        else:
            async def follow() -> list[tuple[int, str]]:
                async with AsyncClient(server.base) as api:
                    return [(e.id, e.type) async for e in api.stream_run("r1", timeout=20)]
            got = asyncio.run(follow())
    finally:
        server.close()
    assert got == [(1, "run.started"), (2, "step.started"), (3, "step.succeeded"), (4, "run.completed")]
    assert server.last_ids == [None, "2", "2"]
