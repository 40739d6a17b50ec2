"""Tool calls: the offered tools checked, each family's call syntax detected from its
template and parsed out of realistic replies, and the grammars of tool_choice required."""

from __future__ import annotations

import json

import pytest
from llama_cpp import LlamaGrammar

from common.errors import InvalidArgument
from worker.engine.generation import ChatMessage, Tool, ToolCall, ToolChoice, ToolChoiceMode, Tools
from worker.engine.limits import RequestLimits
from worker.models.tool_calls import (
    ParsedCall,
    ToolFormat,
    check_tools,
    detect_format,
    generic_instruction,
    generic_messages,
    parse_calls,
    required_grammar,
)

WEATHER = json.dumps({
    "type": "object",
    "properties": {"location": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["location"],
})  # fmt: skip
TOOLS = Tools((Tool("get_weather", "Current weather", WEATHER), Tool("get_time", "Time now")))
NAMES = {"get_weather", "get_time"}
LIMITS = RequestLimits()
PARIS = ParsedCall("get_weather", '{"location": "Paris"}')


# ---- format detection -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "fmt"),
    [
        ("{{ tools | tojson }}<tool_call></tool_call>", ToolFormat.HERMES),
        ("<|start_header_id|>ipython<|end_header_id|>", ToolFormat.LLAMA3),
        ("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}", ToolFormat.MISTRAL),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", ToolFormat.GENERIC),
        (None, ToolFormat.GENERIC),
    ],
)  # fmt: skip
def test_the_format_is_read_from_the_template(template, fmt):
    assert detect_format(template) is fmt


