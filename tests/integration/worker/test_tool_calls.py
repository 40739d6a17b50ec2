"""Tool calling on a real worker with the embedded Gemma: its template has no tool syntax, so
the tools are described in the system turn; tool_choice required makes the grammar enforce
a well-formed call, and the call's result in the history renders and is answered."""

from __future__ import annotations

import json
import re

import grpc
import jsonschema
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from support.models import GEMMA
from support.rpc import TIMEOUT, collect, rpc_error

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        # enums, not free strings: a grammar inside a string admits most of Gemma's 262k
        # tokens, which on a loaded 2-core machine can pass max_sample_ms per token
        "city": {"enum": ["Paris", "London", "Tokyo"]},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
WEATHER = gen_pb.Tool(
    name="get_weather",
    description="The current weather in a city",
    parameters_json=json.dumps(WEATHER_SCHEMA),
)
QUESTION = gen_pb.ChatMessage(role="user", content="What is the weather in Paris?")
REQUIRED = gen_pb.ToolChoice(mode=gen_pb.ToolChoice.MODE_REQUIRED)
GREEDY = gen_pb.SamplingParams(temperature=0, max_tokens=48)


def test_a_required_tool_call_then_its_result_answered(stub):
    request = gen_pb.ChatRequest(
        model=GEMMA, messages=[QUESTION], tools=[WEATHER], tool_choice=REQUIRED,
        parallel_tool_calls=False, sampling=GREEDY,
    )  # fmt: skip
    reply = collect(stub.Chat(request, timeout=TIMEOUT))
    deltas = [d for c in reply.chunks for d in c.tool_calls]
    assert len(deltas) == 1, reply
    call = deltas[0]
    assert call.index == 0 and call.name == "get_weather"
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
    jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)
    assert reply.final.finish_reason == gen_pb.FINISH_REASON_TOOL_CALLS
    assert reply.text.strip() == ""  # the call's JSON is not in the text

    history = [
        QUESTION,
        gen_pb.ChatMessage(
            role="assistant",
            tool_calls=[gen_pb.ToolCall(id=call.id, name=call.name, arguments=call.arguments)],
        ),
        gen_pb.ChatMessage(
            role="tool", content="18 C and sunny", tool_call_id=call.id, name=call.name
        ),
    ]
    follow_up = gen_pb.ChatRequest(
        model=GEMMA, messages=history, tools=[WEATHER],
        sampling=gen_pb.SamplingParams(temperature=0, max_tokens=12),
    )  # fmt: skip
    answer = collect(stub.Chat(follow_up, timeout=TIMEOUT))
    assert answer.final.finish_reason in {
        gen_pb.FINISH_REASON_STOP, gen_pb.FINISH_REASON_LENGTH, gen_pb.FINISH_REASON_TOOL_CALLS,
    }  # fmt: skip
    # The history (call and result) reached the prompt: far longer than the question alone.
    assert answer.final.usage.prompt_tokens > reply.final.usage.prompt_tokens


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tools": [gen_pb.Tool(name="bad name")]}, "tools[0].name"),
        ({"tools": [gen_pb.Tool(name="f", parameters_json='{"type": 5}')]}, "tools[0].parameters"),
        (
            {"tool_choice": gen_pb.ToolChoice(mode=gen_pb.ToolChoice.MODE_FUNCTION, function="x")},
            "tool_choice.function 'x'",
        ),
        (
            {"constraint": gen_pb.OutputConstraint(json_object=True)},
            "cannot also follow constraint",
        ),
    ],
)
def test_bad_tools_are_invalid_argument(stub, change, message):
    fields = {"tools": [WEATHER], "tool_choice": REQUIRED, **change}
    request = gen_pb.ChatRequest(model=GEMMA, messages=[QUESTION], sampling=GREEDY, **fields)
    error = rpc_error(lambda: stub.Chat(request, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()
