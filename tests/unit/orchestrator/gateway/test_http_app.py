"""The gateway's HTTP port as composed by the server: the dashboard's page open, its data
and the API behind the key, the API's own routes and errors unchanged under the dashboard."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import ASGIApp

from orchestrator.gateway.http_api import build_app
from orchestrator.gateway.server import http_app
from tests.unit.orchestrator.dashboard.test_feed import Gateway
from tests.unit.orchestrator.gateway.asgi import Reply
from tests.unit.orchestrator.gateway.relay_support import make_router

KEY = "s3cret"


def port(key: str | None, dashboard: bool = True) -> ASGIApp:
    feed = Gateway().feed() if dashboard else None
    return http_app(build_app(make_router(), 0), feed, key)


def get(app: ASGIApp, path: str, key: str | None = None) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(main())


def test_with_a_key_the_page_is_open_and_its_data_is_not() -> None:
    app = port(KEY)
    assert get(app, "/dashboard/").status_code == 200
    for path in ("/", "/dashboard"):
        moved = get(app, path)
        assert (moved.status_code, moved.headers["location"]) == (307, "/dashboard/"), path
    for path in ("/v1/dashboard/state", "/v1/dashboard/stream", "/v1/models", "/v1/cluster"):
        refused = get(app, path)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "invalid_api_key"
    assert get(app, "/v1/dashboard/state", KEY).json()["full"] is True
    assert get(app, "/v1/models", KEY).json() == {"object": "list", "data": []}


def test_a_dot_segment_does_not_open_the_api() -> None:
    async def main() -> Reply:
        reply = Reply()
        path = "/dashboard/../v1/cluster"  # as a server passes it: decoded, not normalised
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "headers": [],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}  # fmt: skip

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                reply.status = int(message["status"])  # type: ignore[call-overload]

        await port(KEY)(scope, receive, send)
        return reply

    assert asyncio.run(main()).status == 401


def test_the_api_keeps_its_own_errors_under_the_dashboard() -> None:
    missing = get(port(None), "/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    assert get(port(None), "/v1/cluster").json()["schema_version"] == 1


def test_without_the_dashboard_its_routes_are_not_served() -> None:
    app = port(None, dashboard=False)
    assert get(app, "/v1/dashboard/state").status_code == 404
    assert get(app, "/dashboard/").status_code == 404
