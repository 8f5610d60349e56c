"""DefinitionService: workflow files and API bodies in, versioned definitions out."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from station_wf.agents.catalog import AgentCatalog
from station_wf.agents.flow_check import check_definition_agents
from station_wf.dsl.child_refs import child_references, cycle_message, find_cycle
from station_wf.dsl.input_schema import schema_problems
from station_wf.dsl.limits import document_size_problem
from station_wf.dsl.loader import normalize_definition, parse_definition
from station_wf.dsl.problems import DefinitionError
from station_wf.dsl.spec import WORKFLOW_FILE_SUFFIXES
from station_wf.engine.schedules import sync_schedules
from station_wf.errors import ServiceError, invalid, not_found
from station_wf.services.isolated import IsolatedPool
from station_wf.services.offload import DEFAULT as DEFAULT_OFFLOADER
from station_wf.services.offload import Offloader
from station_wf.services.storable import refuse_hostile_json, value_problem
from station_wf.store import bundles
from station_wf.store import definitions as ds
from station_wf.store.db import Readers, Writer


@dataclass
class SyncReport:
    environment: str
    registered: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment, "registered": self.registered, "unchanged": self.unchanged,
            "disabled": self.disabled, "errors": self.errors, "warnings": self.warnings,
        }


def workflow_files(environments_dir: Path, environment: str) -> list[Path]:
    directory = Path(environments_dir) / environment / "workflows"
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WORKFLOW_FILE_SUFFIXES))


def plan_sync(environments_dir: Path, environment: str, agents: AgentCatalog | None = None):
    """Parse every workflow file of the environment (outside any transaction); returns the sync transaction.

    A file that does not load, or names an agent the environment lacks, is reported and skipped: the
    version already stored keeps serving."""
    report = SyncReport(environment)
    agents = agents if agents is not None else AgentCatalog(Path(environments_dir), environment)
    agents.reload()
    parsed: list[tuple[dict[str, Any], str, str]] = []
    seen_ids: dict[str, str] = {}
    failed_ids: set[str] = set()
    for file in workflow_files(environments_dir, environment):
        raw = file.read_text()
        checked = check_workflow_file(file, raw, agents)
        report.warnings.extend(checked.warnings)
        if checked.errors:
            report.errors.extend(checked.errors)
            if checked.workflow_id:
                failed_ids.add(checked.workflow_id)  # a broken file must not disable the workflow it defines
            continue
        defn = checked.definition
        assert defn is not None
        if defn["id"] in seen_ids:
            report.errors.append(f"{file}: workflow id {defn['id']!r} is also defined in {seen_ids[defn['id']]}")
            continue
        seen_ids[defn["id"]] = str(file)
        parsed.append((defn, raw, str(file)))

    def apply(conn: sqlite3.Connection) -> SyncReport:
        for defn, raw, file in list(parsed):
            problem = recursion_problem(conn, defn, {d["id"]: d for d, _, _ in parsed})
            if problem:
                report.errors.append(f"{file}: {problem}")
                parsed.remove((defn, raw, file))
                failed_ids.add(defn["id"])
        for defn, raw, file in parsed:
            reg = ds.register(conn, defn, raw, source="file", source_file=file, environment=environment)
            sync_schedules(conn, defn["id"], defn)
            if reg.created or reg.reactivated:
                report.registered.append({"workflowId": reg.workflow_id, "version": reg.version, "file": file})
            else:
                report.unchanged.append(reg.workflow_id)
        report.disabled.extend(ds.disable_missing_files(conn, environment, set(seen_ids) | failed_ids))
        return report

    return apply


def recursion_problem(conn: sqlite3.Connection, defn: dict[str, Any], pending: dict[str, dict[str, Any]] | None = None) -> str | None:
    """Why `defn` cannot be stored: it would start itself through `workflow.run` (directly or through
    the stored workflows and those `pending` beside it), or None."""
    if not child_references(defn):
        return None
    graph = {wf: child_references(json.loads(text)) for wf, text in ds.child_starters(conn)}
    graph.update({wf: child_references(d) for wf, d in (pending or {}).items()})
    graph[defn["id"]] = child_references(defn)
    cycle = find_cycle(graph, defn["id"])
    return cycle_message(cycle) if cycle else None


def _refuse_recursion(conn: sqlite3.Connection, defn: dict[str, Any]) -> None:
    """422 for a definition that would start itself (every write of a version passes here or plan_sync)."""
    problem = recursion_problem(conn, defn)
    if problem:
        raise ServiceError(422, "invalid_definition", "the workflow definition is invalid", [_problem("api", problem)])


@dataclass
class CheckedFile:
    """One workflow file as sync (and bundle install) sees it: the definition when it is usable, and
    every problem as `FILE: message` (loader errors carry their own FILE:LINE)."""
    definition: dict[str, Any] | None
    workflow_id: str | None
    errors: list[str]
    warnings: list[str]


def check_workflow_file(file: Path, raw: str, agents: AgentCatalog) -> CheckedFile:
    """Load one file and check it as sync does: the loader and checker, storable values, the input
    schema, and the agents it names (flow checks are warnings)."""
    try:
        defn = parse_definition(raw, source=str(file))
    except DefinitionError as exc:
        return CheckedFile(None, _guess_id(raw), [str(exc)], [])
    warnings = [str(w) for w in getattr(defn, "warnings", ())]
    agent_errors, agent_warnings = check_definition_agents(defn, agents)
    stored_errors = [p for p in (value_problem(defn, "definition"),) if p]
    errors = [*stored_errors, *schema_problems(defn.get("inputSchema")), *agent_errors]
    warnings += [f"{file}: {w}" for w in agent_warnings]
    return CheckedFile(None if errors else defn, defn["id"], [f"{file}: {e}" for e in errors], warnings)


def _guess_id(raw: str) -> str | None:
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict):
        return None
    found = doc.get("id", doc.get("workflowId"))  # Station's API-payload form names it workflowId
    return found if isinstance(found, str) else None


def definition_to_api(row: sqlite3.Row, include_definition: bool = True) -> dict[str, Any]:
    out = {
        "id": row["workflow_id"],
        "version": row["version"],
        "versionLabel": row["version_label"],
        "name": row["name"],
        "description": row["description"],
        "contentHash": row["content_hash"],
        "status": row["status"],
        "source": row["source"],
        "sourceFile": row["source_file"],
        "environment": row["environment"],
        "createdAt": row["created_at"],
    }
    if include_definition:
        out["definition"] = json.loads(row["definition"])
        out["raw"] = row["raw"]
    return out


def parse_api_body(body: Any, raw: str) -> dict[str, Any]:
    """A definition sent to the API: a JSON object (normalized like a file), its inputSchema safe to use."""
    if not isinstance(body, dict):
        raise invalid("the body must be a workflow definition object")
    too_big = document_size_problem(raw)
    if too_big:
        raise ServiceError(422, "invalid_definition", "the workflow definition is invalid", [too_big])
    try:
        defn = normalize_definition(body, source="request body")
    except DefinitionError as exc:
        raise ServiceError(422, "invalid_definition", "the workflow definition is invalid",
                           [str(p) for p in exc.problems]) from None
    except RecursionError:  # the loader's own nesting limit should come first; never a 500
        raise ServiceError(422, "invalid_definition", "the workflow definition is nested too deeply") from None
    problems = [p for p in (value_problem(defn, "definition"),) if p] or schema_problems(defn.get("inputSchema"))
    if problems:
        raise ServiceError(422, "invalid_definition", "the workflow definition is invalid", problems)
    return defn


def require_known_agents(defn: dict[str, Any], agents: AgentCatalog | None) -> list[str]:
    """A definition naming an agent that does not exist is refused (422); flow mismatches are warnings."""
    if agents is None:
        return []
    errors, warnings = check_definition_agents(defn, agents)
    if errors:
        raise ServiceError(422, "invalid_definition", "the workflow definition is invalid", errors)
    return warnings


def check_definition_text(text: str, source: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`POST /workflows/validate` minus the agents (this runs in a worker process): the answer so far and
    the definition when it loaded."""
    try:
        defn = parse_definition(text, source)
    except DefinitionError as exc:
        return {"valid": False, "errors": [p.to_dict() for p in exc.problems], "workflowId": exc.workflow_id}, None
    except RecursionError:
        return {"valid": False, "errors": [_problem(source, "the definition is nested too deeply")], "workflowId": None}, None
    errors = [p for p in (value_problem(defn, "definition"),) if p] or schema_problems(defn.get("inputSchema"))
    return {"valid": not errors, "errors": [_problem(source, e) for e in errors], "workflowId": defn["id"],
            "dialect": getattr(defn, "dialect", "prd"), "dialectReason": getattr(defn, "dialect_reason", ""),
            "warnings": [w.to_dict() for w in getattr(defn, "warnings", ())]}, defn


