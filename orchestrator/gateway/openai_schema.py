"""OpenAI's JSON shapes to our protos and back, with no HTTP framework and no I/O.

Request bodies are validated with pydantic (unknown fields ignored, as real clients send
`user`, `metadata` and the like; wrong types refused) and every refusal is a BadRequest
naming the field. Value ranges (temperature in [0, 2], ...) are the worker's to check: it
refuses with a precise message, and keeping one set of rules avoids two that drift. Here we
only refuse what the proto fields cannot hold. Responses are plain dicts in the shapes the
official `openai` client parses, plus llama-server's `timings` on the last chunk.
"""

from __future__ import annotations

import base64
import codecs
import json
import math
import re
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeAlias

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import inference_pb2 as inf_pb
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from orchestrator.gateway.errors import BadRequest
from orchestrator.gateway.tool_deltas import ToolCallAssembler

INT32 = 2**31 - 1
UINT32 = 2**32 - 1
MAX_EMBED_INPUTS = 256
MAX_STOP = 16
MAX_N = 16  # choices per prompt (GenerateRequest.n): the worker needs a slot for each
MAX_TOP_LOGPROBS = 20  # alternatives per token (SamplingParams.top_logprobs)
MAX_TOOLS = 128
MAX_PROMPTS = 64  # prompts in one completion request, each its own generation
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Deeper JSON than this is refused before validation: no request needs it, and encoding a
# JSON schema nested a few thousand levels deep raises RecursionError (a 500).
MAX_JSON_DEPTH = 64
FLOAT32_MAX = 3.4028234663852886e38  # the sampling fields are 32-bit floats
# A lone UTF-16 surrogate is valid JSON ("\ud800") but not Unicode text: protobuf cannot
# encode it, so it is refused here, naming the field, rather than failing as a 500 later.
_SURROGATE = re.compile("[\ud800-\udfff]")

Number = StrictFloat | StrictInt
Int32 = Annotated[StrictInt, Field(ge=-INT32 - 1, le=INT32)]
MaxTokens = Annotated[StrictInt, Field(ge=1, le=INT32)]
Seed = Annotated[StrictInt, Field(ge=-(2**63), le=2**64 - 1)]


# ---- request bodies ---------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _TextPart(_Body):
    type: StrictStr
    text: StrictStr | None = None


class _CalledFunction(_Body):
    name: StrictStr
    arguments: StrictStr = ""


class _ToolCallIn(_Body):
    id: StrictStr
    type: Literal["function"] = "function"
    function: _CalledFunction


class _Message(_Body):
    role: StrictStr
    content: StrictStr | list[_TextPart] | None = None
    tool_calls: list[_ToolCallIn] | None = None  # assistant: the calls it made
    tool_call_id: StrictStr | None = None  # tool: the call it answers
    name: StrictStr | None = None  # tool: the function (else taken from the call it answers)


class _Function(_Body):
    name: StrictStr | None = None
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None


class _ToolSpec(_Body):
    type: Literal["function"]
    function: _Function


class _NamedFunction(_Body):
    name: StrictStr


class _NamedTool(_Body):
    type: Literal["function"]
    function: _NamedFunction


class _JsonSchema(_Body):
    name: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class _ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchema | None = None


class _StreamOptions(_Body):
    include_usage: StrictBool = False


class _Sampling(_Body):
    model: StrictStr
    user: Any = None  # OpenAI's end-user id; routing's session key when it is a string
    stream: StrictBool = False
    stream_options: _StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: Int32 | None = None
    min_p: Number | None = None
    repeat_penalty: Number | None = None
    repeat_last_n: Int32 | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    seed: Seed | None = None
    stop: StrictStr | list[StrictStr] | None = None
    logit_bias: dict[str, Number] | None = None
    ignore_eos: StrictBool = False  # llama-server's and vLLM's extension; benchmarks send it
    n: StrictInt | None = None
    top_logprobs: StrictInt | None = None
    grammar: StrictStr | None = None
    response_format: _ResponseFormat | None = None


