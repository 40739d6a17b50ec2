"""Anthropic's Messages API shapes to the OpenAI API's requests and back, with no HTTP
framework and no I/O.

A thin adapter, as ollama_schema is: a /v1/messages body is checked for what only
Anthropic's API has (content blocks, a top-level `system`, a required `max_tokens`, the
roles it allows, the features llamaherd refuses), then rewritten as the OpenAI chat body it
means and parsed by orchestrator.gateway.openai_schema, which builds the generation protos.
Sampling values, stop strings, tools and their refusals therefore live in one place; a
refusal from there is reworded with Anthropic's field names (`stop` becomes
`stop_sequences`, a tool's `parameters` its `input_schema`). A last assistant message is a
prefill: the reply continues it (ChatRequest.assistant_prefix).

Tools: custom tools (`name`, `description`, `input_schema`) become OpenAI function tools;
`tool_choice` auto/any/tool/none becomes auto/required/a named function/none, and
`disable_parallel_tool_use` turns parallel_tool_calls off. `tool_use` blocks of the history
become the assistant's tool calls and `tool_result` blocks tool messages. The worker's
tool calls come back as `tool_use` blocks (id `toolu_` + the call id's hex) with
stop_reason "tool_use", streamed as a content_block_start and input_json_delta events.
Thinking: with `thinking` enabled, the model's separated reasoning (the worker's
`reasoning`) becomes a leading `thinking` block, streamed as thinking_delta events; thinking
blocks sent back in the history are dropped (the model sees its answers, not its reasoning,
as Anthropic's own models do for earlier turns).

Replies follow Anthropic's Message object and its server-sent events; errors are
`{"type": "error", "error": {"type": ..., "message": ...}}` with Anthropic's error types.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llamaherd.v1 import generation_pb2 as gen_pb
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr

from common.errors import ErrorKind, Internal, LlamaherdError
from orchestrator.gateway import openai_schema as oa
from orchestrator.gateway.errors import BadRequest, http_status
from orchestrator.gateway.json_body import validated
from orchestrator.gateway.tool_deltas import AssembledCall, ToolCallAssembler, assembled, suffix_of

PATH_PREFIX = "/v1/messages"  # /v1/messages and /v1/messages/count_tokens
ROLES = ("user", "assistant")
NO_SERVER_TOOLS = (
    "server tools and their blocks are not supported: llamaherd runs no tools itself; "
    "define a custom tool (name, description, input_schema) and run it in your client"
)
NO_MEDIA = "images and documents are not supported: llamaherd serves text models"
TOOL_USE_ID = "toolu_"
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
THINKING_ON = ("enabled", "adaptive")

# Our refusals (openai_schema's) name OpenAI fields; an Anthropic client knows these names.
ANTHROPIC_NAMES = {
    "stop": "stop_sequences",
    "max_completion_tokens": "max_tokens",
    "response_format": "output_config.format",
    "parameters": "input_schema",
    "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
}
_OPENAI_NAME = re.compile(r"\b(" + "|".join(ANTHROPIC_NAMES) + r")\b")
# A tool's fields as openai_schema names them, and as Anthropic does.
_OPENAI_TOOL_FIELD = re.compile(r"tools\[(\d+)\]\.function\.(name|parameters)")
_TOOL_FIELDS = {"name": "name", "parameters": "input_schema"}

# Block types a client may send, by what llamaherd says of them.
SERVER_TOOL_BLOCKS = {"server_tool_use", "web_search_tool_result", "web_fetch_tool_result",
                      "code_execution_tool_result", "mcp_tool_use", "mcp_tool_result"}  # fmt: skip
MEDIA_BLOCKS = {"image", "document", "search_result", "container_upload"}
THINKING_BLOCKS = {"thinking", "redacted_thinking"}


# ---- request bodies ---------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Message(_Body):
    role: StrictStr
    content: StrictStr | list[Any]


class _Metadata(_Body):
    user_id: StrictStr | None = None


class _CountBody(_Body):
    """What /v1/messages/count_tokens reads: the prompt, not the sampling."""

    model: StrictStr
    messages: list[_Message]
    system: StrictStr | list[Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    thinking: Any = None


class _MessagesBody(_CountBody):
    max_tokens: Any = None  # required; checked below for a precise message
    temperature: Any = None
    top_p: Any = None
    top_k: Any = None
    stop_sequences: Any = None
    stream: StrictBool = False
    metadata: _Metadata | None = None
    output_config: Any = None  # its `format` (structured output) applies; `effort` does not


# ---- parsed calls -----------------------------------------------------------------------
@dataclass(frozen=True)
class MessagesCall:
    """A parsed /v1/messages: the chat request, and what the reply echoes; `thinking` when
    the reply carries the model's reasoning as thinking blocks."""

    model: str
    call: oa.ChatCall
    stream: bool
    thinking: bool = False


