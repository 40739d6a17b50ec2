"""The Ollama routes of the gateway's app, driven by the official `ollama` client over
in-process workers (the real servicer and engine on the fake llama.cpp backend): NDJSON
streaming, Ollama's error shape and statuses, and the API key on every /api route."""

from __future__ import annotations

import asyncio
import json

import httpx
import ollama
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from support.fake_backend import DEFAULT_REPLY

from orchestrator.gateway import ollama_schema as ol
from orchestrator.gateway.auth import HttpApiKey
from orchestrator.gateway.http_api import build_app
from tests.unit.orchestrator.gateway.asgi import call
from tests.unit.orchestrator.gateway.relay_support import make_router, two_workers, worker_node
from tests.unit.worker.api.serving import serving

KEY = "a-key-for-tests"


def client(app, **kwargs) -> ollama.AsyncClient:  # type: ignore[no-untyped-def]
    return ollama.AsyncClient("http://gateway", transport=httpx.ASGITransport(app), **kwargs)


def letters(start: int, n: int) -> str:
    return "".join(chr(DEFAULT_REPLY[(start + i) % 26]) for i in range(n))


def test_chat_and_generate_stream_ndjson_and_answer_whole(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            router = make_router(worker_node("a", a.address), worker_node("b", b.address))
            api = client(build_app(router, 0))
            parts = [
                part async for part in await api.chat(
                    "m:latest", [{"role": "user", "content": "Hi"}], stream=True,
                    options={"num_predict": 6, "temperature": 0},
                )
            ]  # fmt: skip
            assert all(p.model == "m:latest" for p in parts)
            assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
            text = "".join(p.message.content or "" for p in parts)
            assert len(text) == 6 and text in (DEFAULT_REPLY * 2).decode()
            last = parts[-1]
            assert last.done_reason == "length" and last.eval_count == 6
            assert last.prompt_eval_count and last.total_duration and last.total_duration > 0
            assert last.created_at and last.created_at.endswith("Z")

            whole = await api.generate("m", "ab", raw=True, stream=False,
                                       options={"num_predict": 4})  # fmt: skip
            assert whole.done and whole.response == letters(2, 4)
            assert whole.done_reason == "length" and whole.eval_count == 4
            load = await api.generate("m", "")
            assert load.done and load.done_reason == "load"
            await router.clients.close()

    asyncio.run(scenario())


def test_a_stream_that_fails_after_its_first_line_ends_with_an_error_line(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path, step_delay=0.02) as (a, _):
            router = make_router(worker_node("a", a.address), retries=0)
            app = build_app(router, 0)

            async def kill_a() -> None:
                await asyncio.sleep(0.15)
                await a.server.stop(0)

            killer = asyncio.ensure_future(kill_a())
            body = {"model": "m", "prompt": "ab", "raw": True, "options": {"num_predict": 50}}
            reply = await call(app, "/api/generate", json.dumps(body).encode())
            await killer
            assert reply.status == 200
            assert reply.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(line) for line in reply.body.decode().splitlines()]
            assert lines[0]["response"] and lines[0]["done"] is False
            assert set(lines[-1]) == {"error"} and "worker" in lines[-1]["error"]
            await router.clients.close()

    asyncio.run(scenario())


def test_errors_are_ollamas_shape_with_its_statuses():
    async def scenario() -> None:
        router = make_router(worker_node("a", "127.0.0.1:1"))
        api = client(build_app(router, 0))
        with pytest.raises(ollama.ResponseError) as info:
            await api.chat("qwen", [{"role": "user", "content": "Hi"}])
        assert (info.value.status_code, info.value.error) == (404, "model 'qwen' not found")
        with pytest.raises(ollama.ResponseError) as info:
            await api.show("qwen:latest")
        assert (info.value.status_code, info.value.error) == (404, "model 'qwen:latest' not found")
        # the client checks format itself: sent as raw HTTP
        body = {"model": "m", "prompt": "Hi", "format": "yaml"}
        raw = await call(build_app(router, 0), "/api/generate", json.dumps(body).encode())
        assert raw.status == 400
        assert raw.json() == {
            "error": 'format must be "json" or a JSON schema object, not the string "yaml"'
        }
        with pytest.raises(ollama.ResponseError) as info:
            await api.chat("m", [{"role": "user", "content": "Hi"}], options={"num_ctx": 8192})
        assert info.value.status_code == 400
        assert "options.num_ctx 8192 is above the context of model 'm' (4096 tokens)" in (
            info.value.error
        )
        for refused in (api.pull("gemma"), api.delete("gemma"), api.copy("gemma", "g2"),
                        api.create("g2", from_="gemma"), api.push("gemma")):  # fmt: skip
            with pytest.raises(ollama.ResponseError) as info:
                await refused
            assert info.value.status_code == 501 and "llamaherd" in info.value.error
        raw = await call(build_app(router, 0), "/api/nothing", b"{}")
        assert raw.status == 404 and "/api/nothing" in raw.json()["error"]
        raw = await call(build_app(router, 0), "/api/chat", b"{not json")
        assert raw.status == 400 and raw.json()["error"].startswith("request body is not valid")

    asyncio.run(scenario())


