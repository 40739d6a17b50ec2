"""The Anthropic routes of the gateway's app, driven by the official `anthropic` client over
in-process workers (the real servicer and engine on the fake llama.cpp backend, whose
chat template is llama.cpp's chatml and whose vocabulary is bytes): messages whole and
streamed, stop reasons, prefill, count_tokens, Anthropic's error shape and statuses, and
the API key on every /v1/messages route."""

from __future__ import annotations

import asyncio
import json

import anthropic
import httpx
import httpx2  # the anthropic SDK's own fork of httpx
import pytest
from support.fake_backend import DEFAULT_REPLY

from orchestrator.gateway.auth import HttpApiKey
from orchestrator.gateway.http_api import build_app
from tests.unit.orchestrator.gateway.asgi import call
from tests.unit.orchestrator.gateway.relay_support import make_router, two_workers, worker_node
from tests.unit.worker.api.serving import serving

KEY = "a-key-for-tests"
CYCLE = (DEFAULT_REPLY * 3).decode()


def chatml(*turns: tuple[str, str]) -> str:
    """The prompt the workers render (one token per byte), up to the assistant's turn."""
    text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
    return text + "<|im_start|>assistant\n"


def client(app, **kwargs) -> anthropic.AsyncAnthropic:  # type: ignore[no-untyped-def]
    kwargs.setdefault("api_key", "unused")
    return anthropic.AsyncAnthropic(
        base_url="http://gateway",
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app)),
        max_retries=0,
        **kwargs,
    )


def test_a_message_whole_and_streamed_ends_its_turn_with_anthropics_shapes(tmp_path):
    prompt = chatml(("system", "Be brief."), ("user", "Hi"))

    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, b):
            for worker in (a, b):
                worker.models.backends["m"].script(prompt, "Hello there")
            router = make_router(worker_node("a", a.address), worker_node("b", b.address))
            api = client(build_app(router, 0))
            messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
            whole = await api.messages.create(
                model="m", max_tokens=40, system="Be brief.", messages=messages
            )
            assert whole.type == "message" and whole.role == "assistant" and whole.model == "m"
            assert whole.id.startswith("msg_")
            assert [(c.type, c.text) for c in whole.content] == [("text", "Hello there")]
            assert (whole.stop_reason, whole.stop_sequence) == ("end_turn", None)
            assert whole.usage.input_tokens == len(prompt)
            assert whole.usage.output_tokens == len("Hello there")

            async with api.messages.stream(
                model="m", max_tokens=40, system=[{"type": "text", "text": "Be brief."}],
                messages=messages, metadata={"user_id": "alice"},
            ) as stream:  # fmt: skip
                pieces = [text async for text in stream.text_stream]
                final = await stream.get_final_message()
            assert "".join(pieces) == "Hello there" and len(pieces) > 1
            assert final.content[0].text == "Hello there" and final.stop_reason == "end_turn"
            assert final.usage.input_tokens == len(prompt)
            assert final.usage.output_tokens == len("Hello there")

            raw = await api.messages.create(
                model="m", max_tokens=40, system="Be brief.", messages=messages, stream=True
            )
            kinds = [event.type async for event in raw]
            assert kinds[:2] == ["message_start", "content_block_start"]  # the SDK drops pings
            assert set(kinds[2:-3]) == {"content_block_delta"}
            assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
            await router.clients.close()

    asyncio.run(scenario())


def test_stop_reasons_for_the_token_limit_and_a_stop_sequence(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, _):
            router = make_router(worker_node("a", a.address))
            api = client(build_app(router, 0))
            messages = [{"role": "user", "content": "Hi"}]
            cut = await api.messages.create(model="m", max_tokens=5, messages=messages)
            assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 5
            text = cut.content[0].text
            assert len(text) == 5 and text in CYCLE
            # The fake model writes the alphabet from where its position falls: one of
            # these pairs comes within its first three letters.
            pairs = [CYCLE[i : i + 2] for i in range(0, 26, 2)]
            stopped = await api.messages.create(
                model="m", max_tokens=30, messages=messages, stop_sequences=pairs
            )
            assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence in pairs
            said = stopped.content[0].text if stopped.content else ""
            assert len(said) <= 1 and (said + stopped.stop_sequence) in CYCLE
            async with api.messages.stream(
                model="m", max_tokens=30, messages=messages, stop_sequences=pairs
            ) as stream:
                final = await stream.get_final_message()
            assert final.stop_reason == "stop_sequence" and final.stop_sequence in pairs
            await router.clients.close()

    asyncio.run(scenario())


