"""Drives the gateway's ASGI app the way a server does, with a client that can stall its
body or disconnect at a chosen moment (which HTTP test clients cannot do)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message


@dataclass
class Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    app: ASGIApp,
    path: str,
    body: bytes | Sequence[bytes],
    *,
    content_length: int | None = None,
    stall_after_body: bool = False,
    disconnect_after_s: float | None = None,
) -> Reply:
    """POSTs `body` (one piece, or pieces sent as separate messages) to `path`.

    `stall_after_body`: the client stops sending before its last piece ends the body.
    `disconnect_after_s`: the client disconnects this long after sending its body.
    """
    pieces = [body] if isinstance(body, bytes) else list(body)
    length = sum(len(p) for p in pieces) if content_length is None else content_length
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(length).encode())],
    }  # fmt: skip
    queue: list[Message] = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    if stall_after_body:
        queue[-1]["more_body"] = True
    never = asyncio.Event()

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        if disconnect_after_s is not None and not stall_after_body:
            await asyncio.sleep(disconnect_after_s)
            return {"type": "http.disconnect"}
        await never.wait()  # a client that sends nothing more
        raise AssertionError("unreachable")

    reply = Reply()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            reply.status = message["status"]
            reply.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            reply.body += message.get("body", b"")

    await app(scope, receive, send)
    return reply
