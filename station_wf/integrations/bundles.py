"""Bundles (PRD §6.4): a folder (or its .tar.gz) of `template.json`, `agents/*.prompt`,
`mcp-servers/*.json`, `workflows/*.workflow.yaml|yml|json` and `variables.yml`, installed into an
environment — Station's own bundle layout (`cloudshipai/station` `bundles/`) as it is.

Install checks everything first with the loaders sync uses (`services/definitions.check_workflow_file`:
the DSL loader and checker, storable values, input schemas, the agents each workflow names and the
flow checks, against the environment's agents plus the bundle's, staged in a scratch directory), and
refuses to overwrite a file that is not the bundle's own. Only when all of it is valid are the files
written (each by rename), then the environment is synced and the bundle recorded in ONE transaction,
so the bundle row lists exactly the workflow versions it registered. A re-install of the same bundle
changes nothing (same files: sync finds every workflow unchanged); an upgrade removes the files the
old version had and the new one has not (sync then disables their workflows; history stays).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from station_wf.agents.catalog import AGENT_SUFFIX, AgentCatalog
from station_wf.dsl.spec import WORKFLOW_FILE_SUFFIXES
from station_wf.services.definitions import (
    SyncReport,
    _guess_id,
    check_workflow_file,
    plan_sync,
    workflow_files,
)
from station_wf.store import bundles as store
from station_wf.store.db import Readers, Writer

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
MAX_FILES = 2000
MAX_FILE_BYTES = 1 << 20
MAX_TOTAL_BYTES = 64 << 20
VARIABLE_FILES = ("variables.yml", "variables.yaml")
SECTIONS = {"agents": (AGENT_SUFFIX,), "mcp-servers": (".json",), "workflows": WORKFLOW_FILE_SUFFIXES}


class BundleError(Exception):
    """The bundle cannot be installed; `problems` are `FILE[:LINE]: message` lines, all of them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Bundle:
    root: Path
    name: str
    version: str
    description: str | None
    manifest: dict[str, Any]
    files: dict[str, bytes]                     # "agents/x.prompt" -> content (what install writes)
    variables: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for rel in sorted(self.files):
            digest.update(rel.encode() + b"\0" + hashlib.sha256(self.files[rel]).digest())
        digest.update(json.dumps(self.variables, sort_keys=True, default=str).encode())
        return "sha256:" + digest.hexdigest()

    def section(self, name: str) -> list[str]:
        return sorted(rel for rel in self.files if rel.startswith(name + "/"))


# -- reading -------------------------------------------------------------------------------------
def unpack(src: Path, into: Path) -> Path:
    """A bundle folder as it is, or a .tar.gz unpacked into `into` with only regular files and
    folders, no path outside it, and bounded sizes. The folder holding template.json is the root."""
    if src.is_dir():
        return src
    if not src.is_file():
        raise BundleError([f"{src}: no such bundle file or folder"])
    try:
        with tarfile.open(src, "r:*") as tar:
            members, total = tar.getmembers(), 0
            if len(members) > MAX_FILES:
                raise BundleError([f"{src}: more than {MAX_FILES} entries"])
            for m in members:
                total += m.size
                if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise BundleError([f"{src}: {m.name}: only plain files and folders inside the bundle are allowed"])
                if m.size > MAX_FILE_BYTES or total > MAX_TOTAL_BYTES:
                    raise BundleError([f"{src}: {m.name}: over the size limit ({MAX_FILE_BYTES} bytes a file)"])
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError([f"{src}: not a readable .tar.gz bundle: {exc}"]) from None
    if (into / "template.json").is_file():
        return into
    tops = [p for p in into.iterdir() if p.is_dir() and (p / "template.json").is_file()]
    if len(tops) == 1:
        return tops[0]
    raise BundleError([f"{src}: no template.json at the top of the archive"])


