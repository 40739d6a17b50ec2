"""The dashboard's routes on an ASGI app driven as a server drives it: the redirect, the
static page's security headers, the state document, the event stream (snapshot first,
429 beyond the cap, ended by the client's disconnection or the gateway's stop)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.types import Message

from orchestrator.dashboard.feed import Feed
from orchestrator.dashboard.routes import SECURITY_HEADERS, dashboard_routes
from tests.unit.orchestrator.dashboard.test_feed import Gateway


def app(feed: Feed, static: Path) -> Starlette:
    (static / "index.html").write_text("<!doctype html><title>llamaherd</title>")
    return Starlette(routes=dashboard_routes(feed, static))


async def fetch(application: Starlette, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.get(path)


def get(application: Starlette, path: str) -> httpx.Response:
    return asyncio.run(fetch(application, path))


def test_the_root_redirects_to_the_page(tmp_path: Path) -> None:
    reply = get(app(Gateway().feed(), tmp_path), "/")
    assert reply.status_code == 307 and reply.headers["location"] == "/dashboard/"


def test_the_page_is_served_with_its_security_headers(tmp_path: Path) -> None:
    reply = get(app(Gateway().feed(), tmp_path), "/dashboard/")
    assert reply.status_code == 200 and "<title>llamaherd</title>" in reply.text
    for name, value in SECURITY_HEADERS.items():
        assert reply.headers[name] == value
    assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
    missing = get(app(Gateway().feed(), tmp_path), "/dashboard/nothing.js")
    assert missing.status_code == 404


def test_the_state_is_the_full_document(tmp_path: Path) -> None:
    reply = get(app(Gateway().feed(), tmp_path), "/v1/dashboard/state")
    assert reply.status_code == 200 and reply.json()["full"] is True


class Client:
    """An HTTP client of the stream: it reads what the app sends and can disconnect."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.requested = False

    async def receive(self) -> Message:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        await self.messages.put(message)

    async def next(self) -> Message:
        return await asyncio.wait_for(self.messages.get(), 2.0)


def stream_scope() -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": "/v1/dashboard/stream", "raw_path": b"/v1/dashboard/stream",
            "query_string": b"", "root_path": "", "headers": [], "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8000)}  # fmt: skip


def test_the_stream_sends_the_snapshot_and_ends_when_the_client_leaves(tmp_path: Path) -> None:
    async def main() -> None:
        gw = Gateway()
        feed = gw.feed(max_streams=1)
        application = app(feed, tmp_path)
        client = Client()
        served = asyncio.create_task(application(stream_scope(), client.receive, client.send))
        start = await client.next()
        assert start["status"] == 200
        assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
        assert b"content-length" not in dict(start["headers"]), "a stream has no length"
        body = (await client.next())["body"]
        assert body.startswith(b"event: snapshot\ndata: ")
        assert json.loads(body.split(b"data: ", 1)[1])["full"] is True

        refused = await fetch(application, "/v1/dashboard/stream")  # one stream at most
        assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
        assert "dashboard streams" in refused.json()["error"]["message"]

        feed.tick()
        assert (await client.next())["body"].startswith(b"event: update\n")
        client.gone.set()
        await asyncio.wait_for(served, 2.0)
        assert feed.watchers == 0, "its place is free again"

    asyncio.run(main())


def test_the_stream_ends_cleanly_when_the_gateway_stops(tmp_path: Path) -> None:
    async def main() -> None:
        feed = Gateway().feed()
        client = Client()
        served = asyncio.create_task(
            app(feed, tmp_path)(stream_scope(), client.receive, client.send)
        )
        await client.next(), await client.next()
        feed.close()
        await asyncio.wait_for(served, 2.0)
        last = await client.next()
        assert last == {"type": "http.response.body", "body": b"", "more_body": False}

    asyncio.run(main())