class _ChatBody(_Sampling):
    messages: list[_Message]
    max_completion_tokens: MaxTokens | None = None
    logprobs: StrictBool | None = None
    tools: list[_ToolSpec] | None = None
    tool_choice: Literal["auto", "none", "required"] | _NamedTool | None = None
    parallel_tool_calls: StrictBool | None = None
    functions: list[Any] | None = None
    function_call: Any = None


class _CompletionBody(_Sampling):
    prompt: StrictStr | list[Any]
    logprobs: StrictInt | None = None
    echo: StrictBool = False
    suffix: StrictStr | None = None
    best_of: StrictInt | None = None


class _EmbeddingsBody(_Body):
    model: StrictStr
    user: Any = None
    input: StrictStr | list[Any]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None


# ---- parsed calls -----------------------------------------------------------------------
@dataclass(frozen=True)
class ChatCall:
    model: str
    request: gen_pb.ChatRequest
    stream: bool
    include_usage: bool
    user: str | None = None  # the body's `user`, when it is a non-empty string


@dataclass(frozen=True)
class CompletionCall:
    """A completion request: one GenerateRequest per prompt (a list of prompts fans out;
    choice i*n+j is prompt i's sequence j), and each prompt's text when `echo` asks for it
    in the reply."""

    model: str
    requests: tuple[gen_pb.GenerateRequest, ...]
    stream: bool
    include_usage: bool
    user: str | None = None
    echoed: tuple[str, ...] = ()  # per prompt, when echo is on

    @property
    def request(self) -> gen_pb.GenerateRequest:
        """The first prompt's request (routing and the only one of a one-prompt call)."""
        return self.requests[0]

    @property
    def n(self) -> int:
        """Choices per prompt."""
        return max(int(self.requests[0].n), 1)


@dataclass(frozen=True)
class EmbeddingsCall:
    model: str
    request: gen_pb.EmbedRequest
    encoding_format: str
    user: str | None = None


ROLES = {
    "system": "system", "developer": "system", "user": "user", "assistant": "assistant",
    "tool": "tool",
}  # fmt: skip
TOOL_MODES = {
    "auto": gen_pb.ToolChoice.MODE_AUTO,
    "none": gen_pb.ToolChoice.MODE_NONE,
    "required": gen_pb.ToolChoice.MODE_REQUIRED,
}


def parse_chat(body: object) -> ChatCall:
    parsed = _validate(_ChatBody, body)
    _require_model(parsed.model)
    if parsed.functions is not None or parsed.function_call is not None:
        # OpenAI deprecated these for tools/tool_choice; every current client sends those.
        param = "functions" if parsed.functions is not None else "function_call"
        raise BadRequest(
            f"{param} is OpenAI's deprecated form of tool calling: send tools and tool_choice",
            param,
        )
    if not parsed.messages:
        raise BadRequest("messages must hold at least one message", "messages")
    messages = _chat_messages(parsed.messages)
    if parsed.top_logprobs is not None and not parsed.logprobs:
        raise BadRequest("top_logprobs needs logprobs: true", "top_logprobs")
    top = (parsed.top_logprobs or 0) if parsed.logprobs else None
    request = gen_pb.ChatRequest(
        model=parsed.model,
        messages=messages,
        sampling=_sampling(parsed, parsed.max_completion_tokens or parsed.max_tokens, top),
        constraint=_constraint(parsed),
        n=_n(parsed.n),
    )
    _tools(parsed, request)
    return ChatCall(
        parsed.model, request, parsed.stream, _include_usage(parsed), _user(parsed.user)
    )