def read_bundle(root: Path) -> Bundle:
    """Read the layout; every problem of the manifest and variables is collected, not just the first."""
    problems: list[str] = []
    manifest: dict[str, Any] = {}
    template = root / "template.json"
    try:
        manifest = json.loads(template.read_text())
        if not isinstance(manifest, dict):
            problems.append(f"{template}: must be a JSON object")
            manifest = {}
    except FileNotFoundError:
        problems.append(f"{template}: missing (a bundle needs template.json with its name)")
    except (OSError, ValueError) as exc:
        problems.append(f"{template}: {exc}")
    name = manifest.get("name")
    if manifest and (not isinstance(name, str) or not _NAME.match(name)):
        problems.append(f"{template}: name: required, 1-100 of [A-Za-z0-9_.-] (got {name!r})")
    version = manifest.get("version", "0.0.0")
    if not isinstance(version, (str, int, float)) or isinstance(version, bool):
        problems.append(f"{template}: version: must be a string")
    servers = manifest.get("mcpServers", {})
    if not isinstance(servers, dict) or not all(isinstance(v, dict) for v in servers.values()):
        problems.append(f"{template}: mcpServers: must map server names to objects")
    variables: dict[str, Any] = {}
    for vname in VARIABLE_FILES:
        path = root / vname
        if path.is_file():
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                problems.append(f"{path}: {exc}")
                continue
            if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
                problems.append(f"{path}: must be a mapping of variable names to values")
                continue
            variables.update(loaded)
    files: dict[str, bytes] = {}
    ignored: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        top, _, rest = rel.partition("/")
        if rel == "template.json" or rel in VARIABLE_FILES:
            continue
        if top in SECTIONS and "/" not in rest and rest.endswith(SECTIONS[top]):
            if path.stat().st_size > MAX_FILE_BYTES:
                problems.append(f"{path}: over {MAX_FILE_BYTES} bytes")
                continue
            files[rel] = path.read_bytes()
        else:
            ignored.append(rel)
    for rel in (r for r in files if r.startswith("mcp-servers/")):
        try:
            if not isinstance(json.loads(files[rel]), dict):
                problems.append(f"{root / rel}: must be a JSON object")
        except ValueError as exc:
            problems.append(f"{root / rel}: {exc}")
    if problems:
        raise BundleError(problems)
    if servers:  # Station's inline servers become the environment's mcp-servers/<bundle>.json
        files.setdefault(f"mcp-servers/{name}.json", json.dumps({"mcpServers": servers}, indent=2).encode())
    return Bundle(root, name, str(version), manifest.get("description"), manifest, files, variables, ignored)


# -- checking ------------------------------------------------------------------------------------
def check(bundle: Bundle, environments_dir: Path, environment: str, owned: set[str]) -> list[str]:
    """Every reason the bundle cannot go into the environment (empty: it can). `owned`: the files a
    previous install of this bundle wrote (it may overwrite those)."""
    problems: list[str] = []
    env_dir = environments_dir / environment
    for rel, content in bundle.files.items():
        target = env_dir / rel
        if target.is_file() and rel not in owned and target.read_bytes() != content:
            problems.append(f"{bundle.root / rel}: would overwrite {target}, which is not this bundle's")
    with tempfile.TemporaryDirectory(prefix="bundle-check-") as scratch:
        staged = Path(scratch) / environment / "agents"
        staged.mkdir(parents=True)
        if (env_dir / "agents").is_dir():
            for agent in (env_dir / "agents").glob("*" + AGENT_SUFFIX):
                shutil.copy2(agent, staged / agent.name)
        for rel in bundle.section("agents"):
            (staged / Path(rel).name).write_bytes(bundle.files[rel])
        catalog = AgentCatalog(Path(scratch), environment)
        catalog.reload()
        mine = {Path(rel).name.removesuffix(AGENT_SUFFIX) for rel in bundle.section("agents")}
        for stem, why in catalog.broken.items():
            if stem in mine:
                problems.append(why.replace(str(staged), str(bundle.root / "agents")))
        others = {_guess_id(p.read_text()): p for p in workflow_files(environments_dir, environment)
                  if p.relative_to(env_dir).as_posix() not in bundle.files}
        seen: dict[str, str] = {}
        for rel in bundle.section("workflows"):
            checked = check_workflow_file(bundle.root / rel, bundle.files[rel].decode("utf-8", "replace"), catalog)
            problems.extend(checked.errors)
            wf_id = checked.workflow_id
            if wf_id and wf_id in seen:
                problems.append(f"{bundle.root / rel}: workflow id {wf_id!r} is also defined in {seen[wf_id]}")
            elif wf_id and wf_id in others:
                problems.append(f"{bundle.root / rel}: workflow id {wf_id!r} is already defined by {others[wf_id]}")
            if wf_id:
                seen[wf_id] = str(bundle.root / rel)
    return problems


# -- installing ----------------------------------------------------------------------------------
@dataclass
class Installed:
    bundle: Bundle
    environment: str
    report: SyncReport
    workflows: list[dict[str, Any]]
    written: list[str]
    removed: list[str]


def _owned(row: Any) -> set[str]:
    if row is None:
        return set()
    files = {w["file"] for w in json.loads(row["workflows"]) if w.get("file")}
    return files | set(json.loads(row["agents"])) | set(json.loads(row["mcp_servers"]))