def add_agent_problems(result: dict[str, Any], defn: dict[str, Any] | None, source: str,
                       agents: AgentCatalog | None) -> dict[str, Any]:
    """What create would also refuse (unknown agents), and its warnings, added to a validate answer."""
    if defn is None or agents is None:
        return result
    errors, warnings = check_definition_agents(defn, agents)
    if errors:
        result = {**result, "valid": False, "errors": [*result["errors"], *(_problem(source, e) for e in errors)]}
    if warnings:
        extra = [_problem(source, w) if isinstance(w, str) else w for w in warnings]
        result = {**result, "warnings": [*result.get("warnings", []), *extra]}
    return result


def _problem(source: str, message: str) -> dict[str, Any]:
    return {"file": source, "line": None, "column": None, "path": "", "message": message}


class DefinitionService:
    """Reads and writes of versioned definitions. An API body is parsed in a limited worker process
    (`isolated`), its agents checked on a helper thread (`offloader`), then the version is written
    with its schedules in one transaction."""

    def __init__(self, readers: Readers, writer: Writer, agents: AgentCatalog | None = None,
                 offloader: Offloader | None = None, isolated: IsolatedPool | None = None) -> None:
        self.readers = readers
        self.writer = writer
        self.agents = agents
        self.offloader = offloader or DEFAULT_OFFLOADER
        self.isolated = isolated or IsolatedPool()

    # -- reads ------------------------------------------------------------------------------------
    async def list(self, status: str | None = None, q: str | None = None) -> list[dict[str, Any]]:
        out = []
        files = {r["workflow_id"]: r for r in await ds.read_file_sources(self.readers)}
        heads = await ds.read_heads(self.readers)
        sync = await self.offloader.run(file_states, [(h, files.get(h["workflow_id"])) for h in heads])
        for row in heads:
            if status and row["status"] != status:
                continue
            if q and q.lower() not in (row["workflow_id"] + " " + (row["name"] or "")).lower():
                continue
            item = definition_to_api(row, include_definition=False)
            item["lastRunAt"] = row["last_run_at"]
            item["sync"] = sync.get(row["workflow_id"])
            out.append(item)
        return out

    async def get(self, workflow_id: str, version: int | None = None) -> dict[str, Any]:
        row = await ds.read_definition(self.readers, workflow_id, version)
        if row is None:
            raise not_found("workflow", workflow_id if version is None else f"{workflow_id}@{version}")
        out = definition_to_api(row)
        out["bundle"] = await bundles.bundle_of(self.readers, row["environment"], workflow_id)  # issue 19
        return out

    async def versions(self, workflow_id: str) -> list[dict[str, Any]]:
        rows = await ds.read_versions(self.readers, workflow_id)
        if not rows:
            raise not_found("workflow", workflow_id)
        return [definition_to_api(r, include_definition=False) for r in rows]

    async def validate(self, text: str, source: str) -> dict[str, Any]:
        """`POST /workflows/validate`: the loader's answer plus the agents check; stores nothing."""
        if source.endswith(".json"):
            await self.offloader.run(refuse_hostile_json, text)
        result, defn = await self.isolated.run(check_definition_text, text, source)
        return await self.offloader.run(add_agent_problems, result, defn, source, self.agents)

    # -- writes -----------------------------------------------------------------------------------
    async def create(self, body: Any, raw: str) -> dict[str, Any]:
        """A new workflow from an API body (409 when the id exists); the stored version 1."""
        defn = await self._checked(body, raw)
        version = await self.writer.run(_tx_create(defn, raw, must_exist=False))
        return await self.get(defn["id"], version)

    async def update(self, workflow_id: str, body: Any, raw: str) -> dict[str, Any]:
        """A new version of an existing workflow (404 when unknown); the body's id defaults to the URL's."""
        if isinstance(body, dict) and "id" not in body:
            body = {**body, "id": workflow_id}
        defn = await self._checked(body, raw)
        if defn["id"] != workflow_id:
            raise invalid(f"body id {defn['id']!r} does not match the URL's {workflow_id!r}", {"id": defn["id"]})
        version = await self.writer.run(_tx_create(defn, json.dumps(body, sort_keys=True), must_exist=True))
        return await self.get(workflow_id, version)

    async def disable(self, workflow_id: str) -> dict[str, Any]:
        """Disable (never delete) a workflow: its runs and versions stay readable."""
        await self.writer.run(_tx_disable(workflow_id))
        return await self.get(workflow_id)

    async def enable(self, workflow_id: str) -> dict[str, Any]:
        """Make a disabled workflow startable again (the list's Disable is DELETE)."""
        await self.writer.run(_tx_set_status(workflow_id, "active"))
        return await self.get(workflow_id)

    async def sync_status(self, workflow_id: str) -> dict[str, Any]:
        """The file against the database: `in_sync`, `file_changed`, `file_removed`, or `not_file_synced`."""
        head = await ds.read_definition(self.readers, workflow_id)
        if head is None:
            raise not_found("workflow", workflow_id)
        files = await ds.read_file_sources(self.readers, workflow_id)
        found = await self.offloader.run(file_states, [(head, files[0] if files else None)])
        return found.get(workflow_id) or {"workflowId": workflow_id, "state": "not_file_synced", "sourceFile": None,
                                          "environment": None, "storedVersion": head["version"],
                                          "storedHash": head["content_hash"], "fileHash": None}

    async def sync_file(self, workflow_id: str) -> dict[str, Any]:
        """Register this one workflow's file now (what `station-wf sync` does for every file): a new version
        when it changed, disabled when it is gone; a file that does not load is refused (422) and the
        stored version keeps serving."""
        status = await self.sync_status(workflow_id)
        if status["state"] == "not_file_synced":
            raise ServiceError(409, "conflict", f"workflow {workflow_id!r} was not synced from a file", {"id": workflow_id})
        if status["state"] == "file_removed":
            await self.writer.run(_tx_set_status(workflow_id, "disabled"))
            result = "disabled"
        else:
            defn, raw = await self.offloader.run(load_workflow_file, Path(status["sourceFile"]), workflow_id, self.agents)
            reg = await self.writer.run(_tx_register_file(defn, raw, status["sourceFile"], status["environment"]))
            result = "registered" if reg.created else "reactivated" if reg.reactivated else "unchanged"
        return {"result": result, "workflow": await self.get(workflow_id), "sync": await self.sync_status(workflow_id)}

    async def rollback(self, workflow_id: str, body: Any) -> dict[str, Any]:
        """A new version made from an old one (history is never rewritten); 409 when it is the latest's content."""
        version = body.get("version") if isinstance(body, dict) else None
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise invalid("the body must be {\"version\": N} with N a stored version (a positive integer)", {"version": version})
        old = await ds.read_definition(self.readers, workflow_id, version)
        if old is None:
            raise not_found("workflow", f"{workflow_id}@{version}")
        await self.offloader.run(require_known_agents, json.loads(old["definition"]), self.agents)
        made = await self.writer.run(_tx_rollback(workflow_id, version))
        return await self.get(workflow_id, made)

    async def _checked(self, body: Any, raw: str) -> dict[str, Any]:
        defn = await self.isolated.run(parse_api_body, body, raw)
        await self.offloader.run(require_known_agents, defn, self.agents)
        return defn