# ---- parsing: recorded shapes of each family's replies ------------------------------------
def test_hermes_calls_after_text_and_several_calls():
    reply = (
        "Let me look that up.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"location": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    parsed = parse_calls(ToolFormat.HERMES, reply, NAMES)
    assert parsed.calls == (PARIS, ParsedCall("get_time", "{}"))
    assert parsed.text.strip() == "Let me look that up."


def test_qwen3_coder_xml_calls_inside_tool_call_blocks():
    reply = (
        "I'll check.\n<tool_call>\n<function=get_weather>\n<parameter=location>\nParis\n"
        "</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
    )
    parsed = parse_calls(ToolFormat.HERMES, reply, NAMES)
    assert parsed.calls == (ParsedCall("get_weather", '{"location": "Paris", "days": 3}'),)
    assert parsed.text == "I'll check.\n"


def test_arguments_given_as_a_json_string_become_an_object():
    arguments = json.dumps(json.dumps({"location": "Paris"}))
    reply = f'<tool_call>{{"name": "get_weather", "arguments": {arguments}}}</tool_call>'
    assert parse_calls(ToolFormat.HERMES, reply, NAMES).calls == (PARIS,)


def test_a_malformed_call_is_left_as_text():
    reply = 'Hmm <tool_call>{"name": "get_weather", "arguments": {"location": "Par</tool_call> ok'
    parsed = parse_calls(ToolFormat.HERMES, reply, NAMES)
    assert parsed.calls == ()
    assert parsed.text == reply


def test_a_call_to_a_tool_not_offered_is_left_as_text():
    reply = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    assert parse_calls(ToolFormat.HERMES, reply, NAMES) == parse_calls(ToolFormat.HERMES, reply, ())
    assert parse_calls(ToolFormat.HERMES, reply, NAMES).text == reply


def test_an_unclosed_hermes_call_at_the_end_still_counts():
    reply = '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n'
    assert parse_calls(ToolFormat.HERMES, reply, NAMES).calls == (PARIS,)


def test_llama3_json_calls_with_parameters_separated_by_semicolons():
    reply = (
        '{"name": "get_weather", "parameters": {"location": "Paris"}}; '
        '{"name": "get_time", "parameters": {}}'
    )
    parsed = parse_calls(ToolFormat.LLAMA3, reply, NAMES)
    assert parsed == parsed.__class__("", (PARIS, ParsedCall("get_time", "{}")))


def test_llama3_after_the_python_tag_and_plain_json_mid_text_is_not_a_call():
    tagged = 'Checking. <|python_tag|>{"name": "get_weather", "parameters": {"location": "Paris"}}'
    assert parse_calls(ToolFormat.LLAMA3, tagged, NAMES).calls == (PARIS,)
    mid = 'An example: {"name": "get_weather", "parameters": {}}'
    assert parse_calls(ToolFormat.LLAMA3, mid, NAMES).calls == ()


def test_mistral_with_and_without_its_marker():
    array = '[{"name": "get_weather", "arguments": {"location": "Paris"}, "id": "a1b2c3d4e"}]'
    assert parse_calls(ToolFormat.MISTRAL, "[TOOL_CALLS]" + array, NAMES).calls == (PARIS,)
    # [TOOL_CALLS] is a special token: the engine renders it as nothing
    assert parse_calls(ToolFormat.MISTRAL, array, NAMES).calls == (PARIS,)


def test_generic_json_anywhere_fenced_or_not():
    call = '{"tool_calls": [{"name": "get_weather", "arguments": {"location": "Paris"}}]}'
    assert parse_calls(ToolFormat.GENERIC, call, NAMES).calls == (PARIS,)
    fenced = parse_calls(ToolFormat.GENERIC, f"Sure.\n```json\n{call}\n```\nDone.", NAMES)
    assert fenced.calls == (PARIS,)
    assert fenced.text == "Sure.\nDone."
    single = '{"tool_call": {"name": "get_time", "arguments": {}}}'
    assert parse_calls(ToolFormat.GENERIC, single, NAMES).calls == (ParsedCall("get_time", "{}"),)


def test_generic_json_that_is_no_call_stays_text():
    for reply in ('{"name": "Bob", "age": 3}', '{"tool_calls": [{"name": "get_time"', "[1, 2]"):
        assert parse_calls(ToolFormat.GENERIC, reply, NAMES).text == reply


# ---- checking the tools ---------------------------------------------------------------------
def test_valid_tools_give_their_schemas():
    schemas = check_tools(TOOLS, LIMITS)
    assert schemas["get_weather"]["required"] == ["location"]
    assert schemas["get_time"] == {"type": "object", "properties": {}}


REQUIRED = ToolChoice(ToolChoiceMode.REQUIRED)


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        (Tools((Tool(""),)), r"tools\[0\]\.name '' is not a function name"),
        (Tools((Tool("a b"),)), r"tools\[0\]\.name 'a b'"),
        (Tools((Tool("f"), Tool("f"))), r"tools\[1\]\.name 'f' is given twice"),
        (Tools((Tool("f", "", "{nope"),)), r"tools\[0\]\.parameters is not JSON"),
        (Tools((Tool("f", "", "[]"),)), r"tools\[0\]\.parameters must be a JSON Schema object"),
        (Tools((Tool("f", "", '{"type": "bogus"}'),)), r"parameters is not a valid JSON Schema"),
        (Tools((Tool("f", "", '{"type": "string"}'),)), r"must describe an object"),
        (Tools(tuple(Tool(f"f{i}") for i in range(129))), r"tools has 129 entries; at most 128"),
        (Tools((), REQUIRED), r"tool_choice is required but tools is empty"),
        (
            Tools((Tool("f"),), ToolChoice(ToolChoiceMode.FUNCTION, "g")),
            r"tool_choice.function 'g' is not among tools \(f\)",
        ),
        (Tools((Tool("f"),), ToolChoice(ToolChoiceMode.FUNCTION)), r"function is empty"),
    ],
)
def test_bad_tools_are_refused_naming_the_field(tools, message):
    with pytest.raises(InvalidArgument, match=message):
        check_tools(tools, LIMITS)