def _write(target: Path, content: bytes) -> bool:
    """Write by rename (a reader never sees half a file); False when it already holds `content`."""
    if target.is_file() and target.read_bytes() == content:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.bundle-tmp")
    tmp.write_bytes(content)
    os.replace(tmp, target)
    return True


def _merge_variables(env_dir: Path, variables: dict[str, Any]) -> bool:
    """The bundle's variables join the environment's `variables.yml`; a value already set there wins."""
    if not variables:
        return False
    path = env_dir / "variables.yml"
    current = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    merged = {**variables, **current}
    if merged == current:
        return False
    return _write(path, yaml.safe_dump(merged, sort_keys=True).encode())


def install(src: Path, environments_dir: Path, environment: str, database: Path | str) -> Installed:
    """`station-wf bundle install`: check all, then write files, sync and record (see the module doc)."""
    with tempfile.TemporaryDirectory(prefix="bundle-") as work:
        bundle = read_bundle(unpack(src, Path(work)))
        writer = Writer(database)
        writer.start()
        try:
            previous = writer.run_sync(lambda c: store.get(c, bundle.name, environment))
            owned = _owned(previous)
            problems = check(bundle, environments_dir, environment, owned)
            if problems:
                raise BundleError(problems)
            env_dir = environments_dir / environment
            written = [rel for rel, content in sorted(bundle.files.items()) if _write(env_dir / rel, content)]
            if _merge_variables(env_dir, bundle.variables):
                written.append("variables.yml")
            removed = []
            for rel in sorted(owned - set(bundle.files)):
                if (env_dir / rel).is_file():
                    (env_dir / rel).unlink()
                    removed.append(rel)
            apply = plan_sync(environments_dir, environment)
            ids = {rel: _guess_id(bundle.files[rel].decode("utf-8", "replace")) for rel in bundle.section("workflows")}

            def tx(conn: Any) -> tuple[SyncReport, list[dict[str, Any]]]:
                report = apply(conn)
                workflows = [{"id": wf, "version": store.latest_version(conn, wf), "file": rel}
                             for rel, wf in sorted(ids.items()) if wf]
                store.record(conn, bundle.name, environment, bundle.version, bundle.content_hash, bundle.description,
                             workflows, bundle.section("agents"), bundle.section("mcp-servers"))
                return report, workflows

            report, workflows = writer.run_sync(tx)
        finally:
            writer.close()
    return Installed(bundle, environment, report, workflows, written, removed)


def create(src: Path, out: Path) -> Bundle:
    """`station-wf bundle create`: the folder read and checked on its own (agents it does not carry
    must exist where it is installed), then written as a reproducible .tar.gz of what install reads."""
    bundle = read_bundle(src)
    with tempfile.TemporaryDirectory(prefix="bundle-create-") as scratch:
        problems = [p for p in check(bundle, Path(scratch), "bundle", set()) if "not found in" not in p]
    if problems:
        raise BundleError(problems)
    members = {"template.json": (src / "template.json").read_bytes()}
    for vname in VARIABLE_FILES:
        if (src / vname).is_file():
            members[vname] = (src / vname).read_bytes()
    members.update({rel: (src / rel).read_bytes() for rel in bundle.files if (src / rel).is_file()})
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(members):
            info = tarfile.TarInfo(rel)
            info.size, info.mtime, info.mode = len(members[rel]), 0, 0o644
            tar.addfile(info, io.BytesIO(members[rel]))
    return bundle


def bundle_to_api(row: Any) -> dict[str, Any]:
    return {"name": row["name"], "environment": row["environment"], "version": row["version"],
            "contentHash": row["content_hash"], "description": row["description"],
            "workflows": [{"id": w["id"], "version": w["version"]} for w in json.loads(row["workflows"])],
            "agents": [Path(a).name.removesuffix(AGENT_SUFFIX) for a in json.loads(row["agents"])],
            "mcpServers": [Path(m).name for m in json.loads(row["mcp_servers"])],
            "installedAt": row["installed_at"], "updatedAt": row["updated_at"]}


class BundleService:
    """What the API reads: the installed bundles (installing is the CLI's, like sync)."""

    def __init__(self, readers: Readers) -> None:
        self.readers = readers

    async def list(self, workflow_id: str | None = None) -> list[dict[str, Any]]:
        bundles = [bundle_to_api(r) for r in await store.list_bundles(self.readers)]
        if workflow_id is not None:
            bundles = [b for b in bundles if any(w["id"] == workflow_id for w in b["workflows"])]
        return bundles