def test_the_api_key_covers_every_ollama_route():
    async def scenario() -> None:
        app = HttpApiKey(build_app(make_router(), 0), KEY)
        for api in (client(app), client(app, headers={"Authorization": "Bearer wrong"})):
            for refused in (api.list(), api.ps(), api.show("m"), api.embed("m", "x"),
                            api.chat("m", [{"role": "user", "content": "x"}]),
                            api.generate("m", "x"), api.pull("m")):  # fmt: skip
                with pytest.raises(ollama.ResponseError) as info:
                    await refused
                assert info.value.status_code == 401
                # Ollama's shape ({"error": "..."}), which its client reads as the message.
                assert "API key" in info.value.error
        version = await httpx.AsyncClient(transport=httpx.ASGITransport(app)).get(
            "http://gateway/api/version"
        )
        assert version.status_code == 401
        assert version.json() == {
            "error": "this gateway requires an API key: Authorization: Bearer <key>"
        }
        allowed = client(app, headers={"Authorization": f"Bearer {KEY}"})
        assert (await allowed.list()).models == []
        assert (await allowed.ps()).models == []

    asyncio.run(scenario())


def test_version_tags_ps_and_show_over_the_router_view():
    async def scenario() -> None:
        router = make_router(worker_node("a", "127.0.0.1:1"), worker_node("b", "127.0.0.1:2"))
        app = build_app(router, 1_700_000_000)
        api = client(app)
        listing = await api.list()
        assert [m.model for m in listing.models] == ["m:latest"]
        assert listing.models[0].modified_at is not None
        assert listing.models[0].modified_at.timestamp() == 1_700_000_000
        running = (await api.ps()).models
        assert [m.name for m in running] == ["m:latest"] and running[0].context_length == 4096
        shown = await api.show("m:latest")
        assert shown.capabilities == ["completion", "tools"] and shown.details is not None
        version = await httpx.AsyncClient(transport=httpx.ASGITransport(app)).get(
            "http://gateway/api/version"
        )
        assert version.json()["version"].count(".") == 2

    asyncio.run(scenario())


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
# What a model that reasons and calls tools in the generic JSON form writes.
CALLING = (
    '<think>Use the tool.</think>{"tool_calls": [{"name": "get_weather", '
    '"arguments": {"city": "Paris"}}]}'
)


def test_thinking_and_tool_calls_whole_and_streamed_through_the_client(tmp_path):
    async def scenario() -> None:
        # A longer context than two_workers' models: the tools' instruction fills 500 tokens.
        async with serving(tmp_path, {"alias": "m", "n_ctx": 1024}) as a:
            router = make_router(worker_node("a", a.address))
            api = client(build_app(router, 0))
            ask = [{"role": "user", "content": "Weather?"}]
            # The prompt the worker renders (its own Tokenize; the fake's tokens are bytes).
            parsed = ol.parse_chat({"model": "m", "messages": ask, "tools": [WEATHER]}, {"m"})
            assert parsed.call is not None
            chat = gen_pb.TokenizeRequest(model="m", chat=parsed.call.request)
            prompt = bytes((await a.stub.Tokenize(chat)).tokens).decode()
            a.models.backends["m"].script(prompt, CALLING)

            whole = await api.chat("m", ask, tools=[WEATHER], stream=False)
            assert whole.message.thinking == "Use the tool."
            [call] = whole.message.tool_calls or []
            assert (call.function.name, dict(call.function.arguments)) == (
                "get_weather", {"city": "Paris"}
            )  # fmt: skip
            assert whole.done_reason == "stop" and not whole.message.content
            parts = [p async for p in await api.chat("m", ask, tools=[WEATHER], stream=True)]
            assert "".join(p.message.thinking or "" for p in parts) == "Use the tool."
            calls = [c for p in parts for c in p.message.tool_calls or []]
            assert [c.function.arguments for c in calls] == [{"city": "Paris"}]
            assert parts[-1].done and not parts[-1].message.tool_calls
            quiet = await api.chat("m", ask, tools=[WEATHER], think=False, stream=False)
            assert quiet.message.thinking is None and quiet.message.tool_calls
            await router.clients.close()

    asyncio.run(scenario())