def parse_messages(body: object) -> MessagesCall:
    """A /v1/messages body as the chat request it means."""
    parsed: _MessagesBody = validated(_MessagesBody, body)
    openai_body = _prompt(parsed)
    openai_body["max_tokens"] = _max_tokens(parsed.max_tokens)
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(parsed, name)
        if value is not None:
            openai_body[name] = value
    if parsed.stop_sequences is not None:
        if not isinstance(parsed.stop_sequences, list):
            raise BadRequest("stop_sequences must be a list of strings", "stop_sequences")
        openai_body["stop"] = parsed.stop_sequences
    output_format = _output_format(parsed.output_config)
    if output_format is not None:
        openai_body["response_format"] = output_format
    if parsed.metadata is not None and parsed.metadata.user_id:
        openai_body["user"] = parsed.metadata.user_id  # routing's session key
    return MessagesCall(parsed.model, _chat(openai_body), parsed.stream, _thinking(parsed.thinking))


def parse_count_tokens(body: object) -> oa.ChatCall:
    """A /v1/messages/count_tokens body as the chat whose prompt is to be counted."""
    parsed: _CountBody = validated(_CountBody, body)
    return _chat(_prompt(parsed))


def _max_tokens(value: object) -> int:
    if value is None:
        raise BadRequest("max_tokens is required: the most tokens the reply may hold", "max_tokens")
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"max_tokens must be an integer, not {json.dumps(value)}", "max_tokens")
    if value < 1:
        raise BadRequest(f"max_tokens must be at least 1, not {value}", "max_tokens")
    return value


def _output_format(config: object) -> dict[str, Any] | None:
    """output_config.format (a JSON schema the reply must match) as OpenAI's response_format;
    `effort` is for reasoning models and ignored, as the models here do not reason."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise BadRequest("output_config must be an object", "output_config")
    fmt = config.get("format")
    if fmt is None:
        return None
    if not (isinstance(fmt, dict) and fmt.get("type") == "json_schema"
            and isinstance(fmt.get("schema"), dict)):  # fmt: skip
        raise BadRequest(
            'output_config.format must be {"type": "json_schema", "schema": {...}}',
            "output_config.format",
        )
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def _prompt(parsed: _CountBody) -> dict[str, Any]:
    """The OpenAI chat body's model, messages (system first) and tools."""
    _thinking(parsed.thinking)
    if not parsed.model:
        raise BadRequest("model is empty: name a model (GET /v1/models lists them)", "model")
    if not parsed.messages:
        raise BadRequest("messages must hold at least one message", "messages")
    messages: list[dict[str, Any]] = []
    system = _system(parsed.system)
    if system:
        messages.append({"role": "system", "content": system})
    last = len(parsed.messages) - 1
    for i, message in enumerate(parsed.messages):
        where = f"messages[{i}]"
        if message.role not in ROLES:
            hint = "; put a system prompt in the top-level system field" if (
                message.role == "system") else ""  # fmt: skip
            raise BadRequest(
                f"{where}.role: {message.role!r} is not one of user, assistant{hint}",
                f"{where}.role",
            )
        if i == 0 and message.role != "user":
            raise BadRequest(f"{where}.role: the first message must be the user's", f"{where}.role")
        content = _content(message.content, f"{where}.content", message.role)
        if content.calls and i == last:
            raise BadRequest(
                f"{where}: a last assistant message is a prefill, which cannot hold tool_use "
                "blocks; answer them with tool_result blocks in a user message",
                f"{where}.content",
            )
        if not (content.text or content.calls or content.results) and not (
            message.role == "assistant" and i == last
        ):
            raise BadRequest(f"{where}.content is empty: a message needs some text", where)
        messages.extend(content.openai(message.role))
    body: dict[str, Any] = {"model": parsed.model, "messages": messages}
    body.update(_tools(parsed.tools, parsed.tool_choice))
    return body


