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
import json
import math
import re
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import inference_pb2 as inf_pb
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from orchestrator.gateway.errors import BadRequest

INT32 = 2**31 - 1
UINT32 = 2**32 - 1
MAX_EMBED_INPUTS = 256
MAX_STOP = 16
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


class _Message(_Body):
    role: StrictStr
    content: StrictStr | list[_TextPart] | None = None


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
    n: StrictInt | None = None
    logprobs: StrictBool | StrictInt | None = None
    top_logprobs: StrictInt | None = None
    grammar: StrictStr | None = None
    response_format: _ResponseFormat | None = None


class _ChatBody(_Sampling):
    messages: list[_Message]
    max_completion_tokens: MaxTokens | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None


class _CompletionBody(_Sampling):
    prompt: StrictStr | list[Any]
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
    model: str
    request: gen_pb.GenerateRequest
    stream: bool
    include_usage: bool
    user: str | None = None


@dataclass(frozen=True)
class EmbeddingsCall:
    model: str
    request: gen_pb.EmbedRequest
    encoding_format: str
    user: str | None = None


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def parse_chat(body: object) -> ChatCall:
    parsed = _validate(_ChatBody, body)
    _require_model(parsed.model)
    if parsed.tools or parsed.functions or parsed.tool_choice not in (None, "none"):
        raise BadRequest("tool calling is not supported by this server", "tools")
    if not parsed.messages:
        raise BadRequest("messages must hold at least one message", "messages")
    messages = [_chat_message(i, m) for i, m in enumerate(parsed.messages)]
    request = gen_pb.ChatRequest(
        model=parsed.model,
        messages=messages,
        sampling=_sampling(parsed, parsed.max_completion_tokens or parsed.max_tokens),
        constraint=_constraint(parsed),
    )
    return ChatCall(
        parsed.model, request, parsed.stream, _include_usage(parsed), _user(parsed.user)
    )


def parse_completion(body: object) -> CompletionCall:
    parsed = _validate(_CompletionBody, body)
    _require_model(parsed.model)
    if parsed.echo:
        raise BadRequest("echo is not supported", "echo")
    if parsed.suffix:
        raise BadRequest("suffix (fill-in-the-middle) is not supported", "suffix")
    if parsed.best_of not in (None, 1):
        raise BadRequest("best_of must be 1", "best_of")
    prompt = parsed.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise BadRequest(
                "batched prompts are not supported; send one request per prompt", "prompt"
            )
        if not isinstance(prompt[0], str):
            raise BadRequest("token-id prompts are not supported; send text", "prompt")
        prompt = prompt[0]
    request = gen_pb.GenerateRequest(
        model=parsed.model,
        prompt=prompt,
        sampling=_sampling(parsed, parsed.max_tokens),
        constraint=_constraint(parsed),
    )
    return CompletionCall(
        parsed.model, request, parsed.stream, _include_usage(parsed), _user(parsed.user)
    )


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


def _chat_message(index: int, message: _Message) -> gen_pb.ChatMessage:
    role = ROLES.get(message.role)
    if role is None:
        if message.role in ("tool", "function"):
            raise BadRequest("tool calling is not supported by this server", f"messages[{index}]")
        raise BadRequest(
            f"role {message.role!r} is not one of system, developer, user, assistant",
            f"messages[{index}].role",
        )
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
    return gen_pb.ChatMessage(role=role, content=content or "")


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


def _sampling(body: _Sampling, max_tokens: int | None) -> gen_pb.SamplingParams:
    if body.n not in (None, 1):
        raise BadRequest("n must be 1: one choice per request", "n")
    if body.logprobs or body.top_logprobs:
        raise BadRequest("logprobs are not supported", "logprobs")
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
FINISH = {gen_pb.FINISH_REASON_STOP: "stop", gen_pb.FINISH_REASON_LENGTH: "length"}


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


def chat_chunk(
    call_id: str,
    created: int,
    model: str,
    *,
    text: str | None = None,
    role: bool = False,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
    if text is not None:
        delta["content"] = text
    return {
        "id": call_id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }  # fmt: skip


def completion_chunk(
    call_id: str, created: int, model: str, *, text: str, finish_reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": call_id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }  # fmt: skip


def usage_chunk(
    call_id: str, created: int, model: str, usage: gen_pb.Usage, object_name: str
) -> dict[str, Any]:
    return {
        "id": call_id, "object": object_name, "created": created, "model": model,
        "choices": [], "usage": usage_dict(usage),
    }  # fmt: skip


def chat_completion(
    call_id: str,
    created: int,
    model: str,
    text: str,
    finish: int,
    usage: gen_pb.Usage,
    timings: gen_pb.Timings,
) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish_reason_name(finish) or "stop",
    }
    return {
        "id": call_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [choice], "usage": usage_dict(usage),
        "timings": timings_dict(usage, timings),
    }  # fmt: skip


def text_completion(
    call_id: str,
    created: int,
    model: str,
    text: str,
    finish: int,
    usage: gen_pb.Usage,
    timings: gen_pb.Timings,
) -> dict[str, Any]:
    choice = {
        "index": 0, "text": text, "logprobs": None,
        "finish_reason": finish_reason_name(finish) or "stop",
    }  # fmt: skip
    return {
        "id": call_id, "object": "text_completion", "created": created, "model": model,
        "choices": [choice], "usage": usage_dict(usage),
        "timings": timings_dict(usage, timings),
    }  # fmt: skip


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