def parse_completion(body: object) -> CompletionCall:
    parsed = _validate(_CompletionBody, body)
    _require_model(parsed.model)
    if parsed.suffix:
        raise BadRequest("suffix (fill-in-the-middle) is not supported", "suffix")
    if parsed.best_of not in (None, 1):
        raise BadRequest(
            "best_of must be 1 (ranking candidates needs prompt logprobs); use n", "best_of"
        )
    if parsed.logprobs is not None and not 0 <= parsed.logprobs <= MAX_TOP_LOGPROBS:
        raise BadRequest(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]", "logprobs")
    if parsed.echo and parsed.logprobs is not None:
        # Echo with logprobs wants the prompt's tokens scored too; the engine scores only
        # what it samples (prompt logprobs would cost a logits row per prompt token).
        raise BadRequest(
            "echo with logprobs is not supported: prompt tokens get no logprobs", "echo"
        )
    prompts = _prompts(parsed.prompt)
    if parsed.echo and any(not isinstance(p, str) for p in prompts):
        raise BadRequest("echo needs text prompts: token-id prompts cannot be echoed", "echo")
    sampling = _sampling(parsed, parsed.max_tokens, parsed.logprobs)
    constraint = _constraint(parsed)
    requests = []
    for prompt in prompts:
        request = gen_pb.GenerateRequest(
            model=parsed.model, sampling=sampling, constraint=constraint, n=_n(parsed.n)
        )
        if isinstance(prompt, str):
            request.prompt = prompt
        else:
            request.prompt_tokens.extend(prompt)
        requests.append(request)
    echoed = tuple(p for p in prompts if isinstance(p, str)) if parsed.echo else ()
    return CompletionCall(
        parsed.model, tuple(requests), parsed.stream, _include_usage(parsed),
        _user(parsed.user), echoed,
    )  # fmt: skip


def _prompts(prompt: str | list[Any]) -> list[str | list[int]]:
    """A completion's prompts: a text, a list of texts, a list of token ids (one prompt) or
    a list of such lists."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise BadRequest("prompt is an empty list: send a text or token ids", "prompt")
    if all(_is_token(t) for t in prompt):
        return [list(prompt)]
    prompts: list[str | list[int]] = []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            prompts.append(item)
        elif isinstance(item, list) and item and all(_is_token(t) for t in item):
            prompts.append(list(item))
        else:
            raise BadRequest(
                "each prompt is a text or a non-empty list of token ids (integers >= 0)",
                f"prompt[{i}]",
            )
    if len(prompts) > MAX_PROMPTS:
        raise BadRequest(f"prompt holds at most {MAX_PROMPTS} prompts", "prompt")
    return prompts


def _is_token(value: object) -> bool:
    return type(value) is int and 0 <= value <= INT32


def _n(n: int | None) -> int:
    if n is None:
        return 1
    if not 1 <= n <= MAX_N:
        raise BadRequest(f"n must be in [1, {MAX_N}] (choices per prompt)", "n")
    return n


def _tools(body: _ChatBody, request: gen_pb.ChatRequest) -> None:
    """Checks the tools' shape (the worker checks again: the gRPC door passes requests
    through) and sets the request's tools, tool_choice and parallel_tool_calls."""
    tools = body.tools or []
    if len(tools) > MAX_TOOLS:
        raise BadRequest(f"tools holds at most {MAX_TOOLS} tools", "tools")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}].function"
        name = tool.function.name
        if not name:
            raise BadRequest("a tool needs a name", f"{where}.name")
        if not TOOL_NAME.fullmatch(name):
            raise BadRequest(
                f"tool name {name!r} must be 1 to 64 of A-Z, a-z, 0-9, _, . and -",
                f"{where}.name",
            )
        if name in names:
            raise BadRequest(f"two tools are named {name!r}", f"{where}.name")
        names.add(name)
        schema = tool.function.parameters
        if schema is not None:
            try:
                validator_for(schema).check_schema(schema)
            except SchemaError as exc:
                raise BadRequest(
                    f"parameters of {name!r} is not a JSON Schema: {exc.message}",
                    f"{where}.parameters",
                ) from None
        request.tools.add(
            name=name,
            description=tool.function.description or "",
            parameters_json=json.dumps(schema) if schema is not None else "",
        )
    choice = body.tool_choice
    if isinstance(choice, _NamedTool):
        if choice.function.name not in names:
            known = ", ".join(sorted(names)) or "none"
            raise BadRequest(
                f"tool_choice names {choice.function.name!r}, which is not in tools "
                f"(tools: {known})",
                "tool_choice",
            )
        request.tool_choice.mode = gen_pb.ToolChoice.MODE_FUNCTION
        request.tool_choice.function = choice.function.name
    elif choice is not None:
        if choice == "required" and not tools:
            raise BadRequest("tool_choice 'required' needs tools", "tool_choice")
        request.tool_choice.mode = TOOL_MODES[choice]
    if body.parallel_tool_calls is not None:
        request.parallel_tool_calls = body.parallel_tool_calls


