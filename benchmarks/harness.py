"""A real daemon (embedded NATS, SQLite file) and the demo HTTP agent, started for one benchmark."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.procstat import child_pid
from station_wf.bus.nats_server import free_port

REPO = Path(__file__).resolve().parents[1]


class BenchDaemon:
    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="station-wf-bench-"))
        self.http_port = free_port()
        self.agent_port = free_port()
        shutil.copytree(REPO / "environments", self.root / "environments")
        prompt = self.root / "environments/default/agents/greeter.prompt"
        prompt.write_text(prompt.read_text().replace("127.0.0.1:8588", f"127.0.0.1:{self.agent_port}"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STATION_")}
        self.env.update({
            "STATION_DATA_DIR": str(self.root / "data"),
            "STATION_ENVIRONMENTS_DIR": str(self.root / "environments"),
            "STATION_HTTP_ADDR": f"127.0.0.1:{self.http_port}",
            "STATION_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        })
        self.procs: list[subprocess.Popen] = []
        self.base = f"http://127.0.0.1:{self.http_port}"

    @property
    def db(self) -> str:
        return str(self.root / "data" / "station-wf.db")

    @property
    def pid(self) -> int:
        """The daemon (the last process started)."""
        return self.procs[-1].pid

    def pids(self) -> dict[str, int | None]:
        """The processes whose CPU a scenario reports: the daemon, its nats-server, the demo agent."""
        return {"daemon": self.pid, "nats": child_pid(self.pid, "nats-server"),
                "agent": self.procs[0].pid if len(self.procs) > 1 else None}

    def add_agent(self, name: str, port: int) -> None:
        """An agent prompt pointing at an HTTP agent on loopback (the demo agent or a test's own)."""
        (self.root / "environments/default/agents" / f"{name}.prompt").write_text(
            f"---\nmetadata: {{name: {name}}}\nendpoint: http://127.0.0.1:{port}/agents/{name}\n---\n{name}.\n")

    def add_workflow(self, name: str, text: str) -> None:
        (self.root / "environments/default/workflows" / f"{name}.workflow.yaml").write_text(text)

    def start(self) -> None:
        cli = [sys.executable, "-m", "station_wf.cli"]
        self.procs.append(subprocess.Popen([*cli, "demo-agent", "--port", str(self.agent_port)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.start_daemon_only()

    def start_daemon_only(self) -> None:
        """(Re)start `station-wf serve` on the same data directory and wait until it is ready."""
        cli = [sys.executable, "-m", "station_wf.cli"]
        self.procs.append(subprocess.Popen([*cli, "serve"], env=self.env, stdout=subprocess.DEVNULL,
                                           stderr=open(self.root / "daemon.log", "ab")))  # noqa: SIM115
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("daemon not ready; see " + str(self.root / "daemon.log"))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)
