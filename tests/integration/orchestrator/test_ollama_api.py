"""Ollama's API on a real cluster's gateway, through the official `ollama` client."""

from __future__ import annotations

import json
import math

import httpx
import ollama
import pytest
from support.models import GEMMA, GEMMA_EMBED, N_CTX
from support.tools import WEATHER_FUNCTION

NODE_HEADER = "x-llamaherd-node"
HI = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def client(cluster) -> ollama.Client:
    return ollama.Client(cluster.coordinator.base_url.removesuffix("/v1"), timeout=60)


@pytest.fixture(scope="module")
def http(cluster):
    root = cluster.coordinator.base_url.removesuffix("/v1")
    with httpx.Client(base_url=root, timeout=60) as session:
        yield session


def test_chat_streams_ndjson_then_answers_whole(client):
    parts = list(client.chat(GEMMA, HI, stream=True, options={"num_predict": 12, "temperature": 0}))
    assert sum(1 for p in parts if p.message.content) > 2, "the reply must arrive in pieces"
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    last = parts[-1]
    assert last.done_reason == "length" and last.eval_count == 12
    assert last.prompt_eval_count and last.prompt_eval_count > 5
    assert last.eval_duration and last.total_duration and last.total_duration >= last.eval_duration
    whole = client.chat(f"{GEMMA}:latest", HI, stream=False, options={"num_predict": 5})
    assert whole.model == f"{GEMMA}:latest" and whole.message.role == "assistant"
    assert whole.message.content and whole.eval_count == 5 and whole.done


def test_generate_streams_and_answers_whole_with_a_json_format(client):
    text = "".join(
        p.response or ""
        for p in client.generate(
            GEMMA, "The sky is", raw=True, stream=True, options={"num_predict": 8}
        )
    )
    assert text.strip()
    # Not raw: the prompt is rendered as a chat turn, as Ollama renders it. On a loaded
    # machine the worker may refuse the grammar's slow sampling (max_sample_ms, a 400 that
    # names it): that refusal shows the format reached the worker as a grammar too.
    try:
        reply = client.generate(
            GEMMA, "Give a person's name and age as JSON.", format="json", stream=False,
            options={"num_predict": 40, "temperature": 0},
        )  # fmt: skip
    except ollama.ResponseError as exc:
        assert exc.status_code == 400 and "grammar" in exc.error and "max_sample_ms" in exc.error
        return
    assert reply.done and reply.response is not None
    if reply.done_reason == "stop":
        assert isinstance(json.loads(reply.response), dict)
    else:
        assert reply.response.lstrip().startswith("{")


def test_embed_and_the_older_embeddings(client):
    reply = client.embed(f"{GEMMA_EMBED}:latest", ["a cat", "a dog"])
    assert [len(v) for v in reply.embeddings] == [640, 640]
    assert math.sqrt(sum(x * x for x in reply.embeddings[0])) == pytest.approx(1, abs=1e-4)
    assert reply.prompt_eval_count and reply.prompt_eval_count >= 2
    old = client.embeddings(GEMMA_EMBED, "a cat")
    assert len(old.embedding) == 640
    norm = math.sqrt(sum(x * x for x in old.embedding))
    assert norm != pytest.approx(1, abs=1e-3), "the older form's vectors are not normalised"
    assert [x / norm for x in old.embedding] == pytest.approx(reply.embeddings[0], abs=1e-4)


def test_a_generation_model_embeds_with_no_config_step(client):
    reply = client.embed(GEMMA, ["a cat", "a dog"])
    assert [len(v) for v in reply.embeddings] == [640, 640]
    assert math.sqrt(sum(x * x for x in reply.embeddings[1])) == pytest.approx(1, abs=1e-4)
    again = client.embed(GEMMA, "a cat")
    assert again.embeddings[0] == pytest.approx(reply.embeddings[0], abs=1e-5)


WEATHER = WEATHER_FUNCTION
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"num_predict": 64, "temperature": 0}


