"""The webhook queue's SQL on both stores (SQLite and Postgres): subscriptions, the cursor and its
compare-and-set, the delivery loop against a real receiver, the attempt log, dead letters, redeliver,
and the bundle rows."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from station_wf.errors import ServiceError
from station_wf.integrations.delivery import DeliveryConfig, WebhookDeliveries
from station_wf.integrations.subscriptions import Defaults, SubscriptionService
from station_wf.store import bundles, hook_deliveries
from station_wf.store.db import Writer, open_readers
from tests.receivers import Receiver, serving


def _seed(conn: sqlite3.Connection, run_id: str, events: list[str]) -> None:
    conn.execute("INSERT INTO workflow_definitions (workflow_id, version, content_hash, source, definition, created_at)"
                 " VALUES ('w', 1, 'h', 'api', '{}', '2000-01-01') ON CONFLICT DO NOTHING")
    conn.execute("INSERT INTO workflow_runs (run_id, workflow_id, workflow_version, content_hash, status, input, context,"
                 " created_at, updated_at) VALUES (?, 'w', 1, 'h', 'COMPLETED', '{}', '{}', '2000', '2000')", (run_id,))
    conn.executemany("INSERT INTO workflow_run_events (run_id, seq, type, payload, created_at) VALUES (?, ?, ?, '{}', '2000')",
                     [(run_id, i + 1, t) for i, t in enumerate(events)])


def test_queue_on_both_stores(store_target: Path | str) -> None:
    writer = Writer(store_target)
    writer.start()
    writer.run_sync(lambda c: _seed(c, "before", ["run.completed"]))  # before the subscription: never delivered

    async def go(rec: Receiver) -> None:
        readers = open_readers(store_target)
        await readers.open()
        subs = SubscriptionService(writer, readers, Defaults(max_attempts=2, timeout_seconds=5))
        await subs.create({"id": "ok", "url": rec.url("/ok"), "events": ["run.*"], "secret": "x" * 16})
        await subs.create({"id": "down", "url": rec.url("/down"), "events": ["run.completed"]})
        writer.run_sync(lambda c: _seed(c, "r1", ["run.created", "step.started", "run.completed"]))
        loop = WebhookDeliveries(writer, readers, DeliveryConfig(backoff_seconds=0.05, max_backoff_seconds=0.05))  # type: ignore[arg-type]
        assert await loop.enqueue() == 3  # ok: run.created + run.completed; down: run.completed
        assert await loop.enqueue() == 0  # the cursor moved: nothing twice
        with pytest.raises(hook_deliveries.CursorMoved):
            writer.run_sync(lambda c: hook_deliveries.enqueue(c, 0, 99, [], 0.0))
        for _ in range(40):
            await loop.run_once()
            await asyncio.sleep(0.05)
            listed = (await subs.deliveries(None, None, None, None, 100))["deliveries"]
            if all(x["status"] != "pending" for x in listed):
                break
        by_id = {x["id"]: x for x in listed}
        assert {k for k, v in by_id.items() if v["status"] == "delivered"} == {k for k in by_id if k.startswith("ok:")}
        (dead,) = [v for v in by_id.values() if v["status"] == "dead"]
        assert dead["attempts"] == 2 and dead["runId"] == "r1"
        assert [r["body"]["event"] for r in rec.got("/ok")] == ["run.created", "run.completed"]
        rec.failing.discard("/down")
        again = await subs.redeliver(dead["id"])
        assert again["status"] == "pending"
        for _ in range(40):
            await loop.run_once()
            await asyncio.sleep(0.05)
            if (await subs.delivery(dead["id"]))["status"] == "delivered":
                break
        shown = await subs.delivery(dead["id"])
        assert shown["status"] == "delivered" and [a["responseStatus"] for a in shown["attemptLog"]] == [500, 500, 200]
        await subs.delete("down")
        assert [s["id"] for s in await subs.list()] == ["ok"]
        writer.run_sync(lambda c: _seed(c, "r2", ["run.completed"]))
        assert await loop.enqueue() == 1  # the deleted subscription gets nothing new
        with pytest.raises(ServiceError) as gone:
            await subs.redeliver(f"down:{dead['eventId']}")
        assert gone.value.status == 409 and gone.value.code == "subscription_deleted"
        assert writer.run_sync(lambda c: hook_deliveries.prune(c, "2000")) == 0  # nothing that old
        assert writer.run_sync(lambda c: hook_deliveries.prune(c, "9999")) == 3  # every finished delivery
        left = (await subs.deliveries(None, None, None, None, 100))["deliveries"]
        assert [(x["subscriptionId"], x["runId"], x["status"]) for x in left] == [("ok", "r2", "pending")]
        await loop.close()
        await readers.close()

    rec = Receiver()
    rec.failing.add("/down")
    with serving(rec):
        asyncio.run(go(rec))

    writer.run_sync(lambda c: bundles.record(c, "b", "default", "1.0", "sha256:x", None, [{"id": "w", "version": 1}], [], []))
    writer.run_sync(lambda c: bundles.record(c, "b", "default", "1.1", "sha256:y", "d", [{"id": "w", "version": 1}], [], []))
    row = writer.run_sync(lambda c: bundles.get(c, "b", "default"))
    assert row["version"] == "1.1" and row["description"] == "d"
    assert writer.run_sync(lambda c: bundles.latest_version(c, "w")) == 1
    writer.close()
