"""One real daemon for the whole fuzz module, its fixture data, and `FuzzEnv.call`: send one request and
check everything the suite promises about it (no 5xx, the error shape, nothing stored on a rejection,
the daemon alive). A daemon that dies is a finding; the env then starts a fresh one (new data dir: a
poison task would kill it again on the old one) so the rest of the module still tests something.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Daemon, wait_until
from tests.fuzz.harness import AGENT_REPLIES, Findings, Fingerprint, HostilePeer

# The daemon runs with a soft address-space limit so that a memory bomb that is not bounded yet fails
# inside the daemon instead of pushing a shared machine into the OOM killer. Children may lower it.
ADDRESS_SPACE_CAP = 6 << 30
REQUEST_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
SLOW_REQUEST_S = 3.0  # a request that takes longer stalls its client and, today, the event loop
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")

FIXTURE_WORKFLOWS = {
    "fz-sink": """
id: fz-sink
inputSchema: { type: object }
start: s
states:
  - { name: s, type: inject, data: { sunk: true }, end: true }
""",
    "fz-gate": """
id: fz-gate
start: prep
states:
  - { name: prep, type: inject, data: { plan: go }, next: ask }
  - name: ask
    type: operation
    action: human.approval
    input: { message: "go?", approvers: ["user:alice"] }
    resultPath: decision
    next: done
  - { name: done, type: inject, data: { finished: true }, end: true }
""",
    "fz-plain": """
id: fz-plain
inputSchema: { type: object, properties: { who: { type: string } } }
start: ask
states:
  - { name: ask, type: operation, action: agent.run, input: { agent: echo, task: "hello {{ who }}" }, next: tidy }
  - { name: tidy, type: transform, expression: '{"n": len(steps)}', resultPath: summary, end: true }
""",
    "fz-sched": """
id: fz-sched
schedules:
  - { cron: "0 0 1 1 *", timezone: UTC }
start: s
states:
  - { name: s, type: inject, data: {}, end: true }
""",
    "fz-put": """
id: fz-put
start: s
states:
  - { name: s, type: inject, data: { v: 1 }, end: true }
