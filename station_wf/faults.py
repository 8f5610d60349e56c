"""Test-only crash points, armed by `STATION_FAULTS=name:N[,name:N]`: the N-th hit of `name` exits at once.

They let crash tests kill the daemon at an exact moment (between a SQLite commit and the JetStream
publish, for instance) instead of hoping a `kill -9` lands there. Unset in production: a dict lookup.
"""

from __future__ import annotations

import os
import sys

_ARMED: dict[str, int] = {}
for _item in filter(None, os.environ.get("STATION_FAULTS", "").split(",")):
    _name, _, _count = _item.partition(":")
    _ARMED[_name.strip()] = int(_count or 1)


def crash_point(name: str) -> None:
    """Exit the process with code 137 (as a kill -9 would) on the armed hit of `name`."""
    if name not in _ARMED:
        return
    _ARMED[name] -= 1
    if _ARMED[name] <= 0:
        sys.stderr.write(f"station-wf: fault injected at {name}: exiting\n")
        sys.stderr.flush()
        os._exit(137)
