"""One streamed request as the client records it, with httpx's mock transport standing in
for the server's bytes."""

from __future__ import annotations

import asyncio
import itertools

import httpx

from orchestrator.bench.client import RequestSpec, Target, stream_request

TARGET = Target("http://h/v1", "m", "chat")
SPEC = RequestSpec(level=0, index=3, warmup=False, body={"model": "m", "max_tokens": 3})


def _send(handler) -> object:
    ticks = itertools.count()

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await stream_request(client, TARGET, SPEC, lambda: float(next(ticks)))

    return asyncio.run(go())


def _sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


def test_content_chunks_are_timed_and_usage_read():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        assert b'"stream":true' in request.content.replace(b" ", b"")
        body = _sse(
            '{"choices":[{"delta":{"role":"assistant"}}]}',  # no content: not a token
            '{"choices":[{"delta":{"content":"Hi"}}]}',
            '{"choices":[{"delta":{"content":" there"}}]}',
            '{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3}}',
            "[DONE]",
        )
        return httpx.Response(200, content=body, headers={"x-llamaherd-node": "w1"})

    record = _send(handler)
    assert record.ok and record.node == "w1" and record.index == 3
    # the clock ticks once per line read, blank separators included: lines 1-5 are role, "",
    # Hi, "", there
    assert record.sent_s == 0 and record.chunk_s == (3.0, 5.0)
    assert record.output_tokens == 3 and record.prompt_tokens == 9
    assert record.itls == [1.0]  # 2 chunks carried 3 tokens: the one gap holds 2


def test_a_refusal_is_recorded_with_its_status_and_message():
    record = _send(lambda r: httpx.Response(429, json={"error": {"message": "at capacity"}}))
    assert not record.ok and record.error == "http_429" and record.detail == "at capacity"


def test_an_error_event_mid_stream_is_recorded():
    body = _sse('{"choices":[{"delta":{"content":"a"}}]}', '{"error":{"message":"worker died"}}')
    record = _send(lambda r: httpx.Response(200, content=body))
    assert record.error == "stream_error" and record.detail == "worker died"


def test_a_stream_without_content_is_an_error():
    record = _send(lambda r: httpx.Response(200, content=_sse("[DONE]")))
    assert record.error == "no_content"


def test_a_dropped_connection_is_recorded():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    record = _send(handler)
    assert record.error == "disconnected" and "peer closed" in record.detail


def test_a_request_counts_as_sent_when_its_headers_go_out(endpoint):
    """After the client got its connection, as GuideLLM times it: the first clock reading
    (before connecting) is replaced by the one httpcore's send_request_headers event takes."""
    ticks = itertools.count()
    target = Target(endpoint.url, "gemma")
    spec = RequestSpec(0, 0, False, {"model": "gemma", "prompt": "a b", "max_tokens": 2})

    async def go():
        async with httpx.AsyncClient() as client:
            return await stream_request(client, target, spec, lambda: float(next(ticks)))

    record = asyncio.run(go())
    assert record.ok and record.sent_s == 1.0 and record.chunk_s[0] == 2.0
