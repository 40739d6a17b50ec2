"""Anthropic's Messages API on a real cluster's gateway, through the official `anthropic`
client and the embedded Gemma."""

from __future__ import annotations

import anthropic
import pytest
from support.models import GEMMA
from support.tools import WEATHER_DESCRIPTION, WEATHER_NAME, WEATHER_PARAMETERS

HI = [{"role": "user", "content": "Name a colour."}]
# The SDK's create() no longer takes sampling fields (newer Claude models fix them); other
# clients still send them, and the gateway applies them.
GREEDY = {"extra_body": {"temperature": 0, "top_k": 1}}


@pytest.fixture(scope="module")
def client(cluster) -> anthropic.Anthropic:
    # The SDK adds /v1/messages itself; the gateway's key check is off on this cluster.
    root = cluster.coordinator.base_url.removesuffix("/v1")
    return anthropic.Anthropic(base_url=root, api_key="unused", timeout=60, max_retries=0)


def test_a_message_whole_then_streamed_and_its_prompt_counted(client):
    whole = client.messages.create(
        model=GEMMA, max_tokens=8, system="Answer in one word.", messages=HI, **GREEDY
    )
    assert whole.model == GEMMA and whole.role == "assistant" and whole.id.startswith("msg_")
    assert whole.content[0].type == "text" and whole.content[0].text
    assert whole.stop_reason in ("max_tokens", "end_turn")
    assert whole.usage.output_tokens <= 8 and whole.usage.input_tokens > 5
    counted = client.messages.count_tokens(model=GEMMA, system="Answer in one word.", messages=HI)
    assert counted.input_tokens == whole.usage.input_tokens

    with client.messages.stream(model=GEMMA, max_tokens=12, messages=HI) as stream:
        pieces = [text for text in stream.text_stream]
        final = stream.get_final_message()
    assert sum(1 for p in pieces if p) > 2, "the reply must arrive in pieces"
    assert final.content[0].text == "".join(pieces)
    assert final.usage.input_tokens > 5 and final.usage.output_tokens >= 1


def test_a_stop_sequence_ends_the_reply_and_is_named(client):
    first = client.messages.create(model=GEMMA, max_tokens=16, messages=HI, **GREEDY)
    text = first.content[0].text
    words = [w for w in text.split() if len(w) > 2]
    if len(words) < 2:
        pytest.skip(f"the greedy reply has too few words to stop on: {text!r}")
    stop = words[1]
    again = client.messages.create(
        model=GEMMA, max_tokens=16, messages=HI, stop_sequences=[stop], **GREEDY
    )
    assert again.stop_reason == "stop_sequence" and again.stop_sequence == stop
    said = again.content[0].text if again.content else ""
    assert stop not in said and text.startswith(said)


def test_refusals_are_anthropics_errors(client):
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=4, messages=HI)
    assert "no-such-model" in missing.value.message
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model=GEMMA, max_tokens=4, messages=HI, tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_time"},
        )  # fmt: skip
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert 'tool_choice.name "get_time" is not among tools (get_weather)' in refused.value.message
    for tool, field in (({"input_schema": {"type": "object"}}, "tools[0].name is required"),
                        ({"name": "f", "input_schema": {"type": "array"}},
                         "tools[0].input_schema must be a JSON Schema object")):  # fmt: skip
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.create(model=GEMMA, max_tokens=4, messages=HI, tools=[tool])
        assert field in refused.value.message


WEATHER = {
    "name": WEATHER_NAME,
    "description": WEATHER_DESCRIPTION,
    "input_schema": WEATHER_PARAMETERS,
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_a_forced_tool_use_then_its_result_answered(client):
    """tool_choice any is grammar-enforced on the worker: even the small Gemma calls."""
    first = client.messages.create(
        model=GEMMA, max_tokens=64, messages=ASK, tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        thinking={"type": "enabled", "budget_tokens": 1024}, **GREEDY,
    )  # fmt: skip
    assert first.stop_reason == "tool_use", first
    [use] = [block for block in first.content if block.type == "tool_use"]
    assert use.id.startswith("toolu_") and use.name == "get_weather"
    assert isinstance(use.input, dict) and isinstance(use.input["city"], str)
    assert not [b for b in first.content if b.type == "thinking"]  # Gemma does not reason
    answer = client.messages.create(
        model=GEMMA, max_tokens=8, tools=[WEATHER], **GREEDY,
        messages=[*ASK, {"role": "assistant", "content": first.content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                "content": "18 C and sunny"}]}],
    )  # fmt: skip
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.content[0].type == "text"


def test_a_named_tool_use_streamed(client):
    with client.messages.stream(
        model=GEMMA, max_tokens=64, messages=ASK, tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        **GREEDY,
    ) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "content_block_start" in kinds and kinds[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    [use] = [block for block in final.content if block.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input["city"], str)