def test_a_forced_tool_call_then_its_result_through_the_client(client, http):
    """Ollama has no tool_choice; llamaherd takes OpenAI's (and parallel_tool_calls) as
    extensions (sent here over
    plain HTTP, the reply read by the client's own types), which the worker enforces with a
    grammar. The round trip's second half goes through the client itself."""
    body = {"model": GEMMA, "messages": ASK, "tools": [WEATHER], "tool_choice": "required",
            "parallel_tool_calls": False, "stream": False, "options": GREEDY}  # fmt: skip
    first = ollama.ChatResponse.model_validate(http.post("/api/chat", json=body).json())
    assert first.done and first.done_reason == "stop"
    [call] = first.message.tool_calls or []
    assert call.function.name == "get_weather" and isinstance(call.function.arguments["city"], str)
    answer = client.chat(
        GEMMA, tools=[WEATHER], options={"num_predict": 8, "temperature": 0},
        messages=[*ASK, first.message,
                  {"role": "tool", "content": "18 C and sunny", "tool_name": "get_weather"}],
    )  # fmt: skip
    assert answer.done and answer.message.content and not answer.message.tool_calls


def test_a_forced_tool_call_streamed_comes_whole_before_the_last_line(http):
    body = {"model": GEMMA, "messages": ASK, "tools": [WEATHER], "options": GREEDY,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False}  # fmt: skip
    with http.stream("POST", "/api/chat", json=body) as reply:
        lines = [ollama.ChatResponse.model_validate_json(line) for line in reply.iter_lines()]
    calls = [c for line in lines for c in line.message.tool_calls or []]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert lines[-1].done and not lines[-1].message.tool_calls


def test_think_and_logprobs(client):
    reply = client.chat(
        GEMMA, HI, think=True, logprobs=True, top_logprobs=2,
        options={"num_predict": 4, "temperature": 0},
    )  # fmt: skip
    assert reply.message.thinking is None  # Gemma does not reason: nothing to separate
    entries = reply.logprobs or []
    assert len(entries) == 4
    for entry in entries:
        tops = entry.top_logprobs or []
        assert len(tops) == 2 and tops[0].logprob >= tops[1].logprob
        assert entry.logprob == pytest.approx(tops[0].logprob, abs=1e-4)  # greedy: the top one
    assert "".join(e.token for e in entries) == reply.message.content


def test_list_ps_show_and_version(client, http):
    names = {m.model for m in client.list().models}
    assert {f"{GEMMA}:latest", f"{GEMMA_EMBED}:latest"} <= names
    assert "nowhere:latest" not in names
    running = {m.name: m for m in client.ps().models}
    assert running[f"{GEMMA}:latest"].context_length == N_CTX
    shown = client.show(GEMMA)
    assert shown.capabilities == ["completion", "tools"] and shown.details is not None
    assert shown.details.family == "gemma3"
    assert client.show(GEMMA_EMBED).capabilities == ["embedding"]
    version = http.get("/api/version")
    assert version.status_code == 200 and version.json()["version"]


def test_refusals_are_ollamas_shape(client, http):
    with pytest.raises(ollama.ResponseError) as info:
        client.chat("no-such-model", HI)
    assert (info.value.status_code, info.value.error) == (404, "model 'no-such-model' not found")
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(GEMMA, HI, options={"num_ctx": N_CTX * 4})
    assert info.value.status_code == 400 and "options.num_ctx" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(GEMMA, HI, options={"temperature": 5})
    assert info.value.status_code == 400 and "temperature" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.pull(GEMMA)
    assert info.value.status_code == 501 and "llamaherd models add" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.delete(GEMMA)
    assert info.value.status_code == 501 and "llamaherd models rm" in info.value.error
    placed_nowhere = http.post("/api/chat", json={"model": "nowhere", "messages": HI})
    assert placed_nowhere.status_code == 503
    assert "lacks labels gpu-80g" in placed_nowhere.json()["error"]
    ignored = http.post(
        "/api/chat",
        json={"model": GEMMA, "messages": [], "keep_alive": "5m"},
    )
    assert ignored.status_code == 200 and ignored.json()["done_reason"] == "load"
    assert "keep_alive" in ignored.headers["x-llamaherd-ignored"]
