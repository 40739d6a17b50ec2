"""The OpenAI-compatible HTTP API, through the official `openai` client and raw HTTP."""

from __future__ import annotations

import base64
import json
import struct
import time

import httpx
import openai
import pytest
from support.models import GEMMA, GEMMA_EMBED

NODE_HEADER = "x-llamaherd-node"


@pytest.fixture(scope="module")
def client(cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.coordinator.base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(cluster):
    with httpx.Client(base_url=cluster.coordinator.base_url, timeout=60) as session:
        yield session


def test_models_lists_what_the_cluster_serves(client):
    models = {m.id: m for m in client.models.list()}
    assert {GEMMA, GEMMA_EMBED} <= set(models)
    assert "nowhere" not in models
    assert models[GEMMA].owned_by == "llamaherd"
    assert client.models.retrieve(GEMMA).id == GEMMA


def test_chat_streams_through_the_gateway(client):
    stream = client.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for d in deltas if d) > 2, "the reply must arrive in several chunks"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["length"]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 16 and usage.prompt_tokens > 5


def test_chat_without_streaming_matches_the_streamed_text(client):
    # Compared on one node, back to back: the worker replays an exact repeat from its saved
    # logits. Across nodes the texts may differ, as in llama-server with cache_prompt: each
    # node's prompt-cache history changes the prefill batch shapes and so the rounding.
    args = {
        "model": GEMMA,
        "messages": [{"role": "user", "content": "Count to five."}],
        "max_tokens": 20,
        "temperature": 0,
    }
    by_node: dict[str, dict[str, str]] = {}
    for streaming in (False, True, True, False, False, True):
        if streaming:
            with client.chat.completions.with_streaming_response.create(**args, stream=True) as r:
                node = r.headers[NODE_HEADER]
                text = "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices)
        else:
            raw = client.chat.completions.with_raw_response.create(**args)
            node, whole = raw.headers[NODE_HEADER], raw.parse()
            assert whole.choices[0].message.role == "assistant"
            assert whole.usage.completion_tokens == 20
            text = whole.choices[0].message.content
        texts = by_node.setdefault(node, {})
        texts.setdefault("stream" if streaming else "whole", text)
        if len(texts) == 2:
            assert texts["whole"] == texts["stream"]
            return
    pytest.fail(f"no node served both a streamed and a whole reply: {sorted(by_node)}")


def test_completions_stream_text(client):
    stream = client.completions.create(
        model=GEMMA, prompt="The sky is", max_tokens=8, temperature=0, stream=True
    )
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text.strip()


def test_json_object_response_format_yields_json(client):
    try:
        reply = client.chat.completions.create(
            model=GEMMA,
            messages=[{"role": "user", "content": "Give a person's name and age as JSON."}],
            response_format={"type": "json_object"},
            max_tokens=40,
            temperature=0,
        )
    except openai.BadRequestError as exc:
        # On a loaded machine the worker may refuse the grammar's slow sampling (a 400
        # naming max_sample_ms): the refusal shows the format reached it as a grammar.
        assert "grammar" in exc.message and "max_sample_ms" in exc.message
        return
    content = reply.choices[0].message.content
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:
        assert content.lstrip().startswith("{")


def test_embeddings_as_floats_and_base64(client, http):
    floats = client.embeddings.create(model=GEMMA_EMBED, input=["a cat", "a dog"])
    assert [len(d.embedding) for d in floats.data] == [640, 640]
    raw = http.post(
        "/embeddings", json={"model": GEMMA_EMBED, "input": "a cat", "encoding_format": "base64"}
    )
    assert raw.status_code == 200 and raw.headers[NODE_HEADER] == "worker-b"
    vector = struct.unpack("<640f", base64.b64decode(raw.json()["data"][0]["embedding"]))
    assert vector == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_unknown_model_is_404_in_the_openai_envelope(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    body = err.value.body
    assert body["code"] == "model_not_found" and "no-such-model" in body["message"]


def test_malformed_json_is_400(http):
    response = http.post(
        "/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_wrong_field_type_is_400_naming_the_field(http):
    response = http.post(
        "/chat/completions",
        json={"model": GEMMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"


def test_out_of_range_sampling_is_400_with_the_workers_reason(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=GEMMA, messages=[{"role": "user", "content": "hi"}], temperature=5
        )
    assert "temperature" in err.value.body["message"]


def test_model_placed_nowhere_is_503_with_reasons(http):
    body = {"model": "nowhere", "messages": [{"role": "user", "content": "x"}]}
    response = http.post("/chat/completions", json=body)
    assert response.status_code == 503
    assert "lacks labels gpu-80g" in response.json()["error"]["message"]


def test_unknown_route_is_404_in_the_envelope(http):
    response = http.get("/nope")
    assert response.status_code == 404 and "error" in response.json()


def test_client_disconnect_stops_the_generation(cluster, http):
    body = {
        "model": GEMMA,
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 500,
        "stream": True,
    }
    with http.stream("POST", "/chat/completions", json=body) as response:
        node = response.headers[NODE_HEADER]
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
    # The worker that served it goes idle within a moment, not 500 tokens later.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        nodes = {n.status.node_id: n.status for n in cluster.coordinator.status().nodes}
        busy = sum(m.active_requests for m in nodes[node].models)
        if busy == 0:
            break
        time.sleep(0.1)
    assert busy == 0, "the worker kept generating for a client that left"