def _thinking(value: object) -> bool:
    """Whether `thinking` asks for the model's reasoning (budget_tokens is not enforced: the
    reasoning counts against max_tokens, as every generated token does)."""
    if value is None:
        return False
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "disabled":
        return False
    if kind in THINKING_ON:
        return True
    raise BadRequest(
        'thinking must be {"type": "enabled", "budget_tokens": N}, {"type": "adaptive"} or '
        '{"type": "disabled"}',
        "thinking",
    )


def _tools(tools: list[Any] | None, choice: object) -> dict[str, Any]:
    """Anthropic's tools and tool_choice as the OpenAI body's tools, tool_choice and
    parallel_tool_calls, checked with Anthropic's field names."""
    body: dict[str, Any] = {}
    names: list[str] = []
    for i, tool in enumerate(tools or []):
        names.append(_tool_name(tool, i))
        body.setdefault("tools", []).append(_openai_tool(tool, i))
    if choice is None:
        return body
    if not isinstance(choice, dict):
        raise BadRequest("tool_choice must be an object with a type", "tool_choice")
    kind = choice.get("type")
    disable_parallel = choice.get("disable_parallel_tool_use")
    if disable_parallel is not None and not isinstance(disable_parallel, bool):
        raise BadRequest(
            "tool_choice.disable_parallel_tool_use must be true or false",
            "tool_choice.disable_parallel_tool_use",
        )
    if kind == "auto":
        body["tool_choice"] = "auto"
    elif kind == "none":
        body["tool_choice"] = "none"
    elif kind in ("any", "tool"):
        if not names:
            raise BadRequest(f"tool_choice {kind!r} needs tools", "tool_choice")
        if kind == "any":
            body["tool_choice"] = "required"
        else:
            name = choice.get("name")
            if not isinstance(name, str) or name not in names:
                raise BadRequest(
                    f"tool_choice.name {json.dumps(name)} is not among tools ({', '.join(names)})",
                    "tool_choice.name",
                )
            body["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise BadRequest(
            f"tool_choice.type {json.dumps(kind)} is not one of auto, any, tool, none",
            "tool_choice.type",
        )
    if disable_parallel and names:
        body["parallel_tool_calls"] = False
    return body


def _tool_name(tool: object, i: int) -> str:
    where = f"tools[{i}]"
    if not isinstance(tool, dict):
        raise BadRequest(f"{where} must be an object", where)
    if tool.get("type") not in (None, "custom"):
        raise BadRequest(f"{where}: tool type {tool['type']!r}: {NO_SERVER_TOOLS}", f"{where}.type")
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where}.name is required: a tool needs a name", f"{where}.name")
    if not TOOL_NAME.fullmatch(name):
        raise BadRequest(
            f"{where}.name {name!r} must be 1 to 64 of A-Z, a-z, 0-9, _, . and -", f"{where}.name"
        )
    return name


