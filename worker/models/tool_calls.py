"""Tool calling in a chat: checking the offered tools, the instruction for templates that
cannot render tools, the model families' call syntaxes, and parsing calls out of output.

Pure functions over text: nothing here touches llama.cpp or the engine. The formats, as the
models are trained to write them (llama.cpp's server learns the same from the template):

- HERMES (Hermes 2 Pro, Qwen 2.5/3, many fine-tunes): ``<tool_call>{"name": .., "arguments":
  {..}}</tool_call>``, one block per call, anywhere in the reply; inside the block, Qwen3-Coder
  and later Qwens write ``<function=NAME><parameter=KEY>VALUE</parameter></function>``.
- LLAMA3 (Llama 3.1-3.3): the reply is ``{"name": .., "parameters": {..}}`` (calls separated
  by ``;``), possibly after ``<|python_tag|>``.
- MISTRAL (Mistral/Mixtral/Nemo instruct): ``[TOOL_CALLS][{"name": .., "arguments": {..}}]``.
- GENERIC (templates with no tool syntax; ours): ``{"tool_calls": [{"name": .., "arguments":
  {..}}]}`` anywhere in the reply.

Special tokens (``<|python_tag|>``, ``[TOOL_CALLS]``) are rendered as empty text by the
engine, so each parser also accepts the bare JSON those markers introduce. What does not
parse as a call to an offered tool stays in the text: a malformed call is shown, never lost.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema

from common.errors import InvalidArgument
from worker.engine.generation import ChatMessage, Tool, ToolChoiceMode, Tools
from worker.engine.limits import RequestLimits, check_size, json_depth
from worker.llamacpp.gbnf import CallLayout, tool_calls_grammar

MAX_TOOLS = 128
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
NO_TOOLS = Tools()


class ToolFormat(enum.Enum):
    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"
    GENERIC = "generic"


@dataclass(frozen=True)
class Syntax:
    """How a format writes calls: `markers` open a call anywhere in the reply; `closer`
    ends the call a marker opened (None: the calls run to the end of the reply); `bare`
    are the compact (whitespace-free) starts of JSON that is a call without a marker, and
    `bare_anywhere` says whether such JSON may follow text."""

    markers: tuple[str, ...]
    closer: str | None
    bare: tuple[str, ...]
    bare_anywhere: bool
    arguments_key: str


SYNTAX = {
    ToolFormat.HERMES: Syntax(("<tool_call>",), "</tool_call>", (), False, "arguments"),
    ToolFormat.LLAMA3: Syntax(("<|python_tag|>",), None, ('{"name"',), False, "parameters"),
    ToolFormat.MISTRAL: Syntax(("[TOOL_CALLS]",), None, ('[{"name"',), False, "arguments"),
    # Small models fence their JSON: a ```json block may hold the calls.
    ToolFormat.GENERIC: Syntax(
        ("```json",), None, ('{"tool_calls"', '{"tool_call"', '{"name"'), True, "arguments"
    ),
}


# How the grammar of tool_choice required/function writes each format's calls. Markers that
# are special tokens (<|python_tag|>, [TOOL_CALLS]) are left out: their text is not the
# token, and the parsers accept the bare JSON.
LAYOUTS = {
    ToolFormat.HERMES: CallLayout(
        call_open="<tool_call>\n", call_close="\n</tool_call>", separator="\n"
    ),
    ToolFormat.LLAMA3: CallLayout(arguments_key="parameters", separator="; "),
    ToolFormat.MISTRAL: CallLayout(prefix="[", suffix="]"),
    ToolFormat.GENERIC: CallLayout(prefix='{"tool_calls": [', suffix="]}"),
}


def detect_format(template_text: str | None) -> ToolFormat:
    """The call syntax a Jinja chat template teaches its model (None: no Jinja template)."""
    if not template_text:
        return ToolFormat.GENERIC
    if "<tool_call>" in template_text:
        return ToolFormat.HERMES
    if "[TOOL_CALLS]" in template_text:
        return ToolFormat.MISTRAL
    if "<|start_header_id|>" in template_text and "ipython" in template_text:
        return ToolFormat.LLAMA3
    return ToolFormat.GENERIC


# ---- checking a request's tools ------------------------------------------------------------
def check_tools(tools: Tools, limits: RequestLimits) -> dict[str, dict[str, Any]]:
    """Each offered tool's parameters schema by name, once names, schemas and the choice are
    valid; InvalidArgument naming the field otherwise."""
    if len(tools.tools) > MAX_TOOLS:
        raise InvalidArgument(f"tools has {len(tools.tools)} entries; at most {MAX_TOOLS}")
    check_size("tools", tools_size(tools), limits.max_prompt_bytes, "max_prompt_bytes")
    schemas: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools.tools):
        if not TOOL_NAME.fullmatch(tool.name):
            raise InvalidArgument(
                f"tools[{i}].name {tool.name!r} is not a function name: 1 to 64 of "
                "A-Z a-z 0-9 _ . -"
            )
        if tool.name in schemas:
            raise InvalidArgument(f"tools[{i}].name {tool.name!r} is given twice")
        schemas[tool.name] = _parameters(i, tool.parameters_json, limits)
    choice = tools.choice
    if choice.mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.FUNCTION) and not schemas:
        raise InvalidArgument(
            f"tool_choice is {choice.mode.value} but tools is empty: offer the tools to call"
        )
    if choice.mode is ToolChoiceMode.FUNCTION and choice.function not in schemas:
        if not choice.function:
            raise InvalidArgument("tool_choice.function is empty: name the tool to call")
        raise InvalidArgument(
            f"tool_choice.function {choice.function!r} is not among tools ({', '.join(schemas)})"
        )
    return schemas


def _parameters(i: int, text: str, limits: RequestLimits) -> dict[str, Any]:
    field = f"tools[{i}].parameters"
    if not text.strip():
        return dict(EMPTY_PARAMETERS)
    check_size(
        field, len(text.encode("utf-8", "surrogatepass")), limits.max_schema_bytes,
        "max_schema_bytes",
    )  # fmt: skip
    if json_depth(text) > limits.max_json_depth:
        raise InvalidArgument(
            f"{field} nests deeper than {limits.max_json_depth} levels (max_json_depth)"
        )
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{field} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise InvalidArgument(f"{field} must be a JSON Schema object, not {_kind(schema)}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise InvalidArgument(
            f"{field} is not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}"
        ) from None
    if schema.get("type", "object") != "object":
        raise InvalidArgument(
            f"{field} must describe an object (type: object), not {schema.get('type')!r}"
        )
    return schema


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean"}.get(type(value), "a number")


def tools_size(tools: Tools) -> int:
    """Characters the tools add to a request (counted against max_prompt_bytes)."""
    return sum(len(t.name) + len(t.description) + len(t.parameters_json) for t in tools.tools)


# ---- rendering for templates with no tool syntax -------------------------------------------
def tool_dicts(tools: Sequence[Tool], schemas: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools as Hugging Face templates take them (OpenAI's shape)."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": schemas.get(t.name, EMPTY_PARAMETERS),
            },
        }
        for t in tools
    ]


def generic_instruction(tools: Tools, schemas: dict[str, dict[str, Any]]) -> str:
    """What the system turn tells a model whose template cannot render tools."""
    listed = "\n".join(
        json.dumps(
            {"name": t.name, "description": t.description, "parameters": schemas[t.name]},
            ensure_ascii=False,
        )
        for t in tools.tools
    )
    mode = tools.choice.mode
    if mode is ToolChoiceMode.NONE:
        return f"These tools exist, but do not call any of them now; answer directly.\n{listed}"
    lines = [
        "You can call these tools (one JSON object per tool: name, description, and a JSON "
        "Schema of its arguments):",
        listed,
        "To call tools, reply with only this JSON and nothing else:",
        '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments as its schema says>}}]}',
    ]
    if mode is ToolChoiceMode.REQUIRED:
        lines.append("You must call at least one tool now.")
    elif mode is ToolChoiceMode.FUNCTION:
        lines.append(f"You must call the tool {tools.choice.function!r} now.")
    else:
        lines.append("If no tool is needed, answer the user directly instead.")
    if not tools.parallel:
        lines.append("Call at most one tool per reply.")
    lines.append("Tool results come back in a later message.")
    return "\n".join(lines)


def generic_messages(
    messages: Sequence[ChatMessage], tools: Tools, schemas: dict[str, dict[str, Any]]
) -> list[ChatMessage]:
    """The chat for a template with no tool syntax: the instruction in the system turn,
    earlier calls written in the generic JSON, tool results as user turns."""
    instruction = generic_instruction(tools, schemas) if tools.tools else ""
    out: list[ChatMessage] = []
    for m in messages:
        if m.tool_calls:
            written = [
                {"name": c.name, "arguments": arguments_object(c.arguments)} for c in m.tool_calls
            ]
            calls = json.dumps({"tool_calls": written}, ensure_ascii=False)
            out.append(ChatMessage(m.role, f"{m.content}\n{calls}" if m.content else calls))
        elif m.role == "tool":
            named = f"{m.name} " if m.name else ""
            call = f" (call {m.tool_call_id})" if m.tool_call_id else ""
            out.append(ChatMessage("user", f"Result of tool {named}{call}:\n{m.content}"))
        else:
            out.append(ChatMessage(m.role, m.content))
    if not instruction:
        return out
    if out and out[0].role == "system":
        return [ChatMessage("system", f"{out[0].content}\n\n{instruction}"), *out[1:]]
    return [ChatMessage("system", instruction), *out]


def arguments_object(arguments: str) -> Any:
    """A history call's arguments as an object (as templates expect), or the text as given."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


