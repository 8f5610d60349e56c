"""SSE subscribers in their OWN process (raw asyncio sockets, no HTTP library), CPU reported.

    python -m benchmarks.sseclient --url http://127.0.0.1:PORT/api/v1/workflow-runs/ID/stream --clients N

Opens N streams, then prints `{"ready": n, "refused": m}` once every stream answered. It then reads one
line from stdin: `go <unix time>` makes it time every event committed at or after that time from its
`time` field to its arrival (commit-to-client latency) until each stream saw the run's terminal event;
`stop` closes the streams at once (idle subscribers). The last line printed is the JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

TERMINAL = {"run.completed", "run.failed", "run.cancelled", "run.timed_out"}
OPEN_AT_ONCE = 200


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Fleet:
    def __init__(self, url: str, clients: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.clients = clients
        self.connected = 0
        self.refused: dict[str, int] = {}
        self.answered = asyncio.Event()
        self.go_time: float | None = None
        self.latencies: list[float] = []
        self.finished = 0

    def _answer(self, refused: str | None = None) -> None:
        if refused is None:
            self.connected += 1
        else:
            self.refused[refused] = self.refused.get(refused, 0) + 1
        if self.connected + sum(self.refused.values()) >= self.clients:
            self.answered.set()

    async def one(self, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
                writer.write(f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                             "Accept: text/event-stream\r\n\r\n".encode())
                status = int((await reader.readline()).split()[1])
                headers = b""
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    headers += line.lower()
            except (OSError, IndexError, ValueError) as exc:
                self._answer(type(exc).__name__)
                return
            if status != 200:
                self._answer(str(status))
                writer.close()
                return
            self._answer()
        try:
            await self._read(reader, b"transfer-encoding: chunked" in headers)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, chunked: bool) -> None:
        buffer = b""
        while True:
            if chunked:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                data = await reader.readexactly(size)
                await reader.readexactly(2)
            else:
                data = await reader.read(1 << 16)
                if not data:
                    return
            buffer += data.replace(b"\r\n", b"\n")
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                if self._event(block):
                    self.finished += 1
                    return

    def _event(self, block: bytes) -> bool:
        """Record one SSE event; True when it is the run's terminal event."""
        data = b"".join(line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:"))
        if not data:
            return False
        event: dict[str, Any] = json.loads(data)
        if self.go_time is not None and event.get("time"):
            committed = _ts(event["time"])
            if committed >= self.go_time:
                self.latencies.append(time.time() - committed)
        return event.get("type") in TERMINAL


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    fleet = Fleet(args.url, args.clients)
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    tasks = [asyncio.create_task(fleet.one(gate)) for _ in range(args.clients)]
    try:
        await asyncio.wait_for(fleet.answered.wait(), args.timeout)
    except TimeoutError:
        pass
    print(json.dumps({"ready": fleet.connected, "refused": fleet.refused}), flush=True)
    command = (await asyncio.to_thread(sys.stdin.readline)).split()
    t0 = time.monotonic()
    if command and command[0] == "go":
        fleet.go_time = float(command[1])
        await asyncio.wait(tasks, timeout=args.timeout)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = sorted(fleet.latencies)
    summary: dict[str, Any] = {"connected": fleet.connected, "refused": fleet.refused, "finished": fleet.finished,
                               "deliveries": len(lat), "wait_s": round(time.monotonic() - t0, 2)}
    if lat:
        summary["p50_ms"] = round(lat[len(lat) // 2] * 1000, 1)
        summary["p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1)
        summary["max_ms"] = round(lat[-1] * 1000, 1)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sseclient")
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.clients + 100)), hard))
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    summary = asyncio.run(main_async(args))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary["client_cpu_s"] = round(usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime, 3)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