def parse_embeddings(body: object) -> EmbeddingsCall:
    parsed = _validate(_EmbeddingsBody, body)
    _require_model(parsed.model)
    if parsed.dimensions is not None:
        raise BadRequest("dimensions is not supported; vectors have the model's size", "dimensions")
    inputs = [parsed.input] if isinstance(parsed.input, str) else parsed.input
    if not 1 <= len(inputs) <= MAX_EMBED_INPUTS:
        raise BadRequest(f"input must hold 1 to {MAX_EMBED_INPUTS} texts", "input")
    for i, text in enumerate(inputs):
        if not isinstance(text, str):
            raise BadRequest("token-id inputs are not supported; send text", f"input[{i}]")
    request = gen_pb.EmbedRequest(model=parsed.model, inputs=inputs)
    return EmbeddingsCall(parsed.model, request, parsed.encoding_format, _user(parsed.user))


def _validate(model: type[_Sampling] | type[_EmbeddingsBody], body: object) -> Any:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    _check_json(body)
    try:
        return model.model_validate(body)
    except PydanticValidationError as exc:
        error = exc.errors()[0]
        loc = [p for p in error["loc"] if not _is_type_tag(p)]
        param = _param(loc)
        raise BadRequest(f"{param or 'body'}: {error['msg']}", param or None) from None