def test_a_last_assistant_message_is_continued_and_count_tokens_counts_the_rendered_prompt(
    tmp_path,
):
    rendered = chatml(("user", "Hi"))

    async def scenario() -> None:
        async with two_workers(tmp_path) as (a, _):
            a.models.backends["m"].script(rendered + "Hel", "lo!")
            router = make_router(worker_node("a", a.address))
            api = client(build_app(router, 0))
            prefilled = [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hel"}]  # fmt: skip
            reply = await api.messages.create(model="m", max_tokens=10, messages=prefilled)
            assert reply.content[0].text == "lo!" and reply.stop_reason == "end_turn"

            counted = await api.messages.count_tokens(model="m", messages=prefilled)
            assert counted.input_tokens == reply.usage.input_tokens == len(rendered + "Hel")
            with_system = await api.messages.count_tokens(
                model="m", system=[{"type": "text", "text": "Be kind."}],
                messages=[{"role": "user", "content": "Hi"}],
            )  # fmt: skip
            assert with_system.input_tokens == len(chatml(("system", "Be kind."), ("user", "Hi")))
            await router.clients.close()

    asyncio.run(scenario())


def test_a_stream_that_fails_after_it_started_ends_with_an_error_event(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path, step_delay=0.02) as (a, _):
            router = make_router(worker_node("a", a.address), retries=0)
            app = build_app(router, 0)

            async def kill_a() -> None:
                await asyncio.sleep(0.15)
                await a.server.stop(0)

            killer = asyncio.ensure_future(kill_a())
            body = {"model": "m", "max_tokens": 60, "stream": True,
                    "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
            reply = await call(app, "/v1/messages", json.dumps(body).encode())
            await killer
            assert reply.status == 200
            assert reply.headers["content-type"].startswith("text/event-stream")
            events = [block.split("\n") for block in reply.body.decode().strip().split("\n\n")]
            names = [lines[0].removeprefix("event: ") for lines in events]
            assert names[:3] == ["message_start", "ping", "content_block_start"]
            assert "content_block_delta" in names
            assert names[-1] == "error" and "message_stop" not in names
            error = json.loads(events[-1][1].removeprefix("data: "))
            assert error["type"] == "error" and error["error"]["type"] == "overloaded_error"
            assert "worker" in error["error"]["message"]
            await router.clients.close()

    asyncio.run(scenario())


def test_errors_are_anthropics_shape_with_its_types_and_statuses():
    async def scenario() -> None:
        router = make_router(worker_node("a", "127.0.0.1:1"))
        app = build_app(router, 0)
        api = client(app)
        hi = [{"role": "user", "content": "Hi"}]
        with pytest.raises(anthropic.NotFoundError) as missing:
            await api.messages.create(model="qwen", max_tokens=5, messages=hi)
        assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
        assert "'qwen' is not served" in missing.value.message
        with pytest.raises(anthropic.BadRequestError) as refused:
            await api.messages.create(model="m", max_tokens=0, messages=hi)
        assert refused.value.body == {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "max_tokens must be at least 1, not 0",
            },
        }
        with pytest.raises(anthropic.BadRequestError) as refused:
            await api.messages.create(
                model="m", max_tokens=5, messages=hi,
                tools=[{"name": "f", "input_schema": {"type": "object"}}],
                tool_choice={"type": "tool", "name": "g"},
            )  # fmt: skip
        assert refused.value.body == {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": 'tool_choice.name "g" is not among tools (f)',
            },
        }
        with pytest.raises(anthropic.BadRequestError) as refused:
            await api.messages.count_tokens(
                model="m", messages=[{"role": "assistant", "content": "x"}]
            )
        assert "first message must be the user's" in refused.value.message
        # Sent as raw HTTP: what the client would not send itself.
        no_max = {"model": "m", "messages": hi}
        raw = await call(app, "/v1/messages", json.dumps(no_max).encode())
        assert raw.status == 400
        assert raw.json()["error"] == {
            "type": "invalid_request_error",
            "message": "max_tokens is required: the most tokens the reply may hold",
        }
        raw = await call(app, "/v1/messages", b"{not json")
        assert raw.status == 400 and raw.json()["type"] == "error"
        raw = await call(app, "/v1/messages/batches", b"{}")
        assert raw.status == 404 and raw.json()["error"]["type"] == "not_found_error"
        busy = make_router(worker_node("a", "127.0.0.1:1", load=64, max_queue=1))
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client(build_app(busy, 0)).messages.create(model="m", max_tokens=5, messages=hi)
        assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert limited.value.response.headers["retry-after"] == "1"

    asyncio.run(scenario())


