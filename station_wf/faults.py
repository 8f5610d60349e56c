"""Test-only fault points, unset in production (a dict lookup each).

`STATION_FAULTS=name:N[,name:N]`: the N-th hit of `name` exits at once (crash tests kill the daemon at
an exact moment, between a SQLite commit and the JetStream publish for instance, instead of hoping a
`kill -9` lands there).

`STATION_FAULT_ERRORS=name:N[:M][,...]`: from the N-th hit of `name` on, the next M hits (default: all)
raise instead, so tests can watch a loop survive its own errors (a failing commit, a poisonous timer).
"""

from __future__ import annotations

import os
import sys

_ARMED: dict[str, int] = {}
for _item in filter(None, os.environ.get("STATION_FAULTS", "").split(",")):
    _name, _, _count = _item.partition(":")
    _ARMED[_name.strip()] = int(_count or 1)

_ERRORS: dict[str, list[int]] = {}  # name -> [hits to skip, hits that raise (-1: forever)]
for _item in filter(None, os.environ.get("STATION_FAULT_ERRORS", "").split(",")):
    _parts = _item.split(":")
    _ERRORS[_parts[0].strip()] = [int(_parts[1]) - 1 if len(_parts) > 1 else 0, int(_parts[2]) if len(_parts) > 2 else -1]


def crash_point(name: str) -> None:
    """Exit the process with code 137 (as a kill -9 would) on the armed hit of `name`."""
    if name not in _ARMED:
        return
    _ARMED[name] -= 1
    if _ARMED[name] <= 0:
        sys.stderr.write(f"station-wf: fault injected at {name}: exiting\n")
        sys.stderr.flush()
        os._exit(137)


def fault_error(name: str) -> bool:
    """True when this hit of `name` must raise (the caller raises the error that fits the place)."""
    state = _ERRORS.get(name)
    if state is None:
        return False
    if state[0] > 0:
        state[0] -= 1
        return False
    if state[1] == 0:
        return False
    if state[1] > 0:
        state[1] -= 1
    return True