def _check_json(body: dict[str, Any]) -> None:
    """Refuses text that is not Unicode and over-deep nesting anywhere in the body, naming
    where. Iterative, so no nesting depth can exhaust the stack."""
    stack: list[tuple[object, tuple[str | int, ...]]] = [(body, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                where = _json_path(path)
                raise BadRequest(
                    f"{where}: text holds a lone UTF-16 surrogate, which is not valid Unicode",
                    where,
                )
            continue
        if not isinstance(value, dict | list):
            continue
        if len(path) > MAX_JSON_DEPTH:
            where = _json_path(path[:4])
            raise BadRequest(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels", where)
        if isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))
            continue
        for key, item in value.items():
            if isinstance(key, str) and _SURROGATE.search(key):
                where = _json_path(path) or "body"
                raise BadRequest(
                    f"{where}: a key holds a lone UTF-16 surrogate, which is not valid Unicode",
                    where,
                )
            stack.append((item, (*path, key)))


def _json_path(path: tuple[str | int, ...]) -> str:
    """`messages[0].content`; keys that are not names are quoted: `metadata[""]`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text


def _is_type_tag(part: object) -> bool:
    # pydantic adds the union member it tried ("str", "list[_TextPart]") to error paths
    return isinstance(part, str) and (part in {"str", "int", "float", "bool"} or "[" in part
                                      or part.startswith("_"))  # fmt: skip


def _param(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text.replace("schema_", "schema")


def _user(value: object) -> str | None:
    # Clients put all sorts in `user`, and it was ignored before routing read it: a value
    # that is not a string is still ignored rather than refused.
    return value if isinstance(value, str) and value else None


def _require_model(model: str) -> None:
    if not model:
        raise BadRequest("model is empty: name a model (GET /v1/models lists them)", "model")


def _chat_messages(messages: list[_Message]) -> list[gen_pb.ChatMessage]:
    """The history, each tool message named after the call it answers (some templates
    want the function's name, which OpenAI's tool messages do not carry)."""
    called: dict[str, str] = {}  # call id -> function name
    result = []
    for i, message in enumerate(messages):
        converted = _chat_message(i, message)
        for call in converted.tool_calls:
            called[call.id] = call.name
        if converted.role == "tool" and not converted.name:
            converted.name = called.get(converted.tool_call_id, "")
        result.append(converted)
    return result


def _chat_message(index: int, message: _Message) -> gen_pb.ChatMessage:
    role = ROLES.get(message.role)
    if role is None:
        if message.role == "function":
            raise BadRequest(
                "role 'function' is OpenAI's deprecated form of tool results: send role "
                "'tool' with tool_call_id",
                f"messages[{index}].role",
            )
        raise BadRequest(
            f"role {message.role!r} is not one of system, developer, user, assistant, tool",
            f"messages[{index}].role",
        )
    if role == "tool" and not message.tool_call_id:
        raise BadRequest(
            "a tool message needs the tool_call_id it answers",
            f"messages[{index}].tool_call_id",
        )
    if message.tool_calls and role != "assistant":
        raise BadRequest("only assistant messages carry tool_calls", f"messages[{index}]")
    content = message.content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if part.type != "text" or part.text is None:
                raise BadRequest(
                    f"content part of type {part.type!r}: only text is supported",
                    f"messages[{index}].content[{j}]",
                )
            texts.append(part.text)
        content = "".join(texts)
    calls = [
        gen_pb.ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
        for c in message.tool_calls or ()
    ]
    return gen_pb.ChatMessage(
        role=role, content=content or "", tool_calls=calls,
        tool_call_id=message.tool_call_id or "", name=message.name or "",
    )  # fmt: skip


def _finite(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
        raise BadRequest(
            f"{name} must be a finite number (a 32-bit float: at most 3.4e38 in size)", name
        )
    return number


def _sampling(
    body: _Sampling, max_tokens: int | None, top_logprobs: int | None = None
) -> gen_pb.SamplingParams:
    """`top_logprobs`: None for no logprobs, else how many alternatives per token."""
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP:
        raise BadRequest(f"stop holds at most {MAX_STOP} strings", "stop")
    params = gen_pb.SamplingParams(stop=stop, logit_bias=_logit_bias(body.logit_bias))
    for name in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty",
                 "frequency_penalty"):  # fmt: skip
        value = _finite(name, getattr(body, name))
        if value is not None:
            setattr(params, name, value)
    for name in ("top_k", "repeat_last_n"):
        if getattr(body, name) is not None:
            setattr(params, name, getattr(body, name))
    if body.seed is not None:
        # OpenAI allows any 64-bit seed; llama.cpp takes 32 bits.
        params.seed = body.seed & UINT32
    if max_tokens is not None:
        params.max_tokens = max_tokens
    if body.ignore_eos:
        params.ignore_eos = True
    if top_logprobs is not None:
        if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            name = "top_logprobs" if isinstance(body, _ChatBody) else "logprobs"
            raise BadRequest(f"{name} must be in [0, {MAX_TOP_LOGPROBS}]", name)
        params.top_logprobs = top_logprobs
    return params


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    result = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise BadRequest(f"logit_bias key {key!r} is not a token id", "logit_bias") from None
        if not 0 <= token <= INT32:
            raise BadRequest(f"logit_bias key {key!r} is not a token id", "logit_bias")
        result[token] = _finite("logit_bias", value) or 0.0
    return result


def _constraint(body: _Sampling) -> gen_pb.OutputConstraint | None:
    fmt = body.response_format
    wants_format = fmt is not None and fmt.type != "text"
    if body.grammar is not None and wants_format:
        raise BadRequest("give grammar or response_format, not both", "grammar")
    if body.grammar is not None:
        return gen_pb.OutputConstraint(grammar=body.grammar)
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return gen_pb.OutputConstraint(json_object=True)
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise BadRequest(
            "response_format json_schema needs json_schema.schema", "response_format.json_schema"
        )
    return gen_pb.OutputConstraint(json_schema=json.dumps(fmt.json_schema.schema_))


def _include_usage(body: _Sampling) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


# ---- responses ----------------------------------------------------------------------------
FINISH = {
    gen_pb.FINISH_REASON_STOP: "stop",
    gen_pb.FINISH_REASON_LENGTH: "length",
    gen_pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
}
Chunk: TypeAlias = gen_pb.GenerationChunk


def new_call_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def finish_reason_name(reason: int) -> str | None:
    return FINISH.get(reason)


def usage_dict(usage: gen_pb.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
    }


def summed_usage(finals: Sequence[Sequence[Chunk]]) -> gen_pb.Usage:
    """The usage of a reply from the final chunks of each of its generations (one per
    prompt): a generation's n sequences share its prompt, counted once; their completion
    tokens add up."""
    total = gen_pb.Usage()
    for chunks in finals:
        if not chunks:
            continue
        total.prompt_tokens += chunks[0].usage.prompt_tokens
        total.cached_prompt_tokens += chunks[0].usage.cached_prompt_tokens
        total.completion_tokens += sum(c.usage.completion_tokens for c in chunks)
    total.total_tokens = total.prompt_tokens + total.completion_tokens
    return total


def timings_dict(usage: gen_pb.Usage, timings: gen_pb.Timings) -> dict[str, float]:
    """llama-server's `timings` object, which llama.cpp front-ends show."""
    return {
        "prompt_n": usage.prompt_tokens - usage.cached_prompt_tokens,
        "prompt_ms": timings.prompt_ms,
        "prompt_per_second": timings.prompt_tokens_per_second,
        "predicted_n": usage.completion_tokens,
        "predicted_ms": timings.decode_ms,
        "predicted_per_second": timings.decode_tokens_per_second,
        "cache_n": usage.cached_prompt_tokens,
        "ttft_ms": timings.time_to_first_token_ms,
    }


def _token_text(piece: bytes) -> str:
    # A piece can be part of a UTF-8 character; `bytes` beside it carries it exactly.
    return piece.decode("utf-8", errors="replace")


def chat_logprobs(logprobs: Sequence[gen_pb.TokenLogprobs]) -> list[dict[str, Any]]:
    """Chat's `logprobs.content` entries."""

    def entry(token: gen_pb.TokenLogprob) -> dict[str, Any]:
        piece = bytes(token.piece)
        return {"token": _token_text(piece), "logprob": token.logprob, "bytes": list(piece)}

    return [{**entry(lp.chosen), "top_logprobs": [entry(t) for t in lp.top]} for lp in logprobs]


class TextOffsets:
    """Completions' `logprobs` object of one choice, built as its tokens arrive: each
    token's `text_offset` is where its text starts in the choice's text (echoed prompt
    included), counted in characters of the decoded text so far."""

    def __init__(self, start: int = 0) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chars = start

    def logprobs(self, logprobs: Sequence[gen_pb.TokenLogprobs]) -> dict[str, Any]:
        tokens, chosen, tops, offsets = [], [], [], []
        for lp in logprobs:
            piece = bytes(lp.chosen.piece)
            tokens.append(_token_text(piece))
            chosen.append(lp.chosen.logprob)
            tops.append({_token_text(bytes(t.piece)): t.logprob for t in lp.top})
            offsets.append(self._chars)
            self._chars += len(self._decoder.decode(piece))
        return {
            "tokens": tokens, "token_logprobs": chosen, "top_logprobs": tops,
            "text_offset": offsets,
        }  # fmt: skip


class _Choice:
    """One choice of a whole reply, collected from its chunks."""

    def __init__(self) -> None:
        self.text = ""
        self.reasoning = ""
        self.calls = ToolCallAssembler()
        self.logprobs: list[gen_pb.TokenLogprobs] = []
        self.final: Chunk | None = None

    def add(self, chunk: Chunk) -> None:
        self.text += chunk.text
        self.reasoning += chunk.reasoning
        self.logprobs.extend(chunk.logprobs)
        self.calls.add(chunk.tool_calls)
        if chunk.finish_reason:
            self.final = chunk

    @property
    def finish_reason(self) -> str:
        return finish_reason_name(self.final.finish_reason if self.final else 0) or "stop"

    def message(self) -> dict[str, Any]:
        calls = self.calls.calls
        message: dict[str, Any] = {
            "role": "assistant",
            # OpenAI's content is null in a reply that only calls tools.
            "content": None if calls and not self.text else self.text,
        }
        if calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]  # fmt: skip
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        return message