def _openai_tool(tool: dict[str, Any], i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    schema = tool.get("input_schema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise BadRequest(
            f'{where}.input_schema must be a JSON Schema object ({{"type": "object", '
            f'"properties": {{...}}}}), not {json.dumps(schema)[:60]}',
            f"{where}.input_schema",
        )
    description = tool.get("description", "")
    if not isinstance(description, str):
        raise BadRequest(f"{where}.description must be a string", f"{where}.description")
    function = {"name": tool["name"], "description": description, "parameters": schema}
    return {"type": "function", "function": function}


@dataclass
class _Content:
    """A message's content blocks: its text, the calls it made (assistant) and the tool
    results it carries (user), in OpenAI's shapes."""

    text: str = ""
    calls: tuple[dict[str, Any], ...] = ()
    results: tuple[dict[str, Any], ...] = ()

    def openai(self, role: str) -> list[dict[str, Any]]:
        """The OpenAI messages: a user turn's tool results first (Anthropic puts them
        first), each a tool message, then its text."""
        if role == "assistant":
            message: dict[str, Any] = {"role": "assistant", "content": self.text}
            if self.calls:
                message["tool_calls"] = list(self.calls)
            return [message]
        text = [{"role": "user", "content": self.text}] if self.text or not self.results else []
        return [*self.results, *text]


def _system(system: str | list[Any] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    content = _content(system, "system", "system")
    return content.text


def _content(content: str | list[Any], where: str, role: str) -> _Content:
    """A content: a string, or blocks (text joined; tool_use in an assistant's, tool_result
    in a user's; thinking blocks of earlier turns dropped)."""
    if isinstance(content, str):
        return _Content(content)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(kind, str):
            raise BadRequest(f"{at} must be a content block with a type", at)
        if kind in SERVER_TOOL_BLOCKS:
            raise BadRequest(f"{at}: {kind} blocks: {NO_SERVER_TOOLS}", f"{at}.type")
        if kind in MEDIA_BLOCKS:
            raise BadRequest(f"{at}: {kind} blocks: {NO_MEDIA}", f"{at}.type")
        if kind in THINKING_BLOCKS and role == "assistant":
            continue
        if kind == "tool_use" and role == "assistant":
            calls.append(_tool_use(block, at))
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, at))
        elif kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise BadRequest(f"{at}.text must be a string", f"{at}.text")
            texts.append(text)
        elif kind in ("tool_use", "tool_result", *THINKING_BLOCKS):
            allowed = "an assistant's" if kind != "tool_result" else "a user's"
            raise BadRequest(f"{at}: {kind} blocks belong in {allowed} content", f"{at}.type")
        else:
            raise BadRequest(f"{at}: unknown content block type {kind!r}; send text blocks", at)
    return _Content("".join(texts), tuple(calls), tuple(results))


def _tool_use(block: dict[str, Any], at: str) -> dict[str, Any]:
    """A tool_use block of the history as an OpenAI tool call."""
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{at}.id is required: the id its tool_result answers", f"{at}.id")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{at}.name is required: the tool it called", f"{at}.name")
    if not isinstance(arguments, dict):
        raise BadRequest(f"{at}.input must be an object (the tool's arguments)", f"{at}.input")
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {"id": call_id, "type": "function", "function": function}