# ---- parsing --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # a JSON object, as compact JSON text


@dataclass(frozen=True)
class Parsed:
    text: str
    calls: tuple[ParsedCall, ...] = ()


_DECODER = json.JSONDecoder()


def parse_calls(fmt: ToolFormat, text: str, names: Iterable[str]) -> Parsed:
    """The calls to the tools `names` in a complete reply, and the text around them."""
    known = frozenset(names)
    syntax = SYNTAX[fmt]
    if syntax.closer is not None:
        return _parse_closed(text, syntax, known)
    pos = 0
    while (start := call_start(syntax, text, pos, final=True)) is not None:
        region = text[start:]
        marker = next((m for m in syntax.markers if region.startswith(m)), "")
        calls, rest = _json_calls(region[len(marker) :], syntax, known)
        if calls:
            if marker or text[:start].rstrip().endswith("```"):
                rest = _drop_fence_end(rest)
            return Parsed(text[:start] + rest, calls)
        pos = start + 1  # not a call: look further on
    return Parsed(text)


def _drop_fence_end(rest: str) -> str:
    """The text after fenced calls, without the fence's closing backticks."""
    stripped = rest.lstrip()
    return stripped[3:].lstrip("\n") if stripped.startswith("```") else rest


def _parse_closed(text: str, syntax: Syntax, known: frozenset[str]) -> Parsed:
    (opener,) = syntax.markers
    closer = syntax.closer
    assert closer is not None
    kept: list[str] = []
    calls: list[ParsedCall] = []
    pos = 0
    while (begin := text.find(opener, pos)) >= 0:
        end = text.find(closer, begin)
        body_end = len(text) if end < 0 else end  # unclosed: the call runs to the end
        block_end = len(text) if end < 0 else end + len(closer)
        call = _one_call(text[begin + len(opener) : body_end], syntax, known)
        kept.append(text[pos:begin])
        if call is None:
            kept.append(text[begin:block_end])
        else:
            calls.append(call)
        pos = block_end
    kept.append(text[pos:])
    return Parsed("".join(kept), tuple(calls))


_XML_FUNCTION = re.compile(r"\s*<function=([^>\s]+)>(.*?)(?:</function>\s*)?$", re.DOTALL)
_XML_PARAMETER = re.compile(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", re.DOTALL)


def _one_call(body: str, syntax: Syntax, known: frozenset[str]) -> ParsedCall | None:
    xml = _XML_FUNCTION.match(body)
    if xml is not None:  # Qwen3-Coder and later Qwens: <function=name><parameter=k>v</parameter>
        arguments = {k: _xml_value(v) for k, v in _XML_PARAMETER.findall(xml.group(2))}
        return _as_call({"name": xml.group(1), "arguments": arguments}, syntax, known)
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return _as_call(value, syntax, known)


def _xml_value(text: str) -> Any:
    """A parameter's value: JSON where it parses as JSON (numbers, objects), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json_calls(
    region: str, syntax: Syntax, known: frozenset[str]
) -> tuple[tuple[ParsedCall, ...], str]:
    """The calls JSON at the start of `region` makes, and the text after it; no calls if any
    value there is not a call to a known tool."""
    calls: list[ParsedCall] = []
    pos = _skip_space(region, 0)
    while pos < len(region) and region[pos] in "[{":
        try:
            value, end = _DECODER.raw_decode(region, pos)
        except ValueError:
            return (), region
        found = _calls_in(value, syntax, known)
        if found is None:
            return (), region
        calls.extend(found)
        pos = _skip_space(region, end)
        if region.startswith(";", pos):
            pos = _skip_space(region, pos + 1)
    return tuple(calls), region[pos:]


def _calls_in(value: Any, syntax: Syntax, known: frozenset[str]) -> list[ParsedCall] | None:
    items: list[Any]
    if isinstance(value, list):
        items = value
    elif isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        items = value["tool_calls"]
    elif isinstance(value, dict) and isinstance(value.get("tool_call"), dict):
        items = [value["tool_call"]]
    else:
        items = [value]
    calls = [_as_call(item, syntax, known) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def _as_call(value: Any, syntax: Syntax, known: frozenset[str]) -> ParsedCall | None:
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # OpenAI's shape, which models imitate
        value = value["function"]
    name = value.get("name")
    if not isinstance(name, str) or name not in known:
        return None
    arguments = value.get(syntax.arguments_key, value.get("arguments", value.get("parameters", {})))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(name, json.dumps(arguments, ensure_ascii=False))


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


# ---- where a call may start (for streaming) ------------------------------------------------
def call_start(syntax: Syntax, text: str, pos: int, *, final: bool) -> int | None:
    """Where, at or after `pos`, text that is or may become a call starts (None: nowhere).
    With `final` false the text may still grow, so an unfinished marker at the end counts;
    with `final` true only a complete marker or bare JSON start counts."""
    best: int | None = None
    for marker in syntax.markers:
        found = text.find(marker, pos)
        if found >= 0:
            best = found if best is None else min(best, found)
        elif not final:
            partial = _partial_suffix(text, marker, pos)
            if partial is not None:
                best = partial if best is None else min(best, partial)
    bare = _bare_start(syntax, text, pos, final)
    if bare is not None and (best is None or bare < best):
        best = bare
    return best


def _partial_suffix(text: str, marker: str, pos: int) -> int | None:
    """Where an unfinished `marker` begins at the end of `text`, if it does."""
    for length in range(min(len(marker) - 1, len(text) - pos), 0, -1):
        if marker.startswith(text[len(text) - length :]):
            return len(text) - length
    return None


def _bare_start(syntax: Syntax, text: str, pos: int, final: bool) -> int | None:
    if not syntax.bare:
        return None
    openers = {b[0] for b in syntax.bare}
    if not syntax.bare_anywhere:
        first = _skip_space(text, 0)
        candidates: Iterable[int] = [first] if first >= pos else []
    else:
        candidates = (i for i in range(pos, len(text)) if text[i] in openers)
    for i in candidates:
        if i >= len(text) or text[i] not in openers:
            continue
        compact = re.sub(r"\s+", "", text[i : i + 64])
        for start in syntax.bare:
            if compact.startswith(start):
                return i
            if not final and start.startswith(compact):
                return i  # may become one
        if not syntax.bare_anywhere:
            break
    return None


def required_grammar(
    tools: Tools, schemas: dict[str, dict[str, Any]], fmt: ToolFormat, limits: RequestLimits
) -> str | None:
    """The grammar that makes the model call a tool, for tool_choice required or function
    (None for auto and none)."""
    mode = tools.choice.mode
    if mode is ToolChoiceMode.FUNCTION:
        schemas = {tools.choice.function: schemas[tools.choice.function]}
    elif mode is not ToolChoiceMode.REQUIRED:
        return None
    return tool_calls_grammar(schemas, LAYOUTS[fmt], one_call=not tools.parallel, limits=limits)