def sync_database(database: Path | str, environments_dir: Path, environment: str) -> SyncReport:
    """`station-wf sync`: register the environment's files into the database (an SQLite path or a Postgres
    URL) through a writer of its own (the CLI runs no daemon)."""
    apply = plan_sync(Path(environments_dir), environment)
    writer = Writer(database)
    writer.start()
    try:
        return writer.run_sync(apply)
    finally:
        writer.close()


def _tx_create(defn: dict[str, Any], raw: str, *, must_exist: bool):
    """POST (must not exist) or PUT (must exist): a new version from an API body."""
    def apply(conn: sqlite3.Connection) -> int:
        head = ds.latest_row(conn, defn["id"])
        if must_exist and head is None:
            raise not_found("workflow", defn["id"])
        if not must_exist and head is not None:
            raise ServiceError(409, "conflict", f"workflow {defn['id']!r} exists; PUT /api/v1/workflows/{defn['id']} makes a new version",
                               {"id": defn["id"], "version": head["version"]})
        _refuse_recursion(conn, defn)
        version = ds.register(conn, defn, raw, source="api").version
        sync_schedules(conn, defn["id"], defn)
        return version
    return apply


def _tx_disable(workflow_id: str):
    return _tx_set_status(workflow_id, "disabled")


def _tx_set_status(workflow_id: str, status: str):
    def apply(conn: sqlite3.Connection) -> None:
        head = ds.latest_row(conn, workflow_id)
        if head is None:
            raise not_found("workflow", workflow_id)
        if status == "active" and head["status"] != "active":  # back in the graph of starters: a cycle now?
            _refuse_recursion(conn, json.loads(head["definition"]))
        ds.set_status(conn, workflow_id, status)
    return apply


