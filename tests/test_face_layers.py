"""The face's walls, checked on the source: handlers reach the system only through services, services
know no HTTP, and no SQL is written outside `store/`. Pure (no daemon, no server)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "station_wf"
API = sorted((PACKAGE / "api").glob("*.py"))
SERVICES = sorted((PACKAGE / "services").glob("*.py"))
CLI = [PACKAGE / "cli.py", PACKAGE / "cli_agents.py"]
SQL = re.compile(r"^\s*(SELECT\s.*\sFROM\s|INSERT\s+(OR\s+\w+\s+)?INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s)", re.DOTALL)


def imported(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def sql_literals(path: Path) -> list[str]:
    return [node.value[:60] for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value)]


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def test_the_scan_sees_what_it_looks_for(tmp_path: Path) -> None:
    """The checks below would catch a violation (so their passing means something)."""
    probe = tmp_path / "probe.py"
    probe.write_text('from station_wf.store import runs\ndef f():\n    import station_wf.engine.control\n'
                     'Q = """ SELECT * FROM t"""\n')
    assert {"station_wf.store", "station_wf.engine.control"} <= imported(probe)
    assert sql_literals(probe) == [' SELECT * FROM t']


@pytest.mark.parametrize("path", API, ids=_rel)
def test_api_reaches_neither_store_nor_engine(path: Path) -> None:
    wrong = sorted(m for m in imported(path) if m.startswith(("station_wf.store", "station_wf.engine")))
    assert wrong == [], f"{_rel(path)} imports {wrong}: go through a service"


@pytest.mark.parametrize("path", SERVICES, ids=_rel)
def test_services_know_no_http(path: Path) -> None:
    wrong = sorted(m for m in imported(path) if m.startswith(("station_wf.api", "starlette", "sse_starlette")))
    assert wrong == [], f"{_rel(path)} imports {wrong}"


@pytest.mark.parametrize("path", API + SERVICES + CLI, ids=_rel)
def test_no_sql_outside_the_store(path: Path) -> None:
    assert sql_literals(path) == [], f"{_rel(path)} holds SQL: put it behind a function in station_wf/store/"


@pytest.mark.parametrize("path", API, ids=_rel)
def test_api_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= 400, f"{_rel(path)} has {lines} lines: split it by resource"
