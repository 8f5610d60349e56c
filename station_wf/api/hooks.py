"""`POST /api/v1/hooks/{name}`: an external system starts a run (see `integrations/triggers.py`).

The door lets these requests through without the API's bearer token (a GitHub or Stripe cannot send
ours); the hook verifies its own signature or token, and a hook without `verify:` needs the API token
after all when the daemon has tokens."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from station_wf.api.http import parse_json, read_body
from station_wf.api.runs import start_answer
from station_wf.api.state import ApiState


async def fire_hook(request: Request, state: ApiState) -> Response:
    raw = await read_body(request, state)
    headers = {k.lower(): v for k, v in request.headers.items()}
    authenticated = bool(request.scope.get("state", {}).get("authenticated"))
    answer = await state.integrations.triggers.fire(request.path_params["name"], headers, raw, authenticated,
                                                    parse_json, request.headers.get("traceparent"),
                                                    request.scope.get("state", {}).get("principal"))
    return start_answer(request, answer)


HANDLERS = [("/api/v1/hooks/{name}", fire_hook, ["POST"])]
