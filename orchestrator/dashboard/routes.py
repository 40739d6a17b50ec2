"""The dashboard's HTTP surface on the gateway's port:

- `GET /` (and `/dashboard`) redirects (307) to `/dashboard/`;
- `/dashboard/...` serves the page (orchestrator/dashboard/static) with strict security
  headers; it holds no data, so it is open even when an API key is set;
- `GET /v1/dashboard/state`: the full document (orchestrator.dashboard.document);
- `GET /v1/dashboard/stream`: server-sent events, `snapshot` first, then an `update` every
  interval; beyond the feed's stream cap, 429 with Retry-After. The stream ends when the
  client disconnects, falls behind, or the gateway stops.

The API key (orchestrator.gateway.auth) guards both /v1/dashboard routes like every
other API route.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.dashboard.feed import Feed, Subscription

STATIC_DIR = Path(__file__).parent / "static"
RETRY_AFTER_S = 5

# The page loads only its own files: no inline scripts, no third-party origins, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def dashboard_routes(feed: Feed, static_dir: Path = STATIC_DIR) -> list[BaseRoute]:
    """The routes to put before the API's own."""

    async def state(request: Request) -> Response:
        return JSONResponse(feed.state(), headers={"Cache-Control": "no-store"})

    async def stream(request: Request) -> Response:
        subscription = feed.subscribe()
        if subscription is None:
            message = (
                f"this gateway already serves {feed.max_streams} dashboard streams; "
                f"retry in {RETRY_AFTER_S} s or use another gateway"
            )
            body = {"error": {"message": message, "type": "rate_limit_error", "param": None,
                              "code": "resource_exhausted"}}  # fmt: skip
            return JSONResponse(body, 429, headers={"Retry-After": str(RETRY_AFTER_S)})
        return EventStream(subscription)

    async def home(request: Request) -> Response:
        return RedirectResponse("/dashboard/", status_code=307)

    return [
        Route("/", home, methods=["GET"]),
        Route("/dashboard", home, methods=["GET"]),  # the API's catch-all would answer 404
        Route("/v1/dashboard/state", state, methods=["GET"]),
        Route("/v1/dashboard/stream", stream, methods=["GET"]),
        Mount("/dashboard", app=SecurityHeaders(StaticFiles(directory=static_dir, html=True))),
    ]


class EventStream(StreamingResponse):
    """`text/event-stream` of one subscription. Unlike its base class it watches for the
    client's disconnection itself (whatever the server's ASGI version) and always closes
    the subscription, so a watcher that left frees its place at once."""

    def __init__(self, subscription: Subscription) -> None:
        super().__init__(
            subscription.frames(),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            media_type="text/event-stream",
        )
        self._subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscription = self._subscription
        watcher = asyncio.create_task(_until_disconnected(receive, subscription))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for frame in self.body_iterator:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client is gone (ASGI 2.4 servers raise on send): nothing to tell it
        finally:
            subscription.close()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def _until_disconnected(receive: Receive, subscription: Subscription) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            subscription.close()
            return


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in self._headers}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": [*kept, *self._headers]}
            await send(message)

        await self._app(scope, receive, send_with_headers)