def _choices(chunks: Sequence[Chunk]) -> dict[int, _Choice]:
    choices: dict[int, _Choice] = {}
    for chunk in chunks:
        choices.setdefault(chunk.index, _Choice()).add(chunk)
    return choices


def _finals(choices: dict[int, _Choice]) -> list[Chunk]:
    return [c.final for c in choices.values() if c.final is not None]


def _last_timings(finals: Sequence[Chunk]) -> dict[str, float]:
    last = finals[-1] if finals else Chunk()
    return timings_dict(last.usage, last.timings)


def chat_completion(
    call_id: str, created: int, model: str, chunks: Sequence[Chunk], logprobs: bool = False
) -> dict[str, Any]:
    """A whole chat reply from all its chunks (of every choice, in any order)."""
    choices = _choices(chunks)
    body_choices = []
    for index in sorted(choices):
        choice = choices[index]
        body_choices.append({
            "index": index,
            "message": choice.message(),
            "logprobs": {"content": chat_logprobs(choice.logprobs)} if logprobs else None,
            "finish_reason": choice.finish_reason,
        })  # fmt: skip
    finals = _finals(choices)
    usage = summed_usage([finals])
    return {
        "id": call_id, "object": "chat.completion", "created": created, "model": model,
        "choices": body_choices, "usage": usage_dict(usage),
        "timings": _last_timings(finals),
    }  # fmt: skip