def test_a_schema_over_the_limits_is_refused():
    deep = '{"type": "object", "properties": {"a": ' * 40 + "{}" + "}}" * 40
    with pytest.raises(InvalidArgument, match="max_json_depth"):
        check_tools(Tools((Tool("f", "", deep),)), LIMITS)
    with pytest.raises(InvalidArgument, match="max_schema_bytes"):
        check_tools(Tools((Tool("f", "x", " " * 70_000 + "{}"),)), LIMITS)


# ---- the generic instruction ------------------------------------------------------------------
def test_the_generic_instruction_lists_the_tools_and_the_form():
    text = generic_instruction(TOOLS, check_tools(TOOLS, LIMITS))
    assert '"name": "get_weather"' in text and "Current weather" in text
    assert '"location": {"type": "string"}' in text
    assert '{"tool_calls": [{"name": "<tool name>"' in text
    required = Tools(TOOLS.tools, ToolChoice(ToolChoiceMode.FUNCTION, "get_time"), parallel=False)
    strict = generic_instruction(required, check_tools(required, LIMITS))
    assert "You must call the tool 'get_time'" in strict and "at most one tool" in strict


def test_generic_messages_put_the_instruction_in_the_system_turn_and_write_the_history():
    history = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage("assistant", "", (ToolCall("call_1", "get_weather", '{"location": "Paris"}'),)),
        ChatMessage("tool", "18 C, sunny", tool_call_id="call_1", name="get_weather"),
    ]
    out = generic_messages(history, TOOLS, check_tools(TOOLS, LIMITS))
    assert [m.role for m in out] == ["system", "user", "assistant", "user"]
    assert out[0].content.startswith("Be brief.\n\nYou can call these tools")
    assert json.loads(out[2].content) == {
        "tool_calls": [{"name": "get_weather", "arguments": {"location": "Paris"}}]
    }
    assert "get_weather" in out[3].content and "call_1" in out[3].content
    assert out[3].content.endswith("18 C, sunny")
    no_system = generic_messages(history[1:], TOOLS, check_tools(TOOLS, LIMITS))
    assert no_system[0].role == "system"


# ---- grammars of tool_choice required / function ------------------------------------------
@pytest.mark.parametrize("fmt", list(ToolFormat))
@pytest.mark.parametrize("parallel", [True, False])
def test_required_grammars_are_valid_gbnf(fmt, parallel):
    tools = Tools(TOOLS.tools, ToolChoice(ToolChoiceMode.REQUIRED), parallel)
    grammar = required_grammar(tools, check_tools(tools, LIMITS), fmt, LIMITS)
    assert grammar is not None
    LlamaGrammar.from_string(grammar, verbose=False)  # llama.cpp's parser accepts it
    assert '"\\"get_weather\\""' in grammar and '"\\"get_time\\""' in grammar
    assert ("(" in grammar.splitlines()[0]) is parallel  # more calls only when parallel


def test_a_named_function_grammar_offers_only_that_tool():
    tools = Tools(TOOLS.tools, ToolChoice(ToolChoiceMode.FUNCTION, "get_weather"))
    grammar = required_grammar(tools, check_tools(tools, LIMITS), ToolFormat.HERMES, LIMITS)
    assert grammar is not None and "get_time" not in grammar
    assert grammar.startswith('root ::= "<tool_call>\\n" call "\\n</tool_call>"')


def test_auto_and_none_need_no_grammar():
    for mode in (ToolChoiceMode.AUTO, ToolChoiceMode.NONE):
        tools = Tools(TOOLS.tools, ToolChoice(mode))
        assert (
            required_grammar(tools, check_tools(tools, LIMITS), ToolFormat.GENERIC, LIMITS) is None
        )


def test_a_grammar_over_the_limit_says_so():
    tools = Tools(TOOLS.tools, ToolChoice(ToolChoiceMode.REQUIRED))
    small = RequestLimits(max_grammar_bytes=200)
    with pytest.raises(InvalidArgument, match=r"grammar of the tools.*max_grammar_bytes"):
        required_grammar(tools, check_tools(tools, small), ToolFormat.GENERIC, small)
