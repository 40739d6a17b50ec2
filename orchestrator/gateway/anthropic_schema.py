"""Anthropic's Messages API shapes to the OpenAI API's requests and back, with no HTTP
framework and no I/O.

A thin adapter, as ollama_schema is: a /v1/messages body is checked for what only
Anthropic's API has (content blocks, a top-level `system`, a required `max_tokens`, the
roles it allows, the features llamaherd refuses), then rewritten as the OpenAI chat body it
means and parsed by orchestrator.gateway.openai_schema, which builds the generation protos.
Sampling values, stop strings and their refusals therefore live in one place; a refusal
from there is reworded with Anthropic's field names (`stop` becomes `stop_sequences`). A
last assistant message is a prefill: the reply continues it (ChatRequest.assistant_prefix).
Replies follow Anthropic's Message object and its server-sent events; errors are
`{"type": "error", "error": {"type": ..., "message": ...}}` with Anthropic's error types.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from llamaherd.v1 import generation_pb2 as gen_pb
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr

from common.errors import ErrorKind, LlamaherdError
from orchestrator.gateway import openai_schema as oa
from orchestrator.gateway.errors import BadRequest, http_status
from orchestrator.gateway.json_body import validated

PATH_PREFIX = "/v1/messages"  # /v1/messages and /v1/messages/count_tokens
ROLES = ("user", "assistant")
NO_TOOLS = "tool use is not supported yet"
NO_MEDIA = "images and documents are not supported: llamaherd serves text models"
NO_THINKING = "extended thinking is not supported: llamaherd does not separate a model's reasoning"

# Our refusals (openai_schema's) name OpenAI fields; an Anthropic client knows these names.
ANTHROPIC_NAMES = {
    "stop": "stop_sequences",
    "max_completion_tokens": "max_tokens",
    "response_format": "output_config.format",
}
_OPENAI_NAME = re.compile(r"\b(" + "|".join(ANTHROPIC_NAMES) + r")\b")

# Block types a client may send, by what llamaherd says of them.
TOOL_BLOCKS = {"tool_use", "tool_result", "server_tool_use", "web_search_tool_result",
               "mcp_tool_use", "mcp_tool_result"}  # fmt: skip
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
    """A parsed /v1/messages: the chat request, and what the reply echoes."""

    model: str
    call: oa.ChatCall
    stream: bool


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
    return MessagesCall(parsed.model, _chat(openai_body), parsed.stream)


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
    """The OpenAI chat body's model and messages (system first), refusing what is not
    supported yet."""
    if parsed.tools or parsed.tool_choice is not None:
        raise BadRequest(f"{NO_TOOLS}: send no tools or tool_choice", "tools")
    if parsed.thinking is not None and not _thinking_off(parsed.thinking):
        raise BadRequest(f"{NO_THINKING}: leave thinking out", "thinking")
    if not parsed.model:
        raise BadRequest("model is empty: name a model (GET /v1/models lists them)", "model")
    if not parsed.messages:
        raise BadRequest("messages must hold at least one message", "messages")
    messages: list[dict[str, str]] = []
    system = _system(parsed.system)
    if system:
        messages.append({"role": "system", "content": system})
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
        text = _text(message.content, f"{where}.content")
        if not text and not (message.role == "assistant" and i == len(parsed.messages) - 1):
            raise BadRequest(f"{where}.content is empty: a message needs some text", where)
        messages.append({"role": message.role, "content": text})
    return {"model": parsed.model, "messages": messages}


def _thinking_off(value: object) -> bool:
    return isinstance(value, dict) and value.get("type") == "disabled"


def _system(system: str | list[Any] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    return _text(system, "system")


def _text(content: str | list[Any], where: str) -> str:
    """The text of a content: a string, or text blocks joined."""
    if isinstance(content, str):
        return content
    texts = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(kind, str):
            raise BadRequest(f"{at} must be a content block with a type", at)
        if kind in TOOL_BLOCKS:
            raise BadRequest(f"{at}: {kind} blocks: {NO_TOOLS}", f"{at}.type")
        if kind in MEDIA_BLOCKS:
            raise BadRequest(f"{at}: {kind} blocks: {NO_MEDIA}", f"{at}.type")
        if kind in THINKING_BLOCKS:
            raise BadRequest(f"{at}: {kind} blocks: {NO_THINKING}", f"{at}.type")
        if kind != "text":
            raise BadRequest(f"{at}: unknown content block type {kind!r}; send text blocks", at)
        text = block.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{at}.text must be a string", f"{at}.text")
        texts.append(text)
    return "".join(texts)


def _chat(openai_body: dict[str, Any]) -> oa.ChatCall:
    """openai_schema's parse, its refusals in Anthropic's names; a last assistant message
    becomes the start of the reply (a prefill), not a finished turn."""
    messages = openai_body["messages"]
    prefill = messages.pop()["content"] if messages[-1]["role"] == "assistant" else ""
    try:
        call = oa.parse_chat(openai_body)
    except BadRequest as exc:
        param = _OPENAI_NAME.sub(lambda m: ANTHROPIC_NAMES[m.group(1)], exc.param or "") or None
        message = _OPENAI_NAME.sub(lambda m: ANTHROPIC_NAMES[m.group(1)], exc.message)
        raise BadRequest(message, param) from None
    call.request.assistant_prefix = prefill
    return call


# ---- replies ----------------------------------------------------------------------------
def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def stop_reason(finish: int, stop_sequence: str) -> str:
    """Anthropic's stop_reason for a finish: a stop string, the token limit, or the turn's end."""
    if stop_sequence:
        return "stop_sequence"
    if finish == gen_pb.FINISH_REASON_LENGTH:
        return "max_tokens"
    return "end_turn"


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
    text: str | None,
    last: gen_pb.GenerationChunk | None,
) -> dict[str, Any]:
    """The Message object: whole (`last` the final chunk), or as a stream starts (no text,
    no stop reason yet)."""
    content = [] if text is None else [{"type": "text", "text": text}]
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


def stream_start(message_id: str, model: str) -> list[bytes]:
    """The events before the first text: the message, its text block, a ping. The counts
    come with message_delta (the prompt's too: the worker tells it at the end)."""
    start = message(message_id, model, None, None)
    return [
        sse("message_start", {"type": "message_start", "message": start}),
        sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "text", "text": ""}}),
        sse("ping", {"type": "ping"}),
    ]  # fmt: skip


def text_delta(text: str) -> bytes:
    return sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": text}})  # fmt: skip


def stream_end(last: gen_pb.GenerationChunk) -> list[bytes]:
    """The events after the last text: the block ends, then the message with why it ended."""
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason(last.finish_reason, last.stop_sequence),
                  "stop_sequence": last.stop_sequence or None},
        "usage": usage(last.usage),
    }  # fmt: skip
    return [
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("message_delta", delta),
        sse("message_stop", {"type": "message_stop"}),
    ]


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