def text_completion(
    call_id: str,
    created: int,
    model: str,
    replies: Sequence[Sequence[Chunk]],
    n: int = 1,
    echoed: Sequence[str] = (),
    logprobs: bool = False,
) -> dict[str, Any]:
    """A whole completion from the chunks of each prompt's generation: choice i*n+j is
    prompt i's sequence j, its text after the prompt's when `echoed`."""
    body_choices = []
    all_finals = []
    for i, chunks in enumerate(replies):
        choices = _choices(chunks)
        all_finals.append(_finals(choices))
        prefix = echoed[i] if echoed else ""
        for j in sorted(choices):
            choice = choices[j]
            body_choices.append({
                "index": i * n + j,
                "text": prefix + choice.text,
                "logprobs": TextOffsets(len(prefix)).logprobs(choice.logprobs)
                if logprobs else None,
                "finish_reason": choice.finish_reason,
            })  # fmt: skip
    flat = [f for finals in all_finals for f in finals]
    return {
        "id": call_id, "object": "text_completion", "created": created, "model": model,
        "choices": body_choices, "usage": usage_dict(summed_usage(all_finals)),
        "timings": _last_timings(flat),
    }  # fmt: skip


def usage_chunk(
    call_id: str, created: int, model: str, usage: gen_pb.Usage, object_name: str
) -> dict[str, Any]:
    return {
        "id": call_id, "object": object_name, "created": created, "model": model,
        "choices": [], "usage": usage_dict(usage),
    }  # fmt: skip


class ChatStream:
    """A streamed chat reply: the chunks of its n choices to OpenAI's chunk payloads, in
    the order they arrive; `done` once every choice has finished."""

    def __init__(
        self, call_id: str, created: int, model: str, n: int = 1, logprobs: bool = False
    ) -> None:
        self._head = {"id": call_id, "object": "chat.completion.chunk", "created": created,
                      "model": model}  # fmt: skip
        self._n = n
        self._logprobs = logprobs
        self._finals: list[Chunk] = []

    def start(self) -> list[dict[str, Any]]:
        """The opening chunks: each choice's role, as OpenAI sends them."""
        return [self._payload(i, {"role": "assistant", "content": ""}) for i in range(self._n)]

    def payload(self, generation: int, chunk: Chunk) -> dict[str, Any] | None:
        """The payload for `chunk`, None when it adds nothing a client sees (`generation`
        is always 0: a chat is one generation; its choices are the chunks' index)."""
        delta: dict[str, Any] = {}
        if chunk.text:
            delta["content"] = chunk.text
        if chunk.reasoning:
            delta["reasoning_content"] = chunk.reasoning
        if chunk.tool_calls:
            delta["tool_calls"] = [_tool_call_delta(d) for d in chunk.tool_calls]
        finish = finish_reason_name(chunk.finish_reason)
        if finish:
            self._finals.append(chunk)
        if not delta and not finish and not chunk.logprobs:
            return None
        logprobs = None
        if self._logprobs and chunk.logprobs:
            logprobs = {"content": chat_logprobs(chunk.logprobs)}
        payload = self._payload(chunk.index, delta, finish, logprobs)
        if finish:
            payload["timings"] = timings_dict(chunk.usage, chunk.timings)
        return payload

    @property
    def done(self) -> bool:
        return len(self._finals) >= self._n

    def usage(self) -> dict[str, Any]:
        """The closing chunk of stream_options.include_usage: no choices, the usage."""
        return {**self._head, "choices": [], "usage": usage_dict(summed_usage([self._finals]))}

    def _payload(
        self,
        index: int,
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**self._head, "choices": [choice]}


