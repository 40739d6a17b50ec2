"""Chats offering tools: rendered through a template with tool support as Hugging Face
templates expect, through one without as the generic instruction; and a whole Chat call on
the servicer (fake llama.cpp backend) returning tool-call deltas and reasoning."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb

from common.errors import InvalidArgument
from tests.unit.worker.api.serving import TEMPLATE, refusal, serving
from worker.engine.generation import ChatMessage, Tool, ToolCall, ToolChoice, ToolChoiceMode, Tools
from worker.engine.limits import RequestLimits
from worker.llamacpp.chat_templates import RENDER_LIMITS
from worker.models.chat import BuiltinTemplate, JinjaTemplate, render_chat
from worker.models.tool_calls import ToolFormat, check_tools

# The tool parts of Qwen 2.5's template (Hermes style), as its GGUF carries them.
HERMES = """{%- if tools %}<|im_start|>system
{{ messages[0].content if messages[0].role == 'system' else 'You are a helpful assistant.' }}

# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
For each function call, return a json object within <tool_call></tool_call> XML tags.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{%- for tool_call in message.tool_calls %}
<tool_call>
{"name": "{{ tool_call.function.name }}", "arguments": {{ tool_call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif not (tools and message.role == 'system') %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}<|im_start|>assistant
"""
WEATHER = Tool(
    "get_weather",
    "Current weather",
    json.dumps({"type": "object", "properties": {"city": {"type": "string"}}}),
)
TOOLS = Tools((WEATHER,))
SCHEMAS = check_tools(TOOLS, RequestLimits())
HISTORY = [
    ChatMessage("user", "Weather in Paris?"),
    ChatMessage("assistant", "", (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
    ChatMessage("tool", "18 C", tool_call_id="call_1", name="get_weather"),
]


def test_a_hermes_template_renders_the_tools_and_the_history_natively():
    template = JinjaTemplate(HERMES, "gguf", "", "")
    assert template.tool_format is ToolFormat.HERMES
    rendered = render_chat(template, HISTORY, TOOLS, SCHEMAS)
    assert rendered.tool_format is ToolFormat.HERMES
    assert '{"type": "function", "function": {"name": "get_weather"' in rendered.text
    # the call's arguments reached the template as an object, not a string
    assert '"arguments": {"city": "Paris"}' in rendered.text
    assert "<tool_response>\n18 C\n</tool_response>" in rendered.text
    assert "You can call these tools" not in rendered.text


def test_a_jinja_template_that_ignores_tools_gets_the_generic_instruction():
    template = JinjaTemplate(TEMPLATE, "config", "", "")
    rendered = render_chat(template, HISTORY, TOOLS, SCHEMAS)
    assert rendered.tool_format is ToolFormat.GENERIC
    assert rendered.text.startswith("[system]You can call these tools")
    assert '"name": "get_weather"' in rendered.text
    assert '[assistant]{"tool_calls": [{"name": "get_weather"' in rendered.text
    assert "[user]Result of tool get_weather  (call call_1):\n18 C" in rendered.text


def test_a_builtin_template_gets_the_generic_instruction_in_its_system_turn():
    rendered = render_chat(BuiltinTemplate("gemma", "fallback:gemma"), HISTORY[:1], TOOLS, SCHEMAS)
    assert rendered.tool_format is ToolFormat.GENERIC
    # Gemma has no system turn: llama.cpp puts it at the start of the first user turn
    assert rendered.text.startswith("<start_of_turn>user\nYou can call these tools")
    assert "Weather in Paris?" in rendered.text


def test_a_chat_without_tools_renders_as_before():
    template = JinjaTemplate(TEMPLATE, "config", "", "")
    messages = [ChatMessage("user", "Hi")]
    assert render_chat(template, messages, Tools(), {}).text == template.render(messages)


def test_tojson_writes_any_content_but_refuses_a_huge_indent():
    messages = [ChatMessage("user", "{ 99999999999999999 } %99999999999d")]
    text = JinjaTemplate("{{ messages | tojson }}", "config", "", "").render(messages)
    assert "99999999999999999" in text
    huge = JinjaTemplate("{{ messages | tojson(indent=10**9) }}", "config", "", "")
    with pytest.raises(InvalidArgument, match="max_prompt_bytes"):
        huge.render(messages)


def test_the_render_limits_cover_the_tools():
    many = Tools(tuple(Tool(f"f{i}", "d" * 200) for i in range(100)))
    template = JinjaTemplate(HERMES, "gguf", "", "")
    token = RENDER_LIMITS.set(RequestLimits(max_prompt_bytes=10_000))
    try:
        with pytest.raises(InvalidArgument, match="max_prompt_bytes"):
            render_chat(template, HISTORY, many, check_tools(many, RequestLimits()))
    finally:
        RENDER_LIMITS.reset(token)


# ---- through the servicer --------------------------------------------------------------------
def _tool_request(**fields):
    return gen_pb.ChatRequest(
        model="m",
        messages=[gen_pb.ChatMessage(role="user", content="Weather in Paris?")],
        tools=[gen_pb.Tool(name=WEATHER.name, parameters_json=WEATHER.parameters_json)],
        **fields,
    )


def test_chat_streams_a_parsed_call_with_finish_reason_tool_calls(tmp_path):
    async def scenario() -> None:
        async with serving(
            tmp_path, {"alias": "m", "chat_template": HERMES, "n_ctx": 1024, "n_parallel": 1}
        ) as worker:
            request = _tool_request()
            prompt = render_chat(
                JinjaTemplate(HERMES, "config", "", ""),
                [ChatMessage("user", "Weather in Paris?")],
                Tools((Tool(WEATHER.name, "", WEATHER.parameters_json),)),
                SCHEMAS,
            ).text
            worker.models.backends["m"].script(
                prompt,
                "<think>Use the tool.</think>\nChecking.<tool_call>\n"
                '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            )
            chunks = [c async for c in worker.stub.Chat(request)]
            calls = [d for c in chunks for d in c.tool_calls]
            assert [(d.index, d.name, json.loads(d.arguments)) for d in calls] == [
                (0, "get_weather", {"city": "Paris"})
            ]
            assert "".join(c.text for c in chunks) == "Checking."
            assert "".join(c.reasoning for c in chunks) == "Use the tool."
            assert chunks[-1].finish_reason == gen_pb.FINISH_REASON_TOOL_CALLS

    asyncio.run(scenario())


def test_bad_tools_are_refused_before_anything_runs(tmp_path):
    async def scenario() -> None:
        async with serving(
            tmp_path, {"alias": "m", "chat_template": HERMES, "n_ctx": 1024, "n_parallel": 1}
        ) as worker:
            request = _tool_request(
                tool_choice=gen_pb.ToolChoice(mode=gen_pb.ToolChoice.MODE_FUNCTION, function="x")
            )
            error = await refusal(worker.stub.Chat(request))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "tool_choice.function 'x' is not among tools (get_weather)" in error.details()

    asyncio.run(scenario())


def test_tool_choice_none_parses_nothing(tmp_path):
    async def scenario() -> None:
        async with serving(
            tmp_path, {"alias": "m", "chat_template": TEMPLATE, "n_ctx": 1024, "n_parallel": 1}
        ) as worker:
            choice = ToolChoice(ToolChoiceMode.NONE)
            tools = Tools((Tool(WEATHER.name, "", WEATHER.parameters_json),), choice)
            prompt = render_chat(
                JinjaTemplate(TEMPLATE, "config", "", ""),
                [ChatMessage("user", "Weather in Paris?")],
                tools,
                SCHEMAS,
            ).text
            reply = '{"tool_calls": [{"name": "get_weather", "arguments": {}}]}'
            worker.models.backends["m"].script(prompt, reply)
            request = _tool_request(tool_choice=gen_pb.ToolChoice(mode=gen_pb.ToolChoice.MODE_NONE))
            chunks = [c async for c in worker.stub.Chat(request)]
            assert "".join(c.text for c in chunks) == reply
            assert not [d for c in chunks for d in c.tool_calls]
            assert chunks[-1].finish_reason == gen_pb.FINISH_REASON_STOP

    asyncio.run(scenario())


def test_tokenize_counts_the_prompt_chat_reads_tools_included(tmp_path):
    async def scenario() -> None:
        config = {"alias": "m", "chat_template": HERMES, "n_ctx": 1024, "n_parallel": 1}
        async with serving(tmp_path, config) as worker:
            request = _tool_request(sampling=gen_pb.SamplingParams(max_tokens=2))
            counted = await worker.stub.Tokenize(gen_pb.TokenizeRequest(model="m", chat=request))
            plain = gen_pb.ChatRequest(model="m", messages=request.messages)
            without = await worker.stub.Tokenize(gen_pb.TokenizeRequest(model="m", chat=plain))
            chunks = [c async for c in worker.stub.Chat(request)]
            assert chunks[-1].usage.prompt_tokens == len(counted.tokens) > len(without.tokens)

    asyncio.run(scenario())
