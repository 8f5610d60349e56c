"""The MCP servers of one environment, read from its files as Station writes them.

`environments/<env>/template.json` `mcpServers` and every `environments/<env>/mcp-servers/*.json` (a
file holds either `{"mcpServers": {...}}` or one server, named by the file's stem). A server is
`{"command", "args", "env", "cwd"}` (stdio) or `{"url", "headers"}` (streamable HTTP; `"type": "http"`
or `"streamable-http"` may say so). `{{ .NAME }}` (Go template spelling, as in Station) or `{{NAME}}` in
any string is replaced by the environment's `variables.yml` value, else the daemon's environment
variable; a name found in neither is an error naming the file and the variable, never an empty string
handed to a server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_VAR = re.compile(r"\{\{\s*\.?([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MAX_FILE_BYTES = 1024 * 1024


class McpConfigError(ValueError):
    """A server definition that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class ServerSpec:
    """One server as configured; `fingerprint` changes when any of it does (the pool restarts it then)."""

    name: str
    source: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def transport(self) -> str:
        return "http" if self.url else "stdio"

    @property
    def fingerprint(self) -> str:
        raw = json.dumps([self.command, self.args, self.env, self.cwd, self.url, self.headers], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


def load_variables(env_dir: Path) -> dict[str, str]:
    path = env_dir / "variables.yml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise McpConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise McpConfigError(f"{path}: must be a mapping of NAME: value")
    return {str(k): "" if v is None else str(v) for k, v in data.items()}


def _substitute(value: Any, variables: dict[str, str], where: str) -> Any:
    if isinstance(value, str):
        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name in variables:
                return variables[name]
            if name in os.environ:
                return os.environ[name]
            raise McpConfigError(f"{where}: variable {name!r} is in neither variables.yml nor the daemon's environment")
        return _VAR.sub(one, value)
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, where) for k, v in value.items()}
    return value


def _str_map(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise McpConfigError(f"{where} must be an object of strings")
    return {str(k): str(v) for k, v in raw.items()}


def parse_server(name: str, raw: Any, source: str, env_dir: Path, variables: dict[str, str]) -> ServerSpec:
    where = f"{source}: mcpServers.{name}"
    if not _NAME.match(name):
        raise McpConfigError(f"{where}: a server name may contain only letters, digits, '_', '-', '.'")
    if not isinstance(raw, dict):
        raise McpConfigError(f"{where}: must be an object with 'command' or 'url'")
    raw = _substitute(raw, variables, where)
    command, url = raw.get("command"), raw.get("url")
    if (command is None) == (url is None):
        raise McpConfigError(f"{where}: needs exactly one of 'command' (stdio) or 'url' (streamable HTTP)")
    if command is not None:
        if not isinstance(command, str) or not command.strip():
            raise McpConfigError(f"{where}.command must be a non-empty string")
        args = raw.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str | int | float) for a in args):
            raise McpConfigError(f"{where}.args must be a list of strings")
        cwd = raw.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise McpConfigError(f"{where}.cwd must be a string")
        return ServerSpec(name, source, command=command, args=tuple(str(a) for a in args),
                          env=_str_map(raw.get("env"), f"{where}.env"),
                          cwd=str((env_dir / cwd).resolve()) if cwd else None)
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise McpConfigError(f"{where}.url must be an http(s) URL")
    kind = raw.get("type") or raw.get("transport")
    if kind not in (None, "http", "streamable-http", "streamableHttp"):
        raise McpConfigError(f"{where}.type {kind!r}: only streamable HTTP ('http') is served over a URL")
    return ServerSpec(name, source, url=url, headers=_str_map(raw.get("headers"), f"{where}.headers"))


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise McpConfigError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise McpConfigError(f"{path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise McpConfigError(f"{path}: line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def load_servers(env_dir: Path) -> dict[str, ServerSpec]:
    """Every server of the environment; a name defined twice is an error naming both files."""
    variables = load_variables(env_dir)
    found: dict[str, ServerSpec] = {}
    files: list[tuple[Path, bool]] = [(env_dir / "template.json", False)]
    server_dir = env_dir / "mcp-servers"
    if server_dir.is_dir():
        files += [(p, True) for p in sorted(server_dir.glob("*.json"))]
    for path, single_ok in files:
        if not path.is_file():
            continue
        data = _read_json(path)
        if not isinstance(data, dict):
            raise McpConfigError(f"{path}: must be a JSON object")
        if "mcpServers" in data:
            servers = data["mcpServers"]
            if not isinstance(servers, dict):
                raise McpConfigError(f"{path}: mcpServers must be an object of name: server")
        elif single_ok:
            servers = {path.stem: data}
        else:
            continue
        for name, raw in servers.items():
            spec = parse_server(str(name), raw, str(path), env_dir, variables)
            if spec.name in found:
                raise McpConfigError(f"{path}: MCP server {spec.name!r} is already defined in {found[spec.name].source}")
            found[spec.name] = spec
    return found
