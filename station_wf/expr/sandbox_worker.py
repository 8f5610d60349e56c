"""The sandbox process: evaluates Starlark requests read from stdin, one JSON line each.

It runs with an address-space limit (`RLIMIT_AS`) so a memory bomb fails here, not in the daemon;
a native stack overflow or an allocator abort kills only this process, and the daemon's pool
(`expr.sandbox`) reports it as the expression's error and starts a fresh one. It exits when stdin
closes, so it never outlives the daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import resource
import signal
import sys
import threading
from typing import Any

# Starlark recursion happens on the native stack of the thread that evaluates: give it room, so
# the load-time nesting limits, not the stack size, decide what is too deep.
STACK_BYTES = 64 * 1024 * 1024


def _die_with_parent() -> None:
    """If the daemon is killed (even -9) mid-evaluation, this process gets SIGKILL too."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _limit_memory(megabytes: int) -> None:
    if megabytes > 0:
        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash must not write a core file per expression


def _answer(request: dict[str, Any], max_result_bytes: int) -> dict[str, Any]:
    from station_wf.expr.starlark_eval import EvalFailure, ExpressionError, compile_expression

    try:
        expression = compile_expression(request["source"], request.get("label") or "expression")
        value = expression.evaluate_bound(request["bound"], float(request["timeout"]))
        text = json.dumps(value, allow_nan=True)
    except EvalFailure as failure:
        return {"ok": False, "error": failure.to_dict()}
    except ExpressionError as exc:  # does not compile (the loader should have refused it)
        return {"ok": False, "error": {"kind": exc.kind, "reason": exc.reason, "detail": exc.detail[:2000]}}
    except MemoryError:
        return {"ok": False, "error": {"kind": "memory", "reason": "ran out of memory (the expression builds too large a value)"}}
    except (TypeError, ValueError, RecursionError) as exc:
        return {"ok": False, "error": {"kind": "result", "reason": f"result is not JSON-compatible: {exc}"}}
    if len(text) > max_result_bytes:
        return {"ok": False, "error": {"kind": "result_too_large",
                                       "reason": f"result is {len(text)} bytes, over the limit of {max_result_bytes}"}}
    return {"ok": True, "json": text}


def serve(max_result_bytes: int) -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(b'{"ready": true}\n')
    stdout.flush()
    for line in stdin:
        retire = False
        try:
            request = json.loads(line)
            reply = _answer(request, max_result_bytes)
        except MemoryError:
            reply, retire = {"ok": False, "error": {"kind": "memory", "reason": "ran out of memory"}}, True
        except Exception as exc:  # noqa: BLE001 - a malformed request is answered, never fatal
            reply = {"ok": False, "error": {"kind": "runtime", "reason": f"sandbox: {type(exc).__name__}: {exc}"}}
        except BaseException:  # noqa: BLE001 - a Rust panic (out of memory): answer, then make room for a fresh process
            reply, retire = {"ok": False, "error": {"kind": "memory", "reason": "ran out of memory (the expression builds "
                                                    "a value over the sandbox's memory limit)"}}, True
        if retire:
            reply["retire"] = True
        if "json" in reply:  # the value is already JSON text: splice it instead of encoding twice
            out = b'{"ok": true, "value": ' + reply["json"].encode("utf-8", "surrogatepass") + b"}\n"
        else:
            out = json.dumps(reply).encode() + b"\n"
        stdout.write(out)
        stdout.flush()
        if retire:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memory-mb", type=int, default=512)
    parser.add_argument("--max-result-bytes", type=int, default=1 << 20)
    args = parser.parse_args()
    _die_with_parent()
    _limit_memory(args.memory_mb)
    import starlark  # noqa: F401 - loaded before the first request, so it counts against no deadline

    threading.stack_size(STACK_BYTES)
    worker = threading.Thread(target=serve, args=(args.max_result_bytes,), name="starlark")
    worker.start()
    worker.join()


if __name__ == "__main__":
    main()
