"""Work for a client that went away stops: a non-streaming HTTP client that disconnects
frees its worker's slot within a second (it ran to the end before), and so does one that
leaves while its stream waits for its first token. The gRPC front door is covered by
tests/integration/orchestrator/test_abandoned.py."""

from __future__ import annotations

import asyncio
import json

from orchestrator.gateway.http_api import CLIENT_GONE, build_app
from tests.unit.orchestrator.gateway.asgi import call
from tests.unit.orchestrator.gateway.relay_support import busy, make_router, two_workers
from tests.unit.orchestrator.gateway.relay_support import worker_node as node
from tests.unit.worker.api.serving import generate_request, wait_until

LONG = {"model": "m", "prompt": "ab", "max_tokens": 100}  # 100 steps of 20 ms: 2 s


def test_a_non_streaming_client_that_disconnects_frees_the_slot_at_once(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path, step_delay=0.02) as (a, _):
            app = build_app(make_router(node("a", a.address)), 0)
            loop = asyncio.get_running_loop()
            started = loop.time()
            for path, body in [
                ("/v1/completions", LONG),
                ("/v1/chat/completions", {**LONG, "messages": [{"role": "user", "content": "x"}]}),
            ]:
                body = {k: v for k, v in body.items() if not (k == "prompt" and "chat" in path)}
                reply = await call(app, path, json.dumps(body).encode(), disconnect_after_s=0.3)
                assert reply.status in (0, CLIENT_GONE)  # nothing worth sending
                await wait_until(lambda: busy(a) == 0, timeout=1.0)
            assert loop.time() - started < 3, "both generations must stop early, not run 2 s"
            assert a.registry.info("m").engine.completed == 0

    asyncio.run(scenario())


def test_a_streaming_client_that_leaves_before_its_first_token_is_dropped(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path, step_delay=0.02) as (a, _):
            app = build_app(make_router(node("a", a.address)), 0)
            running = a.stub.Generate(generate_request("zz", max_tokens=100))
            await running.read()  # the one slot is taken: the next request queues
            body = json.dumps({**LONG, "stream": True}).encode()
            reply = await call(app, "/v1/completions", body, disconnect_after_s=0.3)
            assert reply.status in (0, CLIENT_GONE)
            await wait_until(lambda: a.registry.info("m").engine.queued == 0, timeout=1.0)
            running.cancel()

    asyncio.run(scenario())


def test_a_client_that_stays_gets_its_reply(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path, step_delay=0.001) as (a, _):
            app = build_app(make_router(node("a", a.address)), 0)
            body = json.dumps({**LONG, "max_tokens": 5}).encode()
            reply = await call(app, "/v1/completions", body, disconnect_after_s=30)
            assert reply.status == 200
            assert reply.json()["choices"][0]["text"] == "cdefg"
            assert reply.headers["x-llamaherd-node"] == "a"

    asyncio.run(scenario())
