"""Issue 20's OpenAI surface through the official `openai` SDK and `langchain-openai`, on the
shared real cluster (tests/integration/orchestrator/conftest.py): tool calls whole and
streamed (tool_choice required or a named function, which the worker enforces with a
grammar, so even the small embedded Gemma answers with a well-formed call; one call,
parallel_tool_calls false, keeps that grammar small enough for max_sample_ms on a loaded
machine), logprobs, n,
lists of prompts, token-id prompts, embeddings from the generation model, and bad input
answered with a 400 naming the field. Each test is a few short, greedy generations."""

from __future__ import annotations

import json
from typing import Literal

import openai
import pytest
from support.models import GEMMA, GEMMA_EMBED
from support.tools import CITIES, WEATHER_FUNCTION

WEATHER = WEATHER_FUNCTION
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.fixture(scope="module")
def client(cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.coordinator.base_url, api_key="unused", max_retries=0)


def test_a_required_tool_call_whole(client):
    reply = client.chat.completions.create(
        model=GEMMA, messages=ASK, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=64,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in CITIES


def test_a_named_tool_call_streamed_then_answered(client):
    stream = client.chat.completions.create(
        model=GEMMA, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=64, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False, stream_options={"include_usage": True},
    )  # fmt: skip
    calls: dict[int, dict[str, str]] = {}
    finishes = []
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finishes += [choice.finish_reason] if choice.finish_reason else []
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function and delta.function.name) or ""
                call["arguments"] += (delta.function and delta.function.arguments) or ""
    assert finishes == ["tool_calls"]
    assert usage is not None and usage.completion_tokens > 0
    (call,) = calls.values()
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    arguments = json.loads(call["arguments"])
    # The model reads the tool's answer back from the history and replies in words.
    answer = client.chat.completions.create(
        model=GEMMA, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=8,
        messages=[
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": call["id"], "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps(arguments)},
            }]},
            {"role": "tool", "tool_call_id": call["id"], "content": "12 C and sunny"},
        ],
    )  # fmt: skip
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content


def test_langchain_bind_tools_round_trip(cluster):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: Literal["Oslo", "Paris", "Tokyo"]) -> str:
        """The current weather in a city."""
        return f"12 C in {city}"

    llm = ChatOpenAI(
        base_url=cluster.coordinator.base_url, api_key="unused", model=GEMMA,
        temperature=0, max_tokens=64, max_retries=0,
    )  # fmt: skip
    history: list = [HumanMessage("What is the weather in Oslo?")]
    bound = llm.bind_tools([get_weather], tool_choice="get_weather", parallel_tool_calls=False)
    reply = bound.invoke(history)
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather" and call["args"]["city"] in CITIES
    history += [reply, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    answer = llm.bind(max_tokens=8).invoke(history)
    assert isinstance(answer.content, str) and answer.content


def test_chat_logprobs_and_two_choices(client):
    reply = client.chat.completions.create(
        model=GEMMA, messages=[{"role": "user", "content": "Name a colour."}], n=2,
        logprobs=True, top_logprobs=3, temperature=0.8, seed=5, max_tokens=6,
    )  # fmt: skip
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        content = choice.logprobs and choice.logprobs.content
        assert content and len(content) == 6 and choice.finish_reason == "length"
        for entry in content:
            assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
            assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
    assert reply.usage is not None and reply.usage.completion_tokens == 12


def test_streamed_chat_with_two_choices_tags_each_chunk(client):
    stream = client.chat.completions.create(
        model=GEMMA, messages=[{"role": "user", "content": "Hi"}], n=2, max_tokens=4,
        temperature=0.8, seed=3, stream=True, logprobs=True,
    )  # fmt: skip
    texts: dict[int, str] = {}
    scored: dict[int, int] = {}
    finished = []
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            scored[choice.index] = scored.get(choice.index, 0) + len(
                (choice.logprobs and choice.logprobs.content) or []
            )
            finished += [choice.index] if choice.finish_reason else []
    assert sorted(finished) == [0, 1] and scored == {0: 4, 1: 4}


def test_completions_of_a_prompt_list_with_logprobs_and_echo(client):
    reply = client.completions.create(
        model=GEMMA, prompt=["The sky is", "Once upon a time"], max_tokens=4, temperature=0,
        logprobs=2,
    )  # fmt: skip
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        logprobs = choice.logprobs
        assert logprobs is not None and len(logprobs.tokens or []) == 4
        assert logprobs.text_offset == sorted(logprobs.text_offset or [])
        assert all(len(top) <= 2 for top in logprobs.top_logprobs or [])
    echoed = client.completions.create(
        model=GEMMA, prompt="Once upon a time", max_tokens=4, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "Once upon a time" + reply.choices[1].text


def test_token_id_prompts(client):
    # Gemma's BOS (2) and one more token, given as ids: no tokenizer runs, no BOS is added.
    reply = client.completions.create(
        model=GEMMA, prompt=[[2, 9259], [2, 9259, 9259]], max_tokens=3, temperature=0
    )
    assert [c.index for c in reply.choices] == [0, 1] and all(c.text for c in reply.choices)
    assert reply.usage is not None and reply.usage.prompt_tokens == 5
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=GEMMA, prompt=[2, 10**8], max_tokens=2)
    assert str(10**8) in err.value.body["message"]


def test_embeddings_from_the_generation_model(client):
    reply = client.embeddings.create(model=GEMMA, input=["a cat", "a dog"])
    assert [len(d.embedding) for d in reply.data] == [640, 640]


def test_generating_with_an_embedding_only_model_is_400_saying_why(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=GEMMA_EMBED, messages=ASK, max_tokens=2)
    assert "serves embeddings only" in err.value.message


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
         "tools[0].function.parameters"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]},
         "tools[0].function.name"),
        ({"n": 1000}, "n"),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ],
)  # fmt: skip
def test_bad_new_fields_are_400_naming_them(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=GEMMA, messages=ASK, max_tokens=2, **extra)
    assert err.value.body["param"] == param