def test_the_api_key_covers_every_anthropic_route_in_either_header():
    async def scenario() -> None:
        app = HttpApiKey(build_app(make_router(), 0), KEY)
        hi = [{"role": "user", "content": "Hi"}]
        keyless = client(app, api_key=None, default_headers={"Authorization": anthropic.omit})
        for api in (keyless, client(app, api_key="wrong"),
                    client(app, api_key=None, default_headers={"x-api-key": "wrong"})):  # fmt: skip
            for refused in (api.messages.create(model="m", max_tokens=5, messages=hi),
                            api.messages.count_tokens(model="m", messages=hi)):  # fmt: skip
                with pytest.raises(anthropic.AuthenticationError) as info:
                    await refused
                body = info.value.body
                assert body["type"] == "error"  # type: ignore[index]
                assert body["error"]["type"] == "authentication_error"  # type: ignore[index]
                assert "API key" in body["error"]["message"]  # type: ignore[index]
        # The right key, as a bearer token or in Anthropic's header, passes the check: the
        # request reaches the routes (which find no model on this empty cluster).
        for allowed in (client(app, api_key=KEY),
                        client(app, api_key=None, default_headers={"x-api-key": KEY})):  # fmt: skip
            with pytest.raises(anthropic.NotFoundError):
                await allowed.messages.create(model="m", max_tokens=5, messages=hi)
        # x-api-key stands in for the bearer under /v1/messages only.
        other = await httpx.AsyncClient(transport=httpx.ASGITransport(app)).get(
            "http://gateway/v1/models", headers={"x-api-key": KEY}
        )
        assert other.status_code == 401

    asyncio.run(scenario())


WEATHER = {"name": "get_weather", "description": "Weather now",
           "input_schema": {"type": "object",
                            "properties": {"city": {"type": "string"}}}}  # fmt: skip
# What a model that reasons and calls tools in the generic JSON form writes.
CALLING = (
    '<think>Use the tool.</think>{"tool_calls": [{"name": "get_weather", '
    '"arguments": {"city": "Paris"}}]}'
)


async def script_rendered(worker, body: dict) -> None:  # type: ignore[no-untyped-def]
    """Scripts CALLING as the reply to the prompt the worker renders for `body` (its own
    Tokenize of the chat, tools included; the fake's tokens are bytes)."""
    from llamaherd.v1 import generation_pb2 as gen_pb

    from orchestrator.gateway import anthropic_schema as an

    chat = an.parse_count_tokens(body).request
    reply = await worker.stub.Tokenize(gen_pb.TokenizeRequest(model="m", chat=chat))
    worker.models.backends["m"].script(bytes(reply.tokens).decode(), CALLING)


def test_tool_use_and_thinking_blocks_whole_and_streamed_through_the_client(tmp_path):
    async def scenario() -> None:
        # A longer context than two_workers' models: the tools' instruction fills 500 tokens.
        async with serving(tmp_path, {"alias": "m", "n_ctx": 1024}) as a:
            router = make_router(worker_node("a", a.address))
            api = client(build_app(router, 0))
            ask = {"model": "m", "messages": [{"role": "user", "content": "Weather?"}],
                   "tools": [WEATHER]}  # fmt: skip
            await script_rendered(a, ask)
            thinking = {"type": "enabled", "budget_tokens": 1024}
            whole = await api.messages.create(max_tokens=200, thinking=thinking, **ask)
            assert [b.type for b in whole.content] == ["thinking", "tool_use"]
            assert whole.content[0].thinking == "Use the tool."
            use = whole.content[1]
            assert use.id.startswith("toolu_") and (use.name, use.input) == (
                "get_weather", {"city": "Paris"}
            )  # fmt: skip
            assert whole.stop_reason == "tool_use"
            async with api.messages.stream(max_tokens=200, thinking=thinking, **ask) as stream:
                kinds = [event.type async for event in stream]
                final = await stream.get_final_message()
            assert "thinking" in kinds and "input_json" in kinds
            assert [b.type for b in final.content] == ["thinking", "tool_use"]
            assert final.content[1].input == {"city": "Paris"}
            assert final.stop_reason == "tool_use"
            plain = await api.messages.create(max_tokens=200, **ask)  # thinking not asked
            assert [b.type for b in plain.content] == ["tool_use"]
            await router.clients.close()

    asyncio.run(scenario())
