"""`station-wf`: serve, sync, validate, migrate-store, completion; the REST client commands (run, runs,
approvals, workflows, schedules) live in cli_remote.py, what they print in cli_output.py."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from station_wf.cli_agents import add_agents_commands
from station_wf.cli_api import CliError
from station_wf.cli_bundles import add_bundle_commands
from station_wf.cli_remote import add_remote_commands
from station_wf.config import Settings, add_settings_flags, settings_from_args


# -- local commands ---------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from station_wf.api.auth import TokenTableError
    from station_wf.daemon import DataDirLocked, serve
    from station_wf.governance.policies import PolicyFileError
    from station_wf.telemetry.logs import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_level.upper(), settings.log_format)
    try:
        run_event_loop(serve(settings), settings.event_loop)
    except (DataDirLocked, TokenTableError, PolicyFileError) as exc:
        raise CliError(str(exc)) from None
    return 0


def run_event_loop(main: Any, kind: str) -> None:
    """Run the daemon on uvloop (libuv: cheaper socket writes, callbacks and cross-thread wake-ups,
    measured in issue 14) or, with STATION_EVENT_LOOP=asyncio, on the standard loop."""
    if kind == "asyncio":
        asyncio.run(main)
        return
    if kind != "uvloop":
        raise CliError(f"STATION_EVENT_LOOP must be uvloop or asyncio, got {kind!r}")
    import uvloop

    uvloop.run(main)


def cmd_validate(args: argparse.Namespace) -> int:
    from station_wf.dsl.loader import load_definition_file
    from station_wf.dsl.problems import DefinitionError

    failed = 0
    for file in args.files:
        try:
            defn = load_definition_file(file)
        except DefinitionError as exc:
            failed += 1
            print(str(exc), file=sys.stderr)
        except OSError as exc:
            failed += 1
            print(f"{file}: {exc.strerror}", file=sys.stderr)
        else:
            errors, warnings = agent_problems(Path(file), defn)
            for warning in warnings:
                print(f"{file}: warning: {warning}", file=sys.stderr)
            if errors:
                failed += 1
                for err in errors:
                    print(f"{file}: {err}", file=sys.stderr)
                continue
            for warning in getattr(defn, "warnings", ()):
                print(str(warning), file=sys.stderr)
            dialect = f"; dialect {defn.dialect}: {defn.dialect_reason}" if hasattr(defn, "dialect") else ""
            print(f"{file}: ok ({defn['id']}, {len(defn['states'])} states){dialect}")
    return 1 if failed else 0


def agent_problems(file: Path, defn: dict) -> tuple[list[str], list[str]]:
    """For a file inside environments/<env>/workflows/, check its agents against environments/<env>/agents/."""
    from station_wf.agents.catalog import AgentCatalog
    from station_wf.agents.flow_check import check_definition_agents

    env_dir = file.resolve().parent.parent
    if file.resolve().parent.name != "workflows" or not (env_dir / "agents").is_dir():
        return [], []
    return check_definition_agents(defn, AgentCatalog(env_dir.parent, env_dir.name))


def cmd_sync(args: argparse.Namespace) -> int:
    from station_wf.services.definitions import sync_database

    settings = settings_from_args(args)
    report = sync_database(settings.database_target, Path(settings.environments_dir), args.env or settings.environment)
    for item in report.registered:
        print(f"registered {item['workflowId']} v{item['version']} ({item['file']})")
    for wf in report.unchanged:
        print(f"unchanged  {wf}")
    for wf in report.disabled:
        print(f"disabled   {wf} (file removed)")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for err in report.errors:
        print(err, file=sys.stderr)
    return 1 if report.errors else 0


def cmd_migrate_store(args: argparse.Namespace) -> int:
    """Copy a stopped daemon's SQLite database into an empty Postgres one (logic: store/migrate_store.py)."""
    from station_wf.daemon import DataDirLock, DataDirLocked
    from station_wf.store.migrate_store import MigrateStoreError, migrate

    source = Path(args.source)
    if args.to.split(":", 1)[0] not in ("postgres", "postgresql"):
        raise CliError(f"--to must be a postgresql:// URL, got {args.to.split(':', 1)[0]}:...")
    if not source.is_file():
        raise CliError(f"no SQLite database at {source}")
    lock = DataDirLock(Path(args.data_dir) if args.data_dir else source.parent)
    try:
        lock.acquire()  # held while copying: no daemon may start on the file meanwhile
    except DataDirLocked as exc:
        raise CliError(f"{exc}: stop it first (migrate-store copies a stopped daemon's database)") from None
    try:
        copied = migrate(source, args.to)
    except MigrateStoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        lock.release()
    if copied.migrations_applied:
        print(f"target migrated: {', '.join(copied.migrations_applied)}")
    width = max(map(len, copied.rows), default=0)
    for table, count in copied.rows.items():
        print(f"{table:<{width}}  {count:>10,} rows")
    print(f"copied {sum(copied.rows.values()):,} rows in {len(copied.rows)} tables in one transaction;"
          f" identity sequences reset past the copied ids")
    return 0


def cmd_demo_agent(args: argparse.Namespace) -> int:
    from station_wf.demo_agent import serve

    print(f"demo agent on http://{args.host}:{args.port}/agents/greeter", flush=True)
    serve(args.host, args.port)
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    """A static script generated from the parser itself (shtab): it cannot drift from the commands, and
    pressing TAB starts no Python process."""
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="station-wf", description="Durable workflow orchestrator daemon.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon (API, worker, embedded NATS)")
    add_settings_flags(serve)
    serve.set_defaults(func=cmd_serve)

    sync = sub.add_parser("sync", help="register environments/<env>/workflows/* as new versions")
    add_settings_flags(sync)
    sync.add_argument("--env", help="environment to sync (default: STATION_ENVIRONMENT or 'default')")
    sync.set_defaults(func=cmd_sync)

    validate = sub.add_parser("validate", help="check workflow files without storing them")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=cmd_validate)

    migrate_store = sub.add_parser("migrate-store", help="copy a stopped daemon's SQLite database into an empty Postgres database")
    migrate_store.add_argument("--from", dest="source", required=True, metavar="PATH.sqlite", help="the SQLite file")
    migrate_store.add_argument("--to", required=True, metavar="postgresql://...", help="the empty target database")
    migrate_store.add_argument("--data-dir", help="the source daemon's data directory, whose lock is checked (default: the file's directory)")
    migrate_store.set_defaults(func=cmd_migrate_store)

    add_remote_commands(sub)
    add_agents_commands(sub)
    add_bundle_commands(sub)  # issue 19: bundle create|install|list, webhooks

    completion = sub.add_parser("completion", help="print a shell completion script (bash, zsh or tcsh)",
                                description="e.g. `station-wf completion bash > /etc/bash_completion.d/station-wf` or, "
                                            "in ~/.bashrc, `eval \"$(station-wf completion bash)\"`")
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    completion.set_defaults(func=cmd_completion)

    demo = sub.add_parser("demo-agent", help="serve the example environment's HTTP agent (greeter)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8588)
    demo.set_defaults(func=cmd_demo_agent)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"station-wf: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # bad settings
        print(f"station-wf: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `station-wf runs list | head`: the reader left, nothing to say
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Settings", "main"]