def _tool_result(block: dict[str, Any], at: str) -> dict[str, Any]:
    """A tool_result block as an OpenAI tool message (an error result says so in its text:
    the model has no other way to know)."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(
            f"{at}.tool_use_id is required: the tool_use it answers", f"{at}.tool_use_id"
        )
    content = block.get("content", "")
    if not isinstance(content, str | list):
        raise BadRequest(f"{at}.content must be a string or text blocks", f"{at}.content")
    text = content if isinstance(content, str) else _content(content, f"{at}.content", "").text
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _chat(openai_body: dict[str, Any]) -> oa.ChatCall:
    """openai_schema's parse, its refusals in Anthropic's names; a last assistant message
    becomes the start of the reply (a prefill), not a finished turn."""
    messages = openai_body["messages"]
    prefill = messages.pop()["content"] if messages[-1]["role"] == "assistant" else ""
    try:
        call = oa.parse_chat(openai_body)
    except BadRequest as exc:
        message, param = _anthropic_names(exc.message), _anthropic_names(exc.param or "")
        raise BadRequest(message, param or None) from None
    call.request.assistant_prefix = prefill
    return call


def _anthropic_names(text: str) -> str:
    text = _OPENAI_TOOL_FIELD.sub(lambda m: f"tools[{m.group(1)}].{_TOOL_FIELDS[m.group(2)]}", text)
    return _OPENAI_NAME.sub(lambda m: ANTHROPIC_NAMES[m.group(1)], text)


# ---- replies ----------------------------------------------------------------------------
def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def stop_reason(finish: int, stop_sequence: str) -> str:
    """Anthropic's stop_reason for a finish: a stop string, the token limit, a tool call, or
    the turn's end."""
    if stop_sequence:
        return "stop_sequence"
    if finish == gen_pb.FINISH_REASON_LENGTH:
        return "max_tokens"
    if finish == gen_pb.FINISH_REASON_TOOL_CALLS:
        return "tool_use"
    return "end_turn"


def tool_use_id(call_id: str) -> str:
    """Anthropic's id of a worker's call: `toolu_` and the call id's unique part."""
    return TOOL_USE_ID + suffix_of(call_id)


def tool_use_block(call: AssembledCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_use_id(call.id), "name": call.name,
            "input": call.arguments_object()}  # fmt: skip


def usage(chunk_usage: gen_pb.Usage | None, output_tokens: int | None = None) -> dict[str, Any]:
    """Anthropic's usage; prompt tokens whose KV was reused count as cache reads."""
    u = chunk_usage or gen_pb.Usage()
    return {
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens if output_tokens is None else output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": u.cached_prompt_tokens,
    }


def message(
    message_id: str,
    model: str,
    chunks: Sequence[gen_pb.GenerationChunk] | None,
    thinking: bool = False,
) -> dict[str, Any]:
    """The Message object: whole (from the generation's `chunks`, the last one final), or
    as a stream starts (None: no content, no stop reason yet). Blocks in Anthropic's order:
    thinking (when asked for and the model reasoned), text, tool_use."""
    content: list[dict[str, Any]] = []
    last = chunks[-1] if chunks else None
    if chunks is not None:
        reasoning = "".join(c.reasoning for c in chunks)
        if thinking and reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
        text = "".join(c.text for c in chunks)
        calls = assembled(chunks)
        if text or not calls:
            content.append({"type": "text", "text": text})
        content.extend(tool_use_block(call) for call in calls)
    return {
        "id": message_id, "type": "message", "role": "assistant", "model": model,
        "content": content,
        "stop_reason": stop_reason(last.finish_reason, last.stop_sequence) if last else None,
        "stop_sequence": (last.stop_sequence or None) if last else None,
        "usage": usage(last.usage if last else None),
    }  # fmt: skip


def sse(event: str, payload: dict[str, Any]) -> bytes:
    """One server-sent event, named as Anthropic names them."""
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