def _tool_call_delta(delta: gen_pb.ToolCallDelta) -> dict[str, Any]:
    """OpenAI's streamed call: the first delta of a call has its id, type and name; later
    ones only append to its arguments."""
    function: dict[str, str] = {"arguments": delta.arguments}
    out: dict[str, Any] = {"index": delta.index}
    if delta.id:
        out["id"] = delta.id
        out["type"] = "function"
    if delta.name:
        function["name"] = delta.name
    out["function"] = function
    return out


class CompletionStream:
    """A streamed completion: the chunks of each prompt's generation (prompt i, sequence j
    is choice i*n+j) to OpenAI's payloads; with echo, each choice opens with its prompt."""

    def __init__(
        self,
        call_id: str,
        created: int,
        model: str,
        prompts: int = 1,
        n: int = 1,
        echoed: Sequence[str] = (),
        logprobs: bool = False,
    ) -> None:
        self._head = {"id": call_id, "object": "text_completion", "created": created,
                      "model": model}  # fmt: skip
        self._n = n
        self._choices = prompts * n
        self._echoed = echoed
        self._offsets: dict[int, TextOffsets] | None = None
        if logprobs:
            self._offsets = {
                i: TextOffsets(len(echoed[i // n]) if echoed else 0) for i in range(self._choices)
            }
        self._finals: dict[int, list[Chunk]] = {}

    def start(self) -> list[dict[str, Any]]:
        """With echo, each choice's prompt text first."""
        if not self._echoed:
            return []
        return [self._payload(i, self._echoed[i // self._n]) for i in range(self._choices)]

    def payload(self, prompt: int, chunk: Chunk) -> dict[str, Any] | None:
        """The payload for `chunk` of prompt `prompt`'s generation, None when it adds
        nothing a client sees."""
        index = prompt * self._n + chunk.index
        finish = finish_reason_name(chunk.finish_reason)
        if finish:
            self._finals.setdefault(prompt, []).append(chunk)
        if not chunk.text and not finish and not chunk.logprobs:
            return None
        logprobs = None
        if self._offsets is not None and index in self._offsets:
            logprobs = self._offsets[index].logprobs(chunk.logprobs)
        payload = self._payload(index, chunk.text, finish, logprobs)
        if finish:
            payload["timings"] = timings_dict(chunk.usage, chunk.timings)
        return payload

    @property
    def done(self) -> bool:
        return sum(len(f) for f in self._finals.values()) >= self._choices

    def usage(self) -> dict[str, Any]:
        finals = [self._finals[p] for p in sorted(self._finals)]
        return {**self._head, "choices": [], "usage": usage_dict(summed_usage(finals))}

    def _payload(
        self,
        index: int,
        text: str,
        finish: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return {**self._head, "choices": [choice]}


def embeddings_response(
    model: str, response: gen_pb.EmbedResponse, encoding_format: str
) -> dict[str, Any]:
    data = []
    for i, embedding in enumerate(response.embeddings):
        values = list(embedding.values)
        vector: list[float] | str = values
        if encoding_format == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = response.prompt_tokens
    return {
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }  # fmt: skip


def models_list(response: inf_pb.ListClusterModelsResponse) -> dict[str, Any]:
    return {"object": "list", "data": [model_entry(m) for m in response.models]}


def model_entry(model: inf_pb.ClusterModel) -> dict[str, Any]:
    return {
        "id": model.alias,
        "object": "model",
        "created": model.created_unix_s or int(time.time()),
        "owned_by": "llamaherd",
        "meta": {
            "replicas": model.ready_replicas,
            "nodes": list(model.nodes),
            "n_ctx": model.n_ctx,
            "embedding": model.embedding,
            "architecture": model.architecture,
        },
    }


def sse_event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