""",
}


class FuzzEnv:
    def __init__(self, root: Path, peer: HostilePeer, report_dir: Path) -> None:
        """`report_dir` (kept after the run, unlike tmp dirs) gets findings-*.jsonl and outcomes.txt."""
        self.root, self.peer, self.report_dir = root, peer, report_dir
        for old in [*report_dir.glob("findings-*.jsonl"), *report_dir.glob("outcomes.txt")]:
            old.unlink()
        self.generation = 0
        self.daemon: Daemon
        self.fp: Fingerprint
        self.baseline = ""
        self.client = httpx.Client(timeout=REQUEST_TIMEOUT)
        self.gate_run = self.approval_id = self.plain_run = ""
        self.deaths: list[str] = []
        self.last_run_read = ""  # what the last GET of a run answered (for a finding when it never reads back)
        self.boot()

    def findings(self, name: str) -> Findings:
        return Findings(path=self.report_dir / f"findings-{name}.jsonl")

    def note(self, line: str) -> None:
        """An outcome worth reading even when it is fine (what each hostile case did), in outcomes.txt."""
        with open(self.report_dir / "outcomes.txt", "a") as fh:
            fh.write(line + "\n")

    # -- lifecycle --
    def boot(self) -> None:
        """A fresh daemon in a fresh directory, with the fixture workflows, agents and runs."""
        self.generation += 1
        root = self.root / f"fz-{self.generation}"
        (root / "environments" / "default" / "workflows").mkdir(parents=True)
        (root / "environments" / "default" / "agents").mkdir(parents=True)
        self.daemon = Daemon(root, None, {})
        for name, text in FIXTURE_WORKFLOWS.items():
            self.daemon.add_workflow(name, text)
        for name in AGENT_REPLIES:
            self.daemon.add_agent(name, self.peer.url(f"/agents/{name}"))
        self.daemon.start(wait=False)
        assert self.daemon.proc is not None
        resource.prlimit(self.daemon.proc.pid, resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, resource.RLIM_INFINITY))
        self.daemon.wait_ready(60)
        self.fp = Fingerprint(self.daemon.data_dir / "station-wf.db")
        gate = self.daemon.start_run("fz-gate")
        self.gate_run = gate["id"]
        self.plain_run = self.daemon.start_run("fz-plain", {"who": "fixture"})["id"]
        self.daemon.wait_status(self.plain_run, "COMPLETED", timeout=30)
        self.daemon.wait_status(self.gate_run, "WAITING_APPROVAL", timeout=30)
        approvals = self.daemon.request("GET", f"/api/v1/workflow-runs/{self.gate_run}/approvals").json()["approvals"]
        self.approval_id = approvals[0]["id"]
        self.baseline = self.fp.settle()

    @property
    def pid(self) -> int:
        """The daemon's pid (0 while a replacement is being started: probes then read nothing)."""
        return self.daemon.proc.pid if self.daemon.proc is not None else 0

    def alive(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def ensure_alive(self, findings: Findings, route: str, case: str) -> bool:
        """False (and a finding, and a fresh daemon) when the daemon died."""
        if self.alive():
            return True
        assert self.daemon.proc is not None
        code = self.daemon.proc.returncode
        tail = self.daemon.log_path.read_text(errors="replace")[-300:].replace("\n", " | ")
        findings.add("daemon died", route, case, f"exit {code}; log tail: {tail}")
        self.deaths.append(f"{route} {case}: exit {code}")
        self.fp.close()
        self.boot()
        return False

    def healthy_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.alive():
            try:
                if self.client.get(self.daemon.base + "/healthz", timeout=1).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    def recover(self, findings: Findings, route: str, case: str, wait: float = 20.0) -> None:
        """After a timeout: wait for the daemon; if it stays wedged, that is a finding and it is replaced."""
        if not self.ensure_alive(findings, route, case):
            return
        if not self.healthy_within(wait):
            findings.add("daemon wedged (no /healthz for 20 s after a request)", route, case, "killed and replaced")
            self.daemon.kill()
            self.fp.close()
            self.boot()

    def close(self) -> None:
        self.client.close()
        self.fp.close()
        if self.alive():
            self.daemon.stop()

    # -- one checked request --
    def call(self, findings: Findings, method: str, path: str, case: str, *, route: str | None = None,
             content: bytes | None = None, headers: dict[str, Any] | None = None, params: Any = None,
             json_text: str | None = None, stores_nothing: bool = False, timeout: Any = None) -> httpx.Response | None:
        """Send one request and check it; `stores_nothing` also checks the fingerprint after a 2xx (validate)."""
        route = route or f"{method} {path}"
        hdrs = dict(headers or {})
        if json_text is not None:
            content = json_text.encode("utf-8", errors="surrogatepass")
            hdrs.setdefault("Content-Type", "application/json")
        t0 = time.monotonic()
        try:
            try:
                resp = self.client.request(method, self.daemon.base + path, content=content, headers=hdrs, params=params,
                                           timeout=timeout or REQUEST_TIMEOUT)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                # A keep-alive connection the previous request's bare 500 closed: that one is already a
                # finding, so this request gets one retry on a fresh connection before it counts.
                self.client.close()
                self.client = httpx.Client(timeout=REQUEST_TIMEOUT)
                if not self.ensure_alive(findings, route, case) or (content is not None and not isinstance(content, bytes)):
                    return None
                resp = self.client.request(method, self.daemon.base + path, content=content, headers=hdrs, params=params,
                                           timeout=timeout or REQUEST_TIMEOUT)
        except httpx.TimeoutException:
            findings.add("client timeout (10 s)", route, case, "no answer")
            self.recover(findings, route, case)
            return None
        except httpx.HTTPError as exc:
            if self.ensure_alive(findings, route, case):
                findings.add("connection error", route, case, f"{type(exc).__name__}: {exc}")
            return None
        elapsed = time.monotonic() - t0
        if elapsed > SLOW_REQUEST_S:
            findings.add(f"request slower than {SLOW_REQUEST_S:.0f} s", route, case, f"{resp.status_code} after {elapsed:.1f} s")
        if not self.ensure_alive(findings, route, case):
            return resp
        self.check_response(findings, route, case, resp, method, stores_nothing, path)
        return resp

    def check_response(self, findings: Findings, route: str, case: str, resp: httpx.Response, method: str,
                       stores_nothing: bool = False, path: str = "") -> None:
        status = resp.status_code
        observed = f"{status} {resp.text[:160]!r}"
        if status >= 500:
            bare = method != "HEAD" and error_shape_problem(resp) is not None
            findings.add("5xx (bare, without the error shape)" if bare else "5xx", route, case, observed)
        elif status >= 400 and method != "HEAD":
            problem = error_shape_problem(resp)
            if problem:
                findings.add(f"error shape ({problem})", route, case, observed)
        if status >= 400 or stores_nothing:
            after = self.fp.take()
            if after != self.baseline:
                cause = "stored data changed by a rejected request" if status >= 400 else "stored data changed by a request that must store nothing"
                findings.add(cause, route, case, observed)
                self.baseline = self.fp.settle()
            return
        if method == "POST" and path == "/api/v1/workflow-runs" and status == 201:
            try:
                self.fp.excluded_runs.add(resp.json()["run"]["id"])
            except (ValueError, KeyError, TypeError):
                findings.add("2xx without a run in its body", route, case, observed)
        if method != "HEAD" and "text/event-stream" not in resp.headers.get("content-type", ""):
            try:
                resp.json()
            except ValueError:
                findings.add("2xx body is not JSON", route, case, observed)
        self.baseline = self.fp.take()

    def wait_run(self, run_id: str, timeout: float) -> dict[str, Any] | None:
        """The run once terminal (None if it is not within `timeout` or the daemon died)."""
        holder: dict[str, Any] = {}

        def done() -> bool:
            if not self.alive():
                return True
            try:
                resp = self.client.get(f"{self.daemon.base}/api/v1/workflow-runs/{run_id}", timeout=5)
            except httpx.HTTPError:
                return False
            self.last_run_read = f"GET run: {resp.status_code} {resp.text[:120]!r}"
            if resp.status_code == 200:
                holder["run"] = resp.json()
                return holder["run"]["status"] in TERMINAL
            return False

        try:
            wait_until(done, timeout, interval=0.1, what=f"run {run_id}")
        except AssertionError:
            return holder.get("run") and {**holder["run"], "_timed_out": True}
        return holder.get("run") if self.alive() else None


def error_shape_problem(resp: httpx.Response) -> str | None:
    """What is wrong with a 4xx body, or None when it is {"error": {"code","message","details","request_id"}}."""
    try:
        body = resp.json()
    except ValueError:
        return "not JSON"
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return "no error object"
    missing = [k for k in ("code", "message", "details", "request_id") if k not in err]
    if missing:
        return f"missing {', '.join(missing)}"
    if not (isinstance(err["code"], str) and err["code"] and isinstance(err["message"], str) and err["message"]):
        return "code/message not strings"
    if not (isinstance(err["request_id"], str) and err["request_id"]):
        return "empty request_id"
    return None


