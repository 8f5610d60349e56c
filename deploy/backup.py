"""Online backup of the station-wf SQLite database, safe while the daemon runs.

Usage (inside the container, the script is at /app/backup.py):
    python /app/backup.py /data/backups/station-wf-$(date +%Y%m%dT%H%M%S).db
    python /app/backup.py --source /data/station-wf.db DEST

Why not `cp`: the database runs in WAL mode, so recent commits live in station-wf.db-wal until a
checkpoint; copying the main file alone loses them, and copying both while the writer works can
produce a torn, inconsistent pair. SQLite's online backup API (what `sqlite3 DB ".backup X"` uses)
copies a consistent snapshot page by page. The copy is written next to DEST, checked with
`PRAGMA integrity_check`, switched to rollback-journal mode (a single self-contained file), and
only then renamed into place, so DEST is either a complete good backup or absent.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

DEFAULT_SOURCE = Path(os.environ.get("STATION_DATA_DIR", "/data")) / "station-wf.db"


def backup(source: Path, dest: Path, pages_per_step: int = 1024) -> Path:
    """Copy `source` to `dest` through the online backup API; returns `dest`. Raises on any problem."""
    if not source.is_file():
        raise FileNotFoundError(f"no database at {source}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    # Read-only URI: a backup must never create or migrate the live database.
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(partial)
        try:
            # Small steps release the read lock between them, so the daemon's writer is not held up.
            src.backup(dst, pages=pages_per_step, sleep=0.005)
            dst.execute("PRAGMA journal_mode=DELETE")
            result = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if result != "ok":
                raise RuntimeError(f"integrity_check of the copy failed: {result}")
        finally:
            dst.close()
    finally:
        src.close()
    os.replace(partial, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Online backup of the station-wf SQLite database.")
    parser.add_argument("dest", type=Path, help="backup file to write (replaced atomically)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"database (default {DEFAULT_SOURCE})")
    args = parser.parse_args(argv)
    try:
        done = backup(args.source, args.dest)
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {args.source} to {done} ({done.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
