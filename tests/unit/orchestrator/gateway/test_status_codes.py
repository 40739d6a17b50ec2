"""The documented status codes at the HTTP front door: 429 with Retry-After when every
replica's queue is full, 400 for lone surrogates and over-deep JSON (they were 500s), and
408 for a body that never arrives whole."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from orchestrator.cluster.types import ClusterSnapshot
from orchestrator.gateway.errors import BadRequest
from orchestrator.gateway.http_api import build_app
from orchestrator.gateway.json_body import MAX_DEPTH, check_document, parse_json
from tests.unit.orchestrator.gateway.asgi import call
from tests.unit.orchestrator.gateway.relay_support import make_router, worker_node

COMPLETION = {"model": "m", "prompt": "Hi", "max_tokens": 4}


def _app(body_timeout_s: float = 5.0):  # type: ignore[no-untyped-def]
    full = worker_node("a", "127.0.0.1:1", load=3, max_queue=2)
    down = dataclasses.replace(worker_node("b", "127.0.0.1:2"), up=False, down_reason="gone")
    router = make_router(full, down)
    return build_app(router, 0, body_timeout_s=body_timeout_s), router


def test_every_queue_full_is_429_with_retry_after():
    async def scenario() -> None:
        app, router = _app()
        for path in ("/v1/completions", "/v1/chat/completions"):
            body = dict(COMPLETION)
            if "chat" in path:
                body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
            reply = await call(app, path, json.dumps(body).encode())
            assert reply.status == 429, reply.body
            assert reply.headers["retry-after"] == "1"
            error = reply.json()["error"]
            assert error["type"] == "rate_limit_error" and "max_queue 2" in error["message"]
        # Down everywhere: the cluster cannot serve, 503 as before.
        router.update(ClusterSnapshot(2, 0.0, (router.snapshot.nodes[1],)))
        reply = await call(app, "/v1/completions", json.dumps(COMPLETION).encode())
        assert reply.status == 503 and "retry-after" not in reply.headers

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"model": "m", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
         "messages[0].content"),
        ('{"model": "m", "prompt": "ok", "stop": ["\\udfff"]}', "stop[0]"),
        ('{"model": "\\ud83d", "prompt": "x"}', "model"),
        ('{"model": "m", "prompt": "x", "user": "\\ud800\\ud800"}', "user"),
        ('{"model": "m", "prompt": "x", "\\ud800": 1}', "the name of field \\ud800"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_in_any_string_is_400_naming_the_field(body, field):
    async def scenario() -> None:
        app, _ = _app()
        reply = await call(app, "/v1/completions", body.encode())
        assert reply.status == 400, reply.body
        error = reply.json()["error"]
        assert error["param"] == field and "surrogate" in error["message"]

    asyncio.run(scenario())


def test_a_valid_surrogate_pair_is_text():
    assert parse_json(b'{"prompt": "\\ud83d\\ude00"}') == {"prompt": "\U0001f600"}


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000, 100_000])
def test_json_nested_too_deep_is_400(depth):
    async def scenario() -> None:
        app, _ = _app()
        body = b'{"model": "m", "prompt": ' + b"[" * depth + b"]" * depth + b"}"
        reply = await call(app, "/v1/completions", body)
        assert reply.status == 400, reply.body
        assert "levels deep" in reply.json()["error"]["message"]

    asyncio.run(scenario())


def test_json_at_the_depth_limit_passes_the_check():
    document: object = "x"
    for _ in range(MAX_DEPTH - 1):
        document = [document]
    check_document({"prompt": document})
    with pytest.raises(BadRequest):
        check_document({"prompt": [document]})


def test_a_body_that_stops_midway_is_408_and_closes_the_connection():
    async def scenario() -> None:
        app, _ = _app(body_timeout_s=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await call(
            app, "/v1/completions", [b'{"model": "m", '], content_length=100,
            stall_after_body=True,
        )  # fmt: skip
        assert reply.status == 408, reply.body
        assert reply.headers["connection"] == "close"
        assert "0.3 s" in reply.json()["error"]["message"]
        assert loop.time() - started < 2

    asyncio.run(scenario())


def test_a_body_over_the_size_limit_is_400_before_it_is_read():
    async def scenario() -> None:
        app, _ = _app()
        reply = await call(app, "/v1/completions", [b"{"], content_length=10**9)
        assert reply.status == 400 and "larger than" in reply.json()["error"]["message"]

    asyncio.run(scenario())
