"""A stream's continuation on another replica: the request it sends (route_requests), a
chat continued through the Router with real Worker services, and the SSE chunk that tells
an HTTP client its stream moved."""

from __future__ import annotations

import asyncio
import json

from llamaherd.v1 import generation_pb2 as gen_pb
from support.fake_backend import DEFAULT_REPLY

from orchestrator.gateway.http_api import build_app
from orchestrator.gateway.route_requests import continued, resumable
from orchestrator.gateway.router import Progress
from orchestrator.routing.request import RouteRequest
from orchestrator.worker_client import WorkerClient, WorkerStream
from tests.unit.orchestrator.gateway.asgi import call
from tests.unit.orchestrator.gateway.relay_support import make_router, two_workers, worker_node
from tests.unit.worker.api.serving import TEMPLATE, serving

SAMPLING = gen_pb.SamplingParams(temperature=0.7, seed=5, max_tokens=10, stop=["\n"])


def test_a_completion_continues_from_its_prompt_plus_the_text_sent():
    request = gen_pb.GenerateRequest(model="m", prompt="Once", sampling=SAMPLING)
    moved = continued(request, " upon", 2)
    assert isinstance(moved, gen_pb.GenerateRequest)
    assert moved.prompt == "Once upon" and moved.sampling.max_tokens == 8
    # Same sampling otherwise; the original is untouched.
    moved.sampling.max_tokens = SAMPLING.max_tokens
    assert moved.sampling == SAMPLING and request.prompt == "Once"


def test_a_chat_continues_its_reply_and_keeps_an_earlier_prefix():
    message = gen_pb.ChatMessage(role="user", content="Hi")
    request = gen_pb.ChatRequest(
        model="m", messages=[message], sampling=SAMPLING, assistant_prefix="Well,"
    )
    moved = continued(request, " hello", 1)
    assert isinstance(moved, gen_pb.ChatRequest)
    assert list(moved.messages) == [message] and moved.assistant_prefix == "Well, hello"
    assert moved.sampling.max_tokens == 9


def test_max_tokens_stays_positive_and_unset_stays_unset():
    request = gen_pb.GenerateRequest(model="m", prompt="x", sampling=SAMPLING)
    assert continued(request, "abcdefghij", 10).sampling.max_tokens == 1
    unbounded = gen_pb.GenerateRequest(model="m", prompt="x")
    assert not continued(unbounded, "ab", 2).sampling.HasField("max_tokens")
    assert continued(request, "", 0) is request


def test_constrained_requests_are_not_resumable():
    plain = gen_pb.GenerateRequest(model="m", prompt="x")
    constrained = gen_pb.GenerateRequest(
        model="m", prompt="x", constraint=gen_pb.OutputConstraint(json_object=True)
    )
    assert resumable(plain) and not resumable(constrained)


def test_n_logprobs_and_tools_requests_are_not_resumable():
    """A continuation cannot resume n sequences, re-score tokens already sent, or see
    tool calls parsed out of the text: those streams are retried only before they start."""
    assert not resumable(gen_pb.GenerateRequest(model="m", prompt="x", n=2))
    assert resumable(gen_pb.GenerateRequest(model="m", prompt="x", n=1))
    scored = gen_pb.SamplingParams(top_logprobs=0)
    assert not resumable(gen_pb.GenerateRequest(model="m", prompt="x", sampling=scored))
    tools = gen_pb.ChatRequest(model="m", tools=[gen_pb.Tool(name="f")])
    assert not resumable(tools) and resumable(gen_pb.ChatRequest(model="m"))


def test_a_chat_stream_moves_with_its_reply_as_the_assistant_prefix(tmp_path):
    async def scenario() -> None:
        chat_model = {"alias": "m", "chat_template": TEMPLATE}
        async with (
            serving(tmp_path / "a", chat_model) as a,
            serving(tmp_path / "b", chat_model) as b,
        ):
            a.models.backends["m"].step_delay = b.models.backends["m"].step_delay = 0.01
            router = make_router(worker_node("a", a.address), worker_node("b", b.address))
            request = gen_pb.ChatRequest(
                model="m",
                messages=[gen_pb.ChatMessage(role="user", content="Hi")],
                sampling=gen_pb.SamplingParams(max_tokens=8),
            )
            opened: list[gen_pb.ChatRequest] = []

            def open_call(
                worker: WorkerClient, sent: Progress
            ) -> WorkerStream[gen_pb.GenerationChunk]:
                chat = continued(request, sent.text, sent.tokens)
                assert isinstance(chat, gen_pb.ChatRequest)
                opened.append(chat)
                return worker.chat(chat)

            text, nodes = "", []
            async for node, chunk in router.stream(RouteRequest("m"), open_call):
                text += chunk.text
                nodes.append(node)
                if len(text) == 3 and node == "a":
                    await a.server.stop(0)
            start = len("[user]Hi[assistant]")
            assert text == "".join(chr(DEFAULT_REPLY[(start + i) % 26]) for i in range(8))
            assert opened[1].assistant_prefix == text[:3] and nodes[-1] == "b"
            await router.clients.close()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    asyncio.run(scenario())


def test_an_sse_stream_that_moves_says_so_in_the_next_chunk(tmp_path):
    async def scenario() -> None:
        async with two_workers(tmp_path, step_delay=0.02) as (a, b):
            router = make_router(worker_node("a", a.address), worker_node("b", b.address))
            app = build_app(router, 0)

            async def kill_a() -> None:
                await asyncio.sleep(0.15)  # some tokens in, well before the 30th
                await a.server.stop(0)

            killer = asyncio.ensure_future(kill_a())
            body = {"model": "m", "prompt": "ab", "max_tokens": 30, "stream": True}
            reply = await call(app, "/v1/completions", json.dumps(body).encode())
            await killer
            events = [
                json.loads(line[len("data: ") :])
                for line in reply.body.decode().splitlines()
                if line.startswith("data: {")
            ]
            marked = [e for e in events if "llamaherd" in e]
            assert len(marked) == 1, events
            assert marked[0]["llamaherd"] == {"migrated_from": "a", "migrated_to": "b"}
            assert reply.headers["x-llamaherd-node"] == "a"
            text = "".join(e["choices"][0]["text"] for e in events)
            assert text == "".join(chr(DEFAULT_REPLY[(2 + i) % 26]) for i in range(30))
            assert events[-1]["choices"][0]["finish_reason"] == "length"
            await router.clients.close()

    asyncio.run(scenario())