# -- issue 17: the file's sync status, syncing one file, rollback ------------------------------------
def file_states(pairs: list[tuple[sqlite3.Row, sqlite3.Row | None]]) -> dict[str, dict[str, Any]]:
    """For each (latest version, newest file-synced version) pair with a file: the file on disk against
    the latest stored version, by content hash (reads files: run it off the event loop)."""
    out: dict[str, dict[str, Any]] = {}
    for head, source in pairs:
        if source is None:
            continue
        path = Path(source["source_file"])
        try:
            file_hash: str | None = ds.content_hash(path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            file_hash = None
        except (OSError, UnicodeDecodeError):
            file_hash = "unreadable"
        state = "file_removed" if file_hash is None else "in_sync" if file_hash == head["content_hash"] else "file_changed"
        out[head["workflow_id"]] = {
            "workflowId": head["workflow_id"], "state": state, "sourceFile": source["source_file"],
            "environment": source["environment"], "storedVersion": head["version"],
            "storedHash": head["content_hash"], "fileHash": file_hash,
        }
    return out


def load_workflow_file(path: Path, workflow_id: str, agents: AgentCatalog | None) -> tuple[dict[str, Any], str]:
    """One workflow file checked as `plan_sync` checks it (422 with the problems when it does not load)."""
    try:
        raw = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServiceError(422, "invalid_definition", f"cannot read {path}: {exc}") from None
    try:
        defn = parse_definition(raw, source=str(path))
    except DefinitionError as exc:
        raise ServiceError(422, "invalid_definition", f"{path} does not load; the stored version keeps serving",
                           [str(p) for p in exc.problems]) from None
    if defn["id"] != workflow_id:
        raise ServiceError(422, "invalid_definition", f"{path} now defines workflow {defn['id']!r}, not {workflow_id!r}",
                           {"id": defn["id"]})
    if agents is None or agents.directory.parent != path.parent.parent:
        agents = AgentCatalog(path.parent.parent.parent, path.parent.parent.name)
    agents.reload()
    errors, _ = check_definition_agents(defn, agents)
    problems = [p for p in (value_problem(defn, "definition"),) if p] + schema_problems(defn.get("inputSchema")) + errors
    if problems:
        raise ServiceError(422, "invalid_definition", f"{path} is invalid; the stored version keeps serving", problems)
    return defn, raw


def _tx_register_file(defn: dict[str, Any], raw: str, file: str, environment: str | None):
    def apply(conn: sqlite3.Connection) -> ds.Registered:
        _refuse_recursion(conn, defn)
        reg = ds.register(conn, defn, raw, source="file", source_file=file, environment=environment)
        sync_schedules(conn, defn["id"], defn)
        return reg
    return apply


def _tx_rollback(workflow_id: str, version: int):
    def apply(conn: sqlite3.Connection) -> int:
        old = ds.version_row(conn, workflow_id, version)
        head = ds.latest_row(conn, workflow_id)
        if old is None or head is None:
            raise not_found("workflow", f"{workflow_id}@{version}")
        if old["content_hash"] == head["content_hash"]:
            raise ServiceError(409, "conflict", f"version {version} has the content of the latest version {head['version']}: nothing to roll back",
                               {"id": workflow_id, "version": version, "latest": head["version"]})
        defn = json.loads(old["definition"])
        if head["status"] == "active":
            _refuse_recursion(conn, defn)
        made = ds.register(conn, defn, old["raw"], source="api").version
        if head["status"] != "active":  # a rollback changes the content, not whether it may start
            ds.set_status(conn, workflow_id, head["status"])
        sync_schedules(conn, workflow_id, defn)
        return made
    return apply
