"""`station-wf agents list|show|run`: look at agent files and run one agent once, outside any workflow.

`run` goes through the same executor a workflow step uses (schemas, rendering, provider, metadata),
so what you debug here is what a run does. Needs no daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from station_wf.config import settings_from_env


def _fail(message: str) -> int:
    print(f"station-wf: {message}", file=sys.stderr)
    return 1


def _catalog(args: argparse.Namespace) -> Any:
    from station_wf.agents.catalog import AgentCatalog

    settings = settings_from_env()
    return AgentCatalog(Path(settings.environments_dir), args.env or settings.environment)


def cmd_agents_list(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    specs = catalog.all()
    from station_wf.cli_output import agents_table, emit, output_format

    doc = {"agents": [s.to_dict(template=False) for s in specs], "errors": catalog.errors}
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.output or output_format(args) == "table":  # a terminal: a table (colours where it takes them)
        emit(args, doc, lambda d: agents_table(d["agents"]))
    else:  # a pipe: one tab-separated line per agent, as before
        for spec in specs:
            target = spec.endpoint or spec.model
            print(f"{spec.name}\t{target}\t{spec.content_hash[:19]}\t{spec.source_file}")
    if not specs and not args.json:
        print(f"no agents in {catalog.directory}", file=sys.stderr)
    for err in catalog.errors:
        print(f"station-wf: {err}", file=sys.stderr)
    return 1 if catalog.errors else 0


def cmd_agents_show(args: argparse.Namespace) -> int:
    from station_wf.agents.catalog import AgentFileError

    try:
        spec, catalog = _catalog(args).resolve(args.name)
    except AgentFileError as exc:
        return _fail(str(exc))
    if spec is None:
        why = catalog.broken.get(args.name.partition("@")[0])
        return _fail(why or f"unknown agent {args.name!r} (looked in {catalog.directory})")
    print(json.dumps(spec.to_dict(), indent=2))
    return 0


def cmd_agents_run(args: argparse.Namespace) -> int:
    from station_wf.agents.executor import AgentRunExecutor
    from station_wf.executors.base import StepCall, StepError

    try:
        variables = json.loads(args.input) if args.input else {}
    except ValueError as exc:
        return _fail(f"--input is not JSON: {exc}")
    if not isinstance(variables, dict):
        return _fail("--input must be a JSON object (the agent's variables)")
    catalog = _catalog(args)
    run_id = f"cli-{uuid.uuid4().hex[:12]}"
    call = StepCall(
        run_id=run_id, step_id="agents-run", attempt=1, idempotency_key=f"{run_id}:agents-run:1",
        state_name="agents-run", action="agent.run",
        input={"agent": args.name, "task": args.task, "variables": variables},
        timeout_seconds=args.timeout,
    )

    async def go() -> Any:
        executor = AgentRunExecutor(catalog)
        try:
            return await asyncio.wait_for(executor.execute(call), args.timeout)
        finally:
            await executor.close()

    try:
        result = asyncio.run(go())
    except StepError as exc:
        return _fail(f"agent {args.name!r}: {exc.type}: {exc}")
    except TimeoutError:
        return _fail(f"agent {args.name!r}: timeout: no answer within {args.timeout}s")
    print(json.dumps({"output": result.output, "metadata": result.metadata}, indent=2, default=str))
    return 0


def add_agents_commands(subparsers: Any) -> None:
    """Add `agents list|show|run` to the CLI's subparsers (environment from STATION_* settings)."""
    agents = subparsers.add_parser("agents", help="list, show or run the environment's agents")
    sub = agents.add_subparsers(dest="agents_command", required=True)

    def env_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--env", help="environment (default: STATION_ENVIRONMENT or 'default')")

    ls = sub.add_parser("list", help="list agent files (name, model or endpoint, content hash, file)")
    env_flag(ls)
    ls.add_argument("--json", action="store_true", help="print JSON (the same as -o json)")
    ls.add_argument("-o", "--output", choices=("table", "json", "yaml"), help="table (default on a terminal), json or yaml")
    ls.set_defaults(func=cmd_agents_list)

    show = sub.add_parser("show", help="show one agent (schemas, config, template) as JSON")
    show.add_argument("name", help="name or name@env")
    env_flag(show)
    show.set_defaults(func=cmd_agents_show)

    run = sub.add_parser("run", help="run one agent once and print its output and metadata as JSON")
    run.add_argument("name", help="name or name@env")
    run.add_argument("--input", help="JSON object: the agent's variables (checked against its input schema)")
    run.add_argument("--task", help="the task (the user message)")
    run.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    env_flag(run)
    run.set_defaults(func=cmd_agents_run)
