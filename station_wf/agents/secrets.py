"""Which environment variables an agent file may send to its model server.

`apiKeyEnv` names a variable whose value becomes `Authorization: Bearer <value>` towards the agent's
`baseUrl`, and both come from the agent file. Without a rule, a file with `apiKeyEnv: STATION_API_TOKEN`
and a `baseUrl` of its choosing receives the daemon's admin token (or any other secret of the process).
So only names that say they are a key for a model provider are allowed (`*_API_KEY`, `*_KEY`,
`*_TOKEN`, upper case), and never the daemon's own `STATION_*` settings.
"""

from __future__ import annotations

import re

__all__ = ["API_KEY_ENV_RE", "api_key_env_problem"]

API_KEY_ENV_RE = re.compile(r"^[A-Z][A-Z0-9_]*_(?:API_KEY|KEY|TOKEN)$")


def api_key_env_problem(name: str) -> str | None:
    """Why `name` may not be read as an API key, or None when it may."""
    if name.upper().startswith("STATION_"):
        return f"{name!r} is one of the daemon's own settings (STATION_*) and is never sent to an agent"
    if not API_KEY_ENV_RE.match(name):
        return (f"{name!r} is not an API key variable: use an upper-case name ending in _API_KEY, _KEY or "
                "_TOKEN, such as OPENAI_API_KEY")
    return None
