"""The store's file service: workers fetch store files from it over HTTP, with ranges.

- `GET/HEAD /v1/store/files/{sha256}`: the file (Starlette's FileResponse: Content-Length,
  `Accept-Ranges: bytes`, a single `Range` answered 206 with Content-Range, an unsatisfiable
  one 416, a malformed one 400), 404 for a hash the index does not name.
- `GET /v1/store/models`: the index as JSON, `{"models": [...]}`.

Both require `Authorization: Bearer <token>`: the cluster's join token (what workers hold)
or the coordinator's API key; anything else is answered 401 `invalid_token`. The server
runs in the registry's process (orchestrator.runtime), on the coordinator's `host` at
`store_port`. Nothing here imports Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from common.net import join_host_port
from orchestrator.store.index import SHA256_RE, StoreIndex

log = logging.getLogger(__name__)

FILES_PATH = "/v1/store/files/"
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def build_store_app(index: StoreIndex, tokens: Sequence[str]) -> ASGIApp:
    """The store's ASGI app over `index`, admitting requests that carry one of `tokens`."""

    async def file(request: Request) -> Response:
        digest = str(request.path_params["sha256"])
        if not SHA256_RE.fullmatch(digest) or not index.has_file(digest):
            return _error(404, f"no file with sha256 {digest[:64]!r} in the store", "not_found")
        path = index.file_path(digest)
        if not path.is_file():
            log.error("the store indexes %s but its file %s is missing", digest, path)
            return _error(404, f"the file {digest} is missing from the store", "not_found")
        return FileResponse(path, media_type="application/octet-stream")

    async def models(request: Request) -> Response:
        return JSONResponse({"models": [m.to_json() for m in index.list()]})

    app = Starlette(
        routes=[
            Route(FILES_PATH + "{sha256}", file, methods=["GET", "HEAD"]),
            Route("/v1/store/models", models, methods=["GET"]),
        ]
    )
    return BearerTokens(app, tokens)


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "code": code}}, status_code=status)


class BearerTokens:
    """ASGI middleware: `Authorization: Bearer <one of tokens>` on every request, compared
    in constant time; never logged."""

    def __init__(self, app: ASGIApp, tokens: Sequence[str]) -> None:
        if not any(tokens):
            raise ValueError("the store needs at least one token (the cluster's join token)")
        self._app = app
        self._tokens = [t.encode() for t in tokens if t]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = dict(scope["headers"]).get(b"authorization")
            if not self._admits(raw):
                message = (
                    "the store requires 'Authorization: Bearer <cluster join token or API key>'"
                    if raw is None
                    else "the store's token is not valid"
                )
                await _error(401, message, "invalid_token")(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _admits(self, header: bytes | None) -> bool:
        if header is None or not header.startswith(b"Bearer "):
            return False
        given = header[7:]
        # Every token is compared, so the time taken does not tell which one came close.
        matches = [hmac.compare_digest(given, token) for token in self._tokens]
        return any(matches)


def store_base_url(host: str, port: int) -> str:
    """The store's base URL as workers use it: the listening host, or for a wildcard one
    this machine's name."""
    if host in WILDCARD_HOSTS:
        host = socket.gethostname()
    return "http://" + join_host_port(host, port)


class StoreServer:
    """The file service on its own uvicorn server, in the caller's event loop."""

    def __init__(self, store_dir: Path, tokens: Sequence[str]) -> None:
        self.index = StoreIndex(store_dir)
        self._app = build_store_app(self.index, tokens)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Binds `host`:`port` (0: a free port) and serves; returns the port."""
        sock = _bind(host, port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app, lifespan="off", log_level="warning", access_log=False,
            timeout_graceful_shutdown=2,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="store-http")
        log.info(
            "model store %s served on %s", self.index.store_dir, join_host_port(host, self.port)
        )
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.index.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"the model store cannot listen on {join_host_port(host, port)}: {exc.strerror}; "
            "is another llamaherd using it? set store_port"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock
