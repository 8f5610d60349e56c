"""Who acts, and who may decide an approval: domain ideas the services and the engine's audit trail
use, whatever door (bearer token, loopback header, CLI) the caller came through. `api/auth.py` maps
tokens to principals; this module imports nothing of the project.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Principal:
    name: str
    groups: tuple[str, ...] = field(default_factory=tuple)
    roles: tuple[str, ...] = field(default_factory=tuple)
    """What the principal may do (`governance/roles.py`: viewer, operator, author, admin); approver
    lists still match on name and groups only, whatever the roles."""


def may_decide(principal: Principal, approvers: object) -> bool:
    """`user:<name>`, `team:<group>`, or a bare name (Station's files write `["admin"]`); empty = anyone.

    Stored lists may predate the loader's checks: a bare string is one entry (never a list of its
    characters), anything that is not a string matches nobody, and a non-list matches nobody."""
    if isinstance(approvers, str):
        approvers = [approvers]
    if not isinstance(approvers, list | tuple):
        return False
    if not approvers:
        return True
    for entry in approvers:
        if not isinstance(entry, str) or not entry.strip():
            continue
        kind, _, value = entry.partition(":") if ":" in entry else ("user", "", entry)
        if kind == "user" and value == principal.name:
            return True
        if kind == "team" and value in principal.groups:
            return True
    return False
