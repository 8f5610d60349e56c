"""Who is calling: bearer tokens mapped to principals, groups and roles, compared in constant time.

With no tokens configured the API is loopback-only (enforced at start-up) and a caller may name
itself with `X-Station-Principal` (default `anonymous`), so approver lists still mean something in
development; that principal is `admin` (the API is loopback-only then). A tokens-file entry is
`{"principal": "bob", "groups": ["ops"], "roles": ["operator"]}`. Tokens are never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path

from station_wf.governance.roles import role_problem
from station_wf.principals import Principal

log = logging.getLogger(__name__)
LEGACY_ROLES = ("admin",)
"""A tokens-file entry written before roles existed keeps what it could do (everything), with a
warning at start-up: name its `roles` to narrow it."""

MIN_TOKEN_LENGTH = 16


class TokenTableError(ValueError):
    pass


def token_problem(token: object) -> str | None:
    """Why a token is unusable, or None: 16+ characters, no surrounding or inner whitespace (a padded
    token could never match, since the header value is stripped)."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        return f"a token needs {MIN_TOKEN_LENGTH}+ characters"
    if any(ch.isspace() for ch in token) or not token.isprintable():
        return "a token may not contain whitespace or control characters"
    return None


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
            problem = token_problem(api_token)
            if problem:
                raise TokenTableError(f"STATION_API_TOKEN: {problem}")
            tokens[api_token] = Principal("admin", ("admin",), ("admin",))
        if tokens_file:
            try:
                raw = json.loads(Path(tokens_file).read_text())
            except (OSError, ValueError) as exc:
                raise TokenTableError(f"STATION_API_TOKENS_FILE {tokens_file}: {exc}") from None
            if not isinstance(raw, dict):
                raise TokenTableError(f"STATION_API_TOKENS_FILE {tokens_file}: must be an object of token -> principal")
            if not raw:
                raise TokenTableError(f"STATION_API_TOKENS_FILE {tokens_file}: holds no token (an empty file would turn"
                                      " authentication off)")
            for index, (token, entry) in enumerate(raw.items()):
                where = f"STATION_API_TOKENS_FILE {tokens_file}: entry {index}"
                problem = token_problem(token)
                if problem:
                    raise TokenTableError(f"{where}: {problem}")
                if not isinstance(entry, dict) or not isinstance(entry.get("principal"), str) or not entry["principal"].strip():
                    raise TokenTableError(f"{where}: needs a non-empty string 'principal'")
                groups = entry.get("groups") or []
                if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
                    raise TokenTableError(f"{where}: 'groups' must be a list of strings")
                roles = entry.get("roles")
                if roles is None:
                    log.warning("%s (%s) names no 'roles': admin, as before roles existed", where, entry["principal"])
                    roles = list(LEGACY_ROLES)
                problem = role_problem(roles)
                if problem:
                    raise TokenTableError(f"{where}: {problem}")
                tokens[token] = Principal(entry["principal"], tuple(groups), tuple(roles))
        return cls(tokens)

    def authenticate(self, authorization: str | None) -> Principal | None:
        """Compare against every token (no early exit), so timing does not tell which prefix matched."""
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return None
        supplied = credentials.strip().encode("utf-8", "replace")
        found = None
        for token, principal in self._tokens:
            if hmac.compare_digest(supplied, token):
                found = principal
        return found
