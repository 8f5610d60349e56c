"""Starlark evaluation in resource-limited processes, outside the writer thread and the event loop.

The shape (DESIGN 6, "decide outside the writer"): inside a write transaction an expression that
is not a pure path is looked up among the answers its `TxScope` already holds; when it is missing
the transaction raises `NeedsEvaluation` and is rolled back. `Writer.run` then awaits
`prepare()` on the event loop, which sends the expression and the values it reads to an idle
sandbox process (`sandbox_worker`), and runs the transaction again, which now finds the answer.
The writer thread never runs user code, the event loop only waits on a pipe, and a crash, a
memory bomb or a CPU burn costs one sandbox process: it is killed at its deadline or dies at its
`RLIMIT_AS`, is replaced, and the expression fails its step with error type `expression`.

Answers are keyed by a hash of (expression, label, timeout, the exact bound values), so a re-run
that sees different data (something committed in between) asks again instead of reusing a stale
answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from station_wf.deferral import Deferred, TxScope, current_scope
from station_wf.expr import starlark_eval
from station_wf.expr.starlark_eval import CompiledExpression, EvalFailure

log = logging.getLogger(__name__)

DEFAULT_MEMORY_MB = 512
DEFAULT_MAX_RESULT_BYTES = 1 << 20
# Beyond the expression's own budget: JSON in and out of the process, and the process' own start.
DEADLINE_GRACE_S = 2.0
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class _Request:
    key: bytes
    payload: bytes  # one JSON line
    timeout_s: float


class NeedsEvaluation(Deferred):
    """One or more expressions to evaluate in the sandbox before the transaction can decide."""

    def __init__(self, pool: SandboxPool, requests: list[_Request]) -> None:
        super().__init__(f"{len(requests)} expression(s) to evaluate")
        self.pool = pool
        self.requests = requests

    async def prepare(self, scope: TxScope) -> None:
        unique = {r.key: r for r in self.requests if r.key not in scope.answers}
        answers = await asyncio.gather(*(self.pool.evaluate(r) for r in unique.values()))
        for key, answer in zip(unique, answers, strict=True):
            scope.answers[key] = answer

    def merge(self, other: Deferred) -> Deferred:
        if isinstance(other, NeedsEvaluation):
            return NeedsEvaluation(self.pool, self.requests + other.requests)
        return self


class _Worker:
    """One sandbox process and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.used = 0

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class SandboxPool:
    """A few sandbox processes; each evaluates one expression at a time."""

    def __init__(self, size: int = 2, *, memory_mb: int = DEFAULT_MEMORY_MB,
                 max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES, max_input_bytes: int = 16 << 20) -> None:
        self.size = max(1, size)
        self.memory_mb = memory_mb
        self.max_result_bytes = max_result_bytes
        self.max_input_bytes = max_input_bytes
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._closed = False
        self.evaluations = 0
        self.crashes = 0
        self.kills = 0

    async def start(self) -> None:
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for worker in workers:
            self._idle.put_nowait(worker)

    async def _spawn(self) -> _Worker:
        env = {**os.environ, "RUST_BACKTRACE": "0"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "station_wf.expr.sandbox_worker",
            "--memory-mb", str(self.memory_mb), "--max-result-bytes", str(self.max_result_bytes),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            limit=self.max_result_bytes + (64 << 10), env=env,
        )
        worker = _Worker(proc)
        self._all.add(worker)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if not line.startswith(b'{"ready"'):
            worker.kill()
            self._all.discard(worker)
            raise RuntimeError("the expression sandbox process did not start")
        return worker

    async def _replace(self, worker: _Worker) -> None:
        """Retire a dead or killed process and put a fresh one in the pool (retrying: never shrink)."""
        worker.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(worker.proc.wait(), 5)
        self._all.discard(worker)
        for delay in (0.0, 0.5, 1.0, 2.0, 5.0):
            if self._closed:
                return
            await asyncio.sleep(delay)
            try:
                self._idle.put_nowait(await self._spawn())
                return
            except Exception:  # noqa: BLE001 - retried; the pool works with one process less meanwhile
                log.exception("sandbox: could not start a replacement process")
        log.error("sandbox: giving up on a replacement process; %d left", len(self._all))

    async def evaluate(self, request: _Request) -> tuple[bool, Any]:
        """(True, value) or (False, failure dict); never raises for anything the expression does."""
        if self._closed:
            return False, {"kind": "runtime", "reason": "the daemon is stopping"}
        worker = await self._idle.get()
        proc = worker.proc
        assert proc.stdin is not None and proc.stdout is not None
        started = time.monotonic()
        healthy = False
        try:
            proc.stdin.write(request.payload)
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), request.timeout_s + DEADLINE_GRACE_S)
            if not line:
                return False, self._crashed(await self._exit_code(worker))
            reply = json.loads(line)
            healthy = not reply.get("retire")
        except TimeoutError:
            self.kills += 1
            return False, {"kind": "timeout", "reason": f"did not finish within {request.timeout_s:g}s "
                                                        "(one long builtin call); the evaluator was stopped"}
        except (ValueError, asyncio.LimitOverrunError):
            return False, {"kind": "result_too_large", "reason": f"result is over the limit of {self.max_result_bytes} bytes"}
        except (ConnectionError, BrokenPipeError):
            return False, self._crashed(await self._exit_code(worker))
        finally:
            self.evaluations += 1
            worker.used += 1
            if healthy:
                self._idle.put_nowait(worker)
            else:
                asyncio.get_running_loop().create_task(self._replace(worker))
            log.debug("sandbox evaluation took %.2f ms", (time.monotonic() - started) * 1000)
        if reply.get("ok"):
            return True, reply.get("value")
        return False, reply.get("error") or {"kind": "runtime", "reason": "failed"}

    async def _exit_code(self, worker: _Worker) -> int | None:
        with contextlib.suppress(Exception):
            return await asyncio.wait_for(worker.proc.wait(), 2)
        return None

    def _crashed(self, code: int | None) -> dict[str, Any]:
        self.crashes += 1
        if code is not None and code < 0:
            try:
                how = f"signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"signal {-code}"
        else:
            how = f"exit code {code}"
        return {"kind": "crash", "reason": f"the expression crashed its evaluator ({how}): it is too deep, "
                                           "or builds a value over the sandbox's memory limit"}

    async def close(self) -> None:
        self._closed = True
        for worker in list(self._all):
            if worker.proc.stdin is not None:
                with contextlib.suppress(Exception):
                    worker.proc.stdin.close()
        for worker in list(self._all):
            try:
                await asyncio.wait_for(worker.proc.wait(), 2)
            except (TimeoutError, ProcessLookupError):
                worker.kill()
        self._all.clear()

    # -- the hook `CompiledExpression.evaluate` calls on the writer thread --------------------------
    def remote(self, expression: CompiledExpression, bound: dict[str, Any], timeout_s: float) -> Any:
        """Inside a transaction: the answer if known, else raise `NeedsEvaluation`. Outside: `LOCAL`."""
        scope = current_scope()
        if scope is None:
            return starlark_eval.LOCAL  # not in a daemon transaction (tools, tests): evaluate in-process
        try:
            body = json.dumps(bound, sort_keys=True, allow_nan=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise EvalFailure("input", f"the values it reads are not JSON-compatible: {exc}") from None
        if len(body) > self.max_input_bytes:
            raise EvalFailure("input_too_large", f"the values it reads are {len(body)} bytes, over the limit of {self.max_input_bytes}")
        head = json.dumps({"source": expression.source, "label": expression.label, "timeout": timeout_s})
        payload = (head[:-1] + ', "bound": ' + body + "}\n").encode("utf-8", "surrogatepass")
        key = hashlib.blake2b(payload, digest_size=16).digest()
        answer = scope.answers.get(key)
        if answer is None:
            raise NeedsEvaluation(self, [_Request(key, payload, timeout_s)])
        ok, value = answer
        if ok:
            return value
        raise EvalFailure.from_dict(value)


def install(pool: SandboxPool | None) -> None:
    """Route evaluations made inside daemon transactions through `pool` (None: back to in-process)."""
    starlark_eval.set_remote(None if pool is None else pool.remote)
