"""Requests that try to stall the worker, through a real gRPC server in this process.

Issue 14: a JSON schema, a grammar or a chat template froze the worker's event loop (other
streams waited up to 85 s between tokens); non-streaming clients that gave up kept their
slots busy; invalid UTF-8 in a request got UNKNOWN."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc import aio
from llamaherd.v1 import generation_pb2 as gen_pb

from .serving import generate_request, refusal, serving, wait_until

NESTED_LOOPS = (
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    "{% for m in messages %}{{ m.content }}{% endfor %}"
)


def test_invalid_utf8_in_a_request_is_invalid_argument_naming_the_message(tmp_path):
    asyncio.run(_invalid_utf8_in_a_request_is_invalid_argument_naming_the_message(tmp_path))


async def _invalid_utf8_in_a_request_is_invalid_argument_naming_the_message(tmp_path) -> None:
    async with serving(tmp_path, {"alias": "m"}) as worker:
        good = gen_pb.TokenizeRequest(model="m", text="ok").SerializeToString()
        bad = good.replace(b"ok", b"\xff\xfe")
        for method, kind in (("Tokenize", "TokenizeRequest"), ("Generate", "GenerateRequest")):
            channel = aio.insecure_channel(worker.address)
            path = f"/llamaherd.v1.Worker/{method}"
            call = (
                channel.unary_unary(path)(bad)
                if method == "Tokenize"
                else channel.unary_stream(path)(bad)
            )
            error = await refusal(call)
            await channel.close()
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            assert f"the request is not a valid llamaherd.v1.{kind}" in error.details()
            assert "UTF-8" in error.details()


def test_a_client_that_waits_for_the_whole_stream_with_a_deadline_frees_its_slot(tmp_path):
    asyncio.run(_a_client_that_waits_for_the_whole_stream_with_a_deadline_frees_its_slot(tmp_path))


async def _a_client_that_waits_for_the_whole_stream_with_a_deadline_frees_its_slot(
    tmp_path,
) -> None:
    async with serving(tmp_path, {"alias": "m"}) as worker:
        backend = worker.models.backends["m"]
        backend.step_delay = 0.01  # 500 tokens: 5 s if not stopped
        call = worker.stub.Generate(generate_request("Hello", max_tokens=500), timeout=0.3)
        error = await refusal(call)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        gave_up = time.monotonic()
        model = worker.registry.get("m")
        await wait_until(lambda: model.figures().active == 0, timeout=1.0)
        assert time.monotonic() - gave_up < 1.0


async def _stream_gaps(worker, stop: asyncio.Event) -> list[float]:
    """Streams replies until `stop`; every gap between two chunks."""
    gaps: list[float] = []
    while not stop.is_set():
        last = time.monotonic()
        async for _ in worker.stub.Generate(generate_request("Hello", max_tokens=30)):
            now = time.monotonic()
            gaps.append(now - last)
            last = now
    return gaps


def test_hostile_requests_are_refused_while_other_streams_flow(tmp_path):
    asyncio.run(_hostile_requests_are_refused_while_other_streams_flow(tmp_path))


async def _hostile_requests_are_refused_while_other_streams_flow(tmp_path) -> None:
    async with serving(
        tmp_path, {"alias": "m", "n_parallel": 2}, {"alias": "t", "chat_template": NESTED_LOOPS}
    ) as worker:
        worker.models.backends["m"].step_delay = 0.005
        stop = asyncio.Event()
        bystander = asyncio.create_task(_stream_gaps(worker, stop))
        await asyncio.sleep(0.1)
        hostile = [
            generate_request("Hi", model="m", max_tokens=2),
            generate_request("Hi", model="m", max_tokens=2),
            generate_request("Hi", model="m", max_tokens=2),
        ]
        hostile[0].constraint.json_schema = '{"type":"string","minLength":100000000}'
        hostile[2].constraint.json_schema = "[" * 20_000 + "]" * 20_000
        hostile[1].constraint.grammar = "root ::= " + " | ".join(
            f'"w{i:06d}"' for i in range(1024 * 1024 // 12)
        )
        chat = gen_pb.ChatRequest(
            model="t", messages=[gen_pb.ChatMessage(role="user", content="hi")]
        )
        started = time.monotonic()
        errors = await asyncio.gather(
            *(refusal(worker.stub.Generate(r)) for r in hostile),
            refusal(worker.stub.Chat(chat)),
        )
        took = time.monotonic() - started
        stop.set()
        gaps = await bystander
        assert [e.code() for e in errors] == [grpc.StatusCode.INVALID_ARGUMENT] * 4, errors
        details = [e.details() for e in errors]
        assert "(max_repetition)" in details[0]
        assert "(max_grammar_bytes)" in details[1]
        assert "nests 20000 levels deep; the limit is 64 (max_json_depth)" in details[2]
        assert "(max_template_iterations)" in details[3]
        assert took < 2.0
        assert max(gaps) < 0.5, f"a bystander waited {max(gaps):.2f} s between chunks"
