"""Who is calling: bearer tokens mapped to principals and groups, compared in constant time.

With no tokens configured the API is loopback-only (enforced at start-up) and a caller may name
itself with `X-Station-Principal` (default `anonymous`), so approver lists still mean something in
development. Tokens are never logged.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Principal:
    name: str
    groups: tuple[str, ...] = field(default_factory=tuple)


class TokenTableError(ValueError):
    pass


class TokenTable:
    def __init__(self, tokens: dict[str, Principal]) -> None:
        self._tokens = [(token.encode(), principal) for token, principal in tokens.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    @classmethod
    def load(cls, api_token: str | None, tokens_file: str | None) -> TokenTable:
        tokens: dict[str, Principal] = {}
        if api_token:
            tokens[api_token] = Principal("admin", ("admin",))
        if tokens_file:
            try:
                raw = json.loads(Path(tokens_file).read_text())
            except (OSError, ValueError) as exc:
                raise TokenTableError(f"STATION_API_TOKENS_FILE {tokens_file}: {exc}") from None
            if not isinstance(raw, dict):
                raise TokenTableError(f"STATION_API_TOKENS_FILE {tokens_file}: must be an object of token -> principal")
            for index, (token, entry) in enumerate(raw.items()):
                if not isinstance(entry, dict) or not isinstance(entry.get("principal"), str) or len(token) < 16:
                    raise TokenTableError(f"STATION_API_TOKENS_FILE {tokens_file}: entry {index} needs a token of 16+ characters"
                                          " and a string 'principal'")
                tokens[token] = Principal(entry["principal"], tuple(str(g) for g in entry.get("groups") or ()))
        return cls(tokens)

    def authenticate(self, authorization: str | None) -> Principal | None:
        """Compare against every token (no early exit), so timing does not tell which prefix matched."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        supplied = authorization[len("Bearer "):].strip().encode()
        found = None
        for token, principal in self._tokens:
            if hmac.compare_digest(supplied, token):
                found = principal
        return found


def may_decide(principal: Principal, approvers: list[str]) -> bool:
    """`user:<name>`, `team:<group>`, or a bare name (Station's files write `["admin"]`); empty = anyone."""
    if not approvers:
        return True
    for entry in approvers:
        kind, _, value = entry.partition(":") if ":" in entry else ("user", "", entry)
        if kind == "user" and value == principal.name:
            return True
        if kind == "team" and value in principal.groups:
            return True
    return False
