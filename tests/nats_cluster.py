"""A real 3-node NATS JetStream cluster on 127.0.0.1 for tests: three `nats-server` processes with
cluster routes, each with its own store directory and free ports, `kill(i)` (SIGKILL) and
`restart(i)` per node. The binary is the one the embedded server uses (`nats_server_binary`)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from station_wf.bus.nats_server import free_port, nats_server_binary

CLUSTER_NAME = "station-test"


@dataclass
class Node:
    name: str
    store_dir: Path
    client_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def jsz(self) -> dict[str, Any] | None:
        """The node's JetStream monitoring view (`/jsz`), None while it does not answer."""
        try:
            resp = httpx.get(f"http://127.0.0.1:{self.monitor_port}/jsz", timeout=1)
        except httpx.HTTPError:
            return None
        return resp.json() if resp.status_code == 200 else None


class NatsCluster:
    """Three routed nats-servers with JetStream; `url` lists all three (what STATION_NATS_URL takes)."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.nodes = [Node(f"n{i}", root / f"n{i}") for i in range(size)]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def _conf(self, node: Node) -> Path:
        routes = ", ".join(f'"nats-route://127.0.0.1:{n.cluster_port}"' for n in self.nodes if n is not node)
        conf = node.store_dir / "nats-server.conf"
        conf.write_text(
            f'server_name: "{node.name}"\n'
            f'listen: "127.0.0.1:{node.client_port}"\n'
            f'http: "127.0.0.1:{node.monitor_port}"\n'
            f'jetstream {{\n  store_dir: "{node.store_dir / "jetstream"}"\n}}\n'
            f'cluster {{\n  name: "{CLUSTER_NAME}"\n  listen: "127.0.0.1:{node.cluster_port}"\n'
            f'  routes: [{routes}]\n}}\n'
        )
        return conf

    def _spawn(self, node: Node) -> None:
        assert not node.alive, f"{node.name} already running"
        node.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(node.store_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        node.proc = subprocess.Popen([nats_server_binary(), "-c", str(self._conf(node))],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            self._spawn(node)
        self.wait_meta_leader(timeout)

    def kill(self, i: int) -> None:
        """kill -9 one node: no lame-duck mode, no flush."""
        node = self.nodes[i]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start a killed node again on the same ports and store; returns once it rejoined the meta group."""
        node = self.nodes[i]
        self._spawn(node)
        self.wait_meta_leader(timeout, via=node)

    def wait_meta_leader(self, timeout: float = 30.0, via: Node | None = None) -> str:
        """Until JetStream has elected a meta leader that every live node (or `via`) agrees on."""
        deadline = time.monotonic() + timeout
        last: list[Any] = []
        while time.monotonic() < deadline:
            nodes = [via] if via is not None else [n for n in self.nodes if n.alive]
            for node in nodes:
                if not node.alive:
                    raise AssertionError(f"nats-server {node.name} exited:\n{self.log(node)}")
            views = [n.jsz() for n in nodes]
            leaders = {((v or {}).get("meta_cluster") or {}).get("leader") for v in views}
            last = list(leaders)
            if len(leaders) == 1 and None not in leaders and "" not in leaders:
                return str(leaders.pop())
            time.sleep(0.1)
        raise AssertionError(f"no JetStream meta leader within {timeout}s (saw {last})\n"
                             + "\n".join(self.log(n) for n in self.nodes))

    def log(self, node: Node) -> str:
        path = node.store_dir / "nats-server.log"
        return f"--- {node.name}\n" + (path.read_text(errors="replace")[-3000:] if path.exists() else "")

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(10)

    def run(self, coro_fn: Callable[[Any], Any], timeout: float = 30.0) -> Any:
        """Run `coro_fn(js)` with a short-lived client that knows every node."""
        import nats

        async def go() -> Any:
            nc = await nats.connect([n.url for n in self.nodes], connect_timeout=2, max_reconnect_attempts=20)
            try:
                return await asyncio.wait_for(coro_fn(nc.jetstream(timeout=10)), timeout)
            finally:
                await nc.close()

        return asyncio.run(go())


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats-cluster")
    cluster.start()
    yield cluster
    cluster.stop()
