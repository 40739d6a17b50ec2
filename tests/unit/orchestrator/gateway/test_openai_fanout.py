"""The OpenAI HTTP API's replies of several choices, against real Worker services on the fake
backend: each prompt of a completion is its own generation (on whichever replica routing
picks), and the reply holds their choices in prompt order, whole or merged into one stream;
a chat's n sequences come from one generation, its stream ending after the last of them.

The fake model writes DEFAULT_REPLY[position % 26] at every position, so each prompt's text
is known from its length alone."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from openai.types import Completion
from support.fake_backend import DEFAULT_REPLY

from orchestrator.gateway.http_api import build_app
from tests.unit.orchestrator.gateway.asgi import Reply, call
from tests.unit.orchestrator.gateway.relay_support import make_router, two_workers, worker_node
from tests.unit.worker.api.serving import serving

PROMPTS = ["ab", "abcd", "a"]


def _expected(prompt: str, tokens: int) -> str:
    return "".join(chr(DEFAULT_REPLY[(len(prompt) + i) % 26]) for i in range(tokens))


def _post(tmp_path, body: dict[str, Any]) -> Reply:  # type: ignore[no-untyped-def]
    return _post_to(tmp_path, "/v1/completions", body)


def _post_to(tmp_path, path: str, body: dict[str, Any]) -> Reply:  # type: ignore[no-untyped-def]
    async def scenario() -> Reply:
        async with two_workers(tmp_path, step_delay=0.001) as (a, b):
            router = make_router(worker_node("a", a.address), worker_node("b", b.address))
            reply = await call(build_app(router, 0), path, json.dumps(body).encode())
            await router.clients.close()
            return reply

    return asyncio.run(scenario())


def _events(reply: Reply) -> list[Any]:
    lines = [line[6:] for line in reply.body.decode().split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_a_list_of_prompts_gets_one_choice_each_in_prompt_order(tmp_path):
    reply = _post(tmp_path, {"model": "m", "prompt": PROMPTS, "max_tokens": 5})
    assert reply.status == 200, reply.body
    parsed = Completion.model_validate(reply.json())
    assert [(c.index, c.text) for c in parsed.choices] == [
        (i, _expected(p, 5)) for i, p in enumerate(PROMPTS)
    ]
    assert parsed.usage is not None
    assert parsed.usage.prompt_tokens == sum(len(p) for p in PROMPTS)  # the fake: a byte a token
    assert parsed.usage.completion_tokens == 15


def test_a_streamed_list_of_prompts_merges_their_chunks_by_choice(tmp_path):
    body = {"model": "m", "prompt": PROMPTS, "max_tokens": 6, "echo": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    reply = _post(tmp_path, body)
    assert reply.status == 200, reply.body
    events = _events(reply)
    texts: dict[int, str] = {}
    finished = []
    for event in events[:-1]:
        (choice,) = event["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"]:
            finished.append(choice["index"])
    assert sorted(finished) == [0, 1, 2]
    assert texts == {i: p + _expected(p, 6) for i, p in enumerate(PROMPTS)}, "echo first"
    usage = events[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 18
    assert usage["usage"]["prompt_tokens"] == 7


def test_token_id_prompts_reach_the_worker_and_a_bad_prompt_is_400(tmp_path):
    reply = _post(tmp_path, {"model": "m", "prompt": [[1, 2], "x"], "max_tokens": 2})
    assert reply.status == 200, reply.body
    assert [c["index"] for c in reply.json()["choices"]] == [0, 1]
    (tmp_path / "again").mkdir()
    refused = _post(tmp_path / "again", {"model": "m", "prompt": [[1, -2]], "max_tokens": 2})
    assert refused.status == 400 and refused.json()["error"]["param"] == "prompt[0]"


def test_a_streamed_chat_with_two_choices_ends_after_both(tmp_path):
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4,
            "n": 2, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip

    async def scenario() -> Reply:
        async with serving(tmp_path, {"alias": "m", "n_parallel": 2}) as worker:
            router = make_router(worker_node("a", worker.address))
            reply = await call(
                build_app(router, 0), "/v1/chat/completions", json.dumps(body).encode()
            )
            await router.clients.close()
            return reply

    reply = asyncio.run(scenario())
    assert reply.status == 200, reply.body
    events = _events(reply)
    roles = [e["choices"][0]["index"] for e in events[:2] if "role" in e["choices"][0]["delta"]]
    assert roles == [0, 1]
    texts: dict[int, str] = {}
    finished = []
    for event in events[2:-1]:
        (choice,) = event["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["delta"].get("content", "")
        finished += [choice["index"]] if choice["finish_reason"] else []
    assert sorted(finished) == [0, 1] and texts[0] == texts[1], "the fake writes by position"
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == 8 and usage["prompt_tokens"] > 0


def test_one_refused_prompt_refuses_the_request_whole_or_streamed(tmp_path):
    for stream in (False, True):
        where = tmp_path / str(stream)
        where.mkdir()
        body = {"model": "m", "prompt": ["ab", [10**6]], "max_tokens": 50, "stream": stream}
        reply = _post(where, body)
        assert reply.status == 400, reply.body
        assert str(10**6) in reply.json()["error"]["message"]
