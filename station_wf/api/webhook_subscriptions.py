"""`/api/v1/webhook-subscriptions` and `/api/v1/webhook-deliveries`: outgoing webhooks (issue 19).

Subscriptions are created and deleted here (those of the environment's integrations file are shown,
not changed); the delivery log lists every delivery with its status, and one delivery shows its body
and every attempt; `redeliver` queues it again (dead-lettered ones included) under the same id."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from station_wf.api.http import SafeJSONResponse, json_body
from station_wf.api.params import int_param
from station_wf.api.state import ApiState


async def list_subscriptions(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse({"subscriptions": await state.integrations.subscriptions.list()})


async def create_subscription(request: Request, state: ApiState) -> Response:
    body, _ = await json_body(request, state)
    sub = await state.integrations.subscriptions.create(body)
    return SafeJSONResponse({"subscription": sub}, status_code=201,
                            headers={"Location": f"/api/v1/webhook-subscriptions/{sub['id']}"})


async def get_subscription(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse({"subscription": await state.integrations.subscriptions.get(request.path_params["sid"])})


async def delete_subscription(request: Request, state: ApiState) -> Response:
    await state.integrations.subscriptions.delete(request.path_params["sid"])
    return Response(status_code=204)


async def list_deliveries(request: Request, state: ApiState) -> Response:
    q = request.query_params
    before = int_param(request, "before", 0) or None
    return SafeJSONResponse(await state.integrations.subscriptions.deliveries(
        q.get("subscriptionId"), q.get("status"), q.get("runId"), before, int_param(request, "limit", 100)))


async def get_delivery(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse({"delivery": await state.integrations.subscriptions.delivery(request.path_params["did"])})


async def redeliver(request: Request, state: ApiState) -> Response:
    return SafeJSONResponse({"delivery": await state.integrations.subscriptions.redeliver(request.path_params["did"])},
                            status_code=202)


HANDLERS = [
    ("/api/v1/webhook-subscriptions", list_subscriptions, ["GET"]),
    ("/api/v1/webhook-subscriptions", create_subscription, ["POST"]),
    ("/api/v1/webhook-subscriptions/{sid}", get_subscription, ["GET"]),
    ("/api/v1/webhook-subscriptions/{sid}", delete_subscription, ["DELETE"]),
    ("/api/v1/webhook-deliveries", list_deliveries, ["GET"]),
    ("/api/v1/webhook-deliveries/{did}", get_delivery, ["GET"]),
    ("/api/v1/webhook-deliveries/{did}/redeliver", redeliver, ["POST"]),
]
