"""The daemon's governance settings, copied in once at start-up (`configure`), like `core.limits`:
the store-side hooks (start, run end, step begin) read them without a handle to the daemon."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from station_wf.governance.rates import Rate, parse_rate


@dataclass
class Governance:
    max_concurrent_runs: int = 0
    run_rate: Rate | None = None
    signal_rate: Rate | None = None
    agent_limit: Callable[[str], int | None] = lambda name: None
    """An agent's `maxConcurrency` from its file (the daemon plugs in the catalog); None: no limit."""


GOVERNANCE = Governance()


def configure(settings: Any, agent_limit: Callable[[str], int | None] | None = None) -> None:
    GOVERNANCE.max_concurrent_runs = max(0, int(getattr(settings, "max_concurrent_runs", 0)))
    GOVERNANCE.run_rate = parse_rate(getattr(settings, "run_rate_limit", ""), "STATION_RUN_RATE_LIMIT")
    GOVERNANCE.signal_rate = parse_rate(getattr(settings, "signal_rate_limit", ""), "STATION_SIGNAL_RATE_LIMIT")
    if agent_limit is not None:
        GOVERNANCE.agent_limit = agent_limit