class MessageStream:
    """A generation's chunks as Anthropic's server-sent events. Content blocks open as
    their content arrives, one at a time, numbered in order: a thinking block for the
    reasoning (only when `thinking`), a text block for the text, a tool_use block per call
    (its arguments as input_json_delta events); a block closes when the next one opens or
    the message ends. The counts come with message_delta (the prompt's too: the worker
    tells it at the end)."""

    def __init__(self, message_id: str, model: str, thinking: bool = False) -> None:
        self.message_id = message_id
        self._model = model
        self._thinking = thinking
        self._calls = ToolCallAssembler()
        self._open: str | None = None  # the open block's kind: thinking, text or a call index
        self._index = -1  # the open (or last) block's number

    def start(self) -> list[bytes]:
        """message_start and a ping, before any content."""
        start = message(self.message_id, self._model, None)
        return [sse("message_start", {"type": "message_start", "message": start}),
                sse("ping", {"type": "ping"})]  # fmt: skip

    def chunk(self, chunk: gen_pb.GenerationChunk) -> list[bytes]:
        """The events of one chunk (its final events too, when it is the last)."""
        events: list[bytes] = []
        if chunk.reasoning and self._thinking:
            events += self._block("thinking", {"type": "thinking", "thinking": "",
                                               "signature": ""})  # fmt: skip
            events.append(self._delta({"type": "thinking_delta", "thinking": chunk.reasoning}))
        if chunk.text:
            events += self._block("text", {"type": "text", "text": ""})
            events.append(self._delta({"type": "text_delta", "text": chunk.text}))
        for delta in chunk.tool_calls:
            if self._calls.add([delta]):  # the call's first delta: its block opens
                call = self._calls.call(delta.index)
                block = {"type": "tool_use", "id": tool_use_id(call.id), "name": call.name,
                         "input": {}}  # fmt: skip
                events += self._block(f"call{delta.index}", block)
            else:
                events += self._block(f"call{delta.index}", None)
            if delta.arguments:
                events.append(self._delta({"type": "input_json_delta",
                                           "partial_json": delta.arguments}))  # fmt: skip
        if chunk.finish_reason:
            events += self._end(chunk)
        return events

    def _block(self, kind: str, block: dict[str, Any] | None) -> list[bytes]:
        """Opens block `kind` unless it is the open one, closing the open one first."""
        if self._open == kind:
            return []
        events = self._close()
        if block is None:  # arguments of a call whose block was closed: Anthropic cannot
            raise Internal(f"the worker sent arguments of tool call {kind} after another block")
        self._index += 1
        self._open = kind
        events.append(sse("content_block_start", {"type": "content_block_start",
                                                  "index": self._index,
                                                  "content_block": block}))  # fmt: skip
        return events

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                           "delta": delta})  # fmt: skip

    def _end(self, last: gen_pb.GenerationChunk) -> list[bytes]:
        """The last block closes (an empty text block when there was none), then the
        message says why it ended."""
        events = self._block("text", {"type": "text", "text": ""}) if self._index < 0 else []
        events += self._close()
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(last.finish_reason, last.stop_sequence),
                      "stop_sequence": last.stop_sequence or None},
            "usage": usage(last.usage),
        }  # fmt: skip
        return [*events, sse("message_delta", delta), sse("message_stop", {"type": "message_stop"})]


# Anthropic's error types by our error kinds; statuses stay those of errors.http_status, so
# every front door answers a refusal with the same code.
ERROR_TYPES = {
    ErrorKind.INVALID_ARGUMENT: "invalid_request_error",
    ErrorKind.FAILED_PRECONDITION: "invalid_request_error",
    ErrorKind.ALREADY_EXISTS: "invalid_request_error",
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.PERMISSION_DENIED: "permission_error",
    ErrorKind.RESOURCE_EXHAUSTED: "rate_limit_error",
    # No replica could serve: Anthropic's "overloaded", with HTTP's 503 (which proxies and
    # the SDK's retries know) rather than its private 529.
    ErrorKind.UNAVAILABLE: "overloaded_error",
    ErrorKind.INTERNAL: "api_error",
}
STATUS_TYPES = {401: "authentication_error", 404: "not_found_error", 408: "timeout_error",
                413: "request_too_large"}  # fmt: skip


def error_body(error: LlamaherdError, status: int | None = None) -> dict[str, Any]:
    """Anthropic's error body, in a reply and as a stream's `error` event."""
    kind = STATUS_TYPES.get(status or http_status(error)) or ERROR_TYPES[error.kind]
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def authentication_error(message: str) -> dict[str, Any]:
    """The body of a refused API key."""
    return {"type": "error", "error": {"type": "authentication_error", "message": message}}
