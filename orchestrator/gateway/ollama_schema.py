"""Ollama's JSON shapes to the OpenAI API's requests and back, with no HTTP framework and
no I/O.

A thin adapter: an Ollama body is checked for what only Ollama has (its `options` map, its
`format`, its model tags, its load requests), then rewritten as the OpenAI body it means and
parsed by orchestrator.gateway.openai_schema, which builds the generation protos. Sampling
values, stop strings, seeds, JSON constraints and their refusals therefore live in one
place; a refusal from there is reworded with Ollama's field names (`max_tokens` becomes
`options.num_predict`). Replies follow Ollama's api/types.go: NDJSON lines, durations in
nanoseconds, `done_reason`, and `{"error": "..."}` for every error.

Tools: /api/chat's `tools` have OpenAI's shape and pass through; Ollama's tool calls carry
no ids, so the history's calls get ids here (`call_<message>_<call>`) and each `tool`
message answers the earliest unanswered call of its `tool_name` (or the earliest
unanswered one). Ollama has no tool_choice: the model decides (auto); `tool_choice` and
`parallel_tool_calls` in OpenAI's shapes are accepted as llamaherd extensions. Replies carry
the worker's calls in `message.tool_calls` (arguments as an object) and Ollama's done_reason
"stop".
`think`: the model's separated reasoning comes back in `thinking` (message.thinking for a
chat) unless think is false; a model that reasons cannot be told not to, so think: false
only drops it. `logprobs`/`top_logprobs` come back per chunk in Ollama's shape.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from llamaherd.v1 import generation_pb2 as gen_pb
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr

from common.errors import LlamaherdError
from common.status import ModelStatus
from orchestrator.cluster.types import ClusterSnapshot
from orchestrator.gateway import openai_schema as oa
from orchestrator.gateway.errors import BadRequest, ModelNotServed
from orchestrator.gateway.json_body import validated
from orchestrator.gateway.tool_deltas import AssembledCall, assembled

# The Ollama release whose API (api/types.go, docs/api.md) these shapes follow; clients
# compare it to decide which features to use.
OLLAMA_VERSION = "0.33.0"
PATH_PREFIX = "/api/"  # where Ollama's API lives, beside OpenAI's /v1
LATEST = ":latest"
NS_PER_MS = 1_000_000

# ---- options ----------------------------------------------------------------------------
# Every option Ollama's clients may send, by the JSON type Ollama gives it (api.Options and
# the official clients' Options, which still list some that Ollama dropped).
INT_OPTIONS = {
    "num_ctx", "num_predict", "top_k", "seed", "repeat_last_n", "num_keep", "num_batch",
    "num_gpu", "main_gpu", "num_thread", "draft_num_predict", "mirostat",
}  # fmt: skip
FLOAT_OPTIONS = {
    "temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty",
    "typical_p", "tfs_z", "mirostat_tau", "mirostat_eta",
}  # fmt: skip
BOOL_OPTIONS = {
    "numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock",
    "embedding_only", "penalize_newline",
}  # fmt: skip
# Sampling options with the same name and meaning in the OpenAI body (and its extensions).
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n",
            "presence_penalty", "frequency_penalty", "seed", "stop")  # fmt: skip
# Options that say how to load a model. On a cluster the catalog and placement decide that,
# so they are accepted and ignored, as Ollama ignores options it does not know.
LOAD_OPTIONS = {
    "num_keep", "num_batch", "num_gpu", "main_gpu", "num_thread", "draft_num_predict", "numa",
    "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock", "embedding_only",
}  # fmt: skip
KEEP_ALIVE_IGNORED = "keep_alive (placement decides which models stay loaded)"
LOAD_IGNORED = "options.{} (the catalog sets how a model is loaded)"

# Our refusals (openai_schema's) name OpenAI fields; an Ollama client knows these names.
OLLAMA_NAMES = {
    "max_completion_tokens": "options.num_predict",
    "max_tokens": "options.num_predict",
    "response_format": "format",
    **{name: f"options.{name}" for name in SAMPLING},
}
_OPENAI_NAME = re.compile(r"\b(" + "|".join(sorted(OLLAMA_NAMES, key=len, reverse=True)) + r")\b")


@dataclass(frozen=True)
class Options:
    """What an Ollama `options` map asks of the OpenAI request, and what it leaves aside."""

    openai: dict[str, Any]  # OpenAI body fields: temperature, max_tokens, stop, ...
    num_ctx: int | None  # the context the client expects; checked against the replica's
    ignored: tuple[str, ...]  # options accepted but not applied, with the reason


def parse_options(raw: object) -> Options:
    """Checks each option's JSON type as Ollama does (a number where it wants a number...)
    and maps the sampling ones; unknown names are ignored, as Ollama ignores them."""
    if raw is None:
        return Options({}, None, ())
    if not isinstance(raw, dict):
        raise BadRequest(f"options must be an object, not {_json_type(raw)}", "options")
    body: dict[str, Any] = {}
    ignored: list[str] = []
    num_ctx: int | None = None
    for name, value in raw.items():
        if value is None:
            continue  # Ollama skips nulls: the default stays
        checked = _option_value(name, value)
        if name == "num_predict":
            assert isinstance(checked, int)
            if checked != -1 and checked < 1:
                raise BadRequest(
                    f"options.num_predict must be -1 (no limit) or a count of at least 1, "
                    f"not {checked}",
                    "options.num_predict",
                )
            if checked > 0:
                body["max_tokens"] = checked
        elif name == "num_ctx":
            assert isinstance(checked, int)
            if checked < 1:
                raise BadRequest(
                    f"options.num_ctx must be at least 1, not {checked}", "options.num_ctx"
                )
            num_ctx = checked
        elif name == "seed" and checked == -1:
            pass  # Ollama's default: a fresh random seed, as an unset seed here
        elif name == "typical_p":
            if checked != 1:
                raise BadRequest(
                    "options.typical_p: locally typical sampling is not supported (1 turns it off)",
                    "options.typical_p",
                )
        elif name in SAMPLING:
            body[name] = checked
        elif name in LOAD_OPTIONS:
            ignored.append(LOAD_IGNORED.format(name))
        # Unknown names are ignored, as Ollama ignores them; so are the samplers it dropped
        # and its clients still list (mirostat, mirostat_tau, mirostat_eta, tfs_z,
        # penalize_newline), whose types are checked above all the same.
    return Options(body, num_ctx, tuple(ignored))


def _option_value(name: str, value: object) -> object:
    field = f"options.{name}"
    if name in INT_OPTIONS:
        # JSON has one number type; Ollama takes 40.0 for 40 but truncates 40.5, which
        # hides a mistake: a number with a fraction is refused here.
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise BadRequest(f"{field} must be an integer, not {_json_type(value)}", field)
    if name in FLOAT_OPTIONS:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        raise BadRequest(f"{field} must be a number, not {_json_type(value)}", field)
    if name in BOOL_OPTIONS:
        if isinstance(value, bool):
            return value
        raise BadRequest(f"{field} must be true or false, not {_json_type(value)}", field)
    if name == "stop":
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return value
        raise BadRequest(f"{field} must be a list of strings, not {_json_type(value)}", field)
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "..."
        return f"the string {json.dumps(shown)}"
    if isinstance(value, list):
        return "an array"
    return "an object"


def response_format(fmt: object) -> dict[str, Any] | None:
    """Ollama's `format` as OpenAI's response_format: "json" is any JSON object, an object
    is a JSON schema; "" and null ask for nothing."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    raise BadRequest(
        f'format must be "json" or a JSON schema object, not {_json_type(fmt)}', "format"
    )


# ---- model names --------------------------------------------------------------------------
def resolve(name: str, aliases: Collection[str]) -> str:
    """The alias an Ollama model name means: itself when served, else `alias:latest` means
    `alias` (Ollama's default tag). Anything else is returned as is, for the router to
    refuse with the models it knows."""
    if name in aliases or not name.endswith(LATEST):
        return name
    base = name.removesuffix(LATEST)
    return base if base in aliases else name


def tagged(alias: str) -> str:
    """The Ollama name of an alias: with the default tag unless it carries one."""
    return alias if ":" in alias else alias + LATEST


def known_aliases(snapshot: ClusterSnapshot) -> set[str]:
    """Aliases the cluster holds anywhere, in any state, or failed to place."""
    aliases = {r.alias for node in snapshot.nodes for r in node.replicas}
    return aliases | {p.alias for p in snapshot.problems}


def not_found(name: str) -> str:
    """Ollama's wording for a model it does not have (clients look for "not found")."""
    return f"model '{name}' not found"


# ---- requests ---------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _ToolFunction(_Body):
    name: StrictStr = ""
    arguments: Any = None


class _ToolCall(_Body):
    id: StrictStr | None = None  # newer Ollama releases number their calls
    function: _ToolFunction


class _Message(_Body):
    role: StrictStr
    content: StrictStr | None = None
    thinking: StrictStr | None = None  # an earlier turn's reasoning: not shown to the model
    images: list[Any] | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_name: StrictStr | None = None  # a tool message: the function that answered
    tool_call_id: StrictStr | None = None


class _Generation(_Body):
    model: StrictStr = ""
    stream: StrictBool | None = None
    format: Any = None
    options: Any = None
    keep_alive: StrictStr | int | float | None = None
    think: StrictBool | StrictStr | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None


class _ChatBody(_Generation):
    messages: list[_Message] | None = None
    tools: list[Any] | None = None
    # llamaherd extensions in OpenAI's shapes; Ollama has neither
    tool_choice: Any = None
    parallel_tool_calls: Any = None


class _GenerateBody(_Generation):
    prompt: StrictStr = ""
    system: StrictStr = ""
    suffix: StrictStr = ""
    template: StrictStr = ""
    context: list[Any] | None = None
    raw: StrictBool = False
    images: list[Any] | None = None


class _EmbedBody(_Body):
    model: StrictStr = ""
    input: StrictStr | list[Any] | None = None
    truncate: StrictBool | None = None
    dimensions: StrictInt | None = None
    options: Any = None
    keep_alive: StrictStr | int | float | None = None


class _EmbeddingsBody(_Body):
    model: StrictStr = ""
    prompt: StrictStr = ""
    options: Any = None
    keep_alive: StrictStr | int | float | None = None


class _ModelBody(_Body):
    model: StrictStr = ""
    name: StrictStr = ""  # the older spelling of `model`


Kind = Literal["chat", "generate"]


@dataclass(frozen=True)
class GenerationCall:
    """A parsed /api/chat or /api/generate. `call` is None for a load request (no prompt, no
    messages), which Ollama answers at once with done_reason "load"."""

    name: str  # the model as the client named it: replies echo it
    alias: str  # the alias it means (ollama_schema.resolve)
    kind: Kind
    call: oa.ChatCall | oa.CompletionCall | None
    stream: bool
    num_ctx: int | None
    ignored: tuple[str, ...]
    thinking: bool = True  # the reply carries the model's separated reasoning
    logprobs: bool = False  # the reply carries each token's logprobs


@dataclass(frozen=True)
class EmbedCall:
    """A parsed /api/embed (or, `legacy`, /api/embeddings); no inputs: a load request."""

    name: str
    alias: str
    call: oa.EmbeddingsCall | None
    num_ctx: int | None
    ignored: tuple[str, ...]
    dimensions: StrictInt | None = None
    legacy: bool = False


def parse_chat(body: object, aliases: Collection[str]) -> GenerationCall:
    """An /api/chat body, its model resolved against `aliases`."""
    parsed = validated(_ChatBody, body)
    name, alias = _model(parsed.model, aliases)
    options = _common(parsed)
    if not parsed.messages:
        return GenerationCall(name, alias, "chat", None, False, options.num_ctx, options.ignored)
    messages = _openai_messages(parsed.messages)
    openai_body = {**_openai_body(alias, parsed, options), "messages": messages}
    if parsed.tools is not None:
        openai_body["tools"] = parsed.tools
    for extension in ("tool_choice", "parallel_tool_calls"):
        if getattr(parsed, extension) is not None:
            openai_body[extension] = getattr(parsed, extension)
    call = _reworded(oa.parse_chat, openai_body)
    return GenerationCall(
        name, alias, "chat", call, _stream(parsed), options.num_ctx, options.ignored,
        parsed.think is not False, bool(parsed.logprobs),
    )  # fmt: skip


def parse_generate(body: object, aliases: Collection[str]) -> GenerationCall:
    """An /api/generate body. The prompt goes through the model's chat template as a user
    message (after `system`), as Ollama renders it; `raw` sends it as written."""
    parsed = validated(_GenerateBody, body)
    name, alias = _model(parsed.model, aliases)
    options = _common(parsed)
    if parsed.images:
        raise BadRequest(_NO_IMAGES, "images")
    if parsed.suffix:
        raise BadRequest("suffix (fill-in-the-middle) is not supported", "suffix")
    if parsed.template:
        raise BadRequest(
            "template is not supported: the model's own chat template is used; send raw: "
            "true with a prompt already in the model's format",
            "template",
        )
    if parsed.context:
        raise BadRequest(
            "context is not supported (replies carry none); use /api/chat with the "
            "conversation's messages",
            "context",
        )
    if parsed.raw and parsed.system:
        raise BadRequest("raw mode does not support system: put it in the prompt", "system")
    if not parsed.prompt:
        return GenerationCall(
            name, alias, "generate", None, False, options.num_ctx, options.ignored
        )
    openai_body = _openai_body(alias, parsed, options)
    call: oa.ChatCall | oa.CompletionCall
    if parsed.raw:
        # A completion's logprobs is the count of alternatives (OpenAI's legacy form).
        openai_body.pop("top_logprobs", None)
        if openai_body.pop("logprobs", None):
            openai_body["logprobs"] = parsed.top_logprobs or 0
        call = _reworded(oa.parse_completion, {**openai_body, "prompt": parsed.prompt})
    else:
        system = [{"role": "system", "content": parsed.system}] if parsed.system else []
        messages = [*system, {"role": "user", "content": parsed.prompt}]
        call = _reworded(oa.parse_chat, {**openai_body, "messages": messages})
    return GenerationCall(
        name, alias, "generate", call, _stream(parsed), options.num_ctx, options.ignored,
        parsed.think is not False, bool(parsed.logprobs),
    )  # fmt: skip


def parse_embed(body: object, aliases: Collection[str]) -> EmbedCall:
    """An /api/embed body: `input` is a text or a list of texts."""
    parsed = validated(_EmbedBody, body)
    name, alias = _model(parsed.model, aliases)
    options = parse_options(parsed.options)
    ignored = _keep_alive(parsed.keep_alive, options.ignored)
    if parsed.dimensions is not None and parsed.dimensions < 0:
        raise BadRequest(f"dimensions must be 0 or more, not {parsed.dimensions}", "dimensions")
    inputs = [parsed.input] if isinstance(parsed.input, str) else list(parsed.input or [])
    inputs = [text for text in inputs if text != ""]  # Ollama skips an empty input string
    if not inputs:
        return EmbedCall(name, alias, None, options.num_ctx, ignored)
    call = _reworded(oa.parse_embeddings, {"model": alias, "input": inputs})
    return EmbedCall(name, alias, call, options.num_ctx, ignored, parsed.dimensions or None)


def parse_embeddings(body: object, aliases: Collection[str]) -> EmbedCall:
    """An /api/embeddings body (Ollama's older form): one `prompt`, a vector not
    normalised."""
    parsed = validated(_EmbeddingsBody, body)
    name, alias = _model(parsed.model, aliases)
    options = parse_options(parsed.options)
    ignored = _keep_alive(parsed.keep_alive, options.ignored)
    if not parsed.prompt:
        return EmbedCall(name, alias, None, options.num_ctx, ignored, legacy=True)
    call = _reworded(oa.parse_embeddings, {"model": alias, "input": [parsed.prompt]})
    call.request.normalize = False
    return EmbedCall(name, alias, call, options.num_ctx, ignored, legacy=True)


def parse_model_name(body: object) -> str:
    """The model an /api/show body names (`model`, or the older `name`)."""
    parsed = validated(_ModelBody, body)
    name: str = parsed.model or parsed.name
    if not name:
        raise BadRequest("model is required", "model")
    return name


def check_num_ctx(num_ctx: int | None, name: str, replica_ctx: int | None) -> None:
    """Refuses an options.num_ctx above the context the model's replicas were loaded with
    (`replica_ctx`, the smallest; None when no replica is known, left to the router)."""
    if num_ctx is None or replica_ctx is None or num_ctx <= replica_ctx:
        return
    raise BadRequest(
        f"options.num_ctx {num_ctx} is above the context of model '{name}' ({replica_ctx} "
        "tokens): a cluster loads each model once for every client, with the n_ctx its "
        "catalog entry sets; ask for at most that, or raise n_ctx in the catalog",
        "options.num_ctx",
    )


def replica_context(snapshot: ClusterSnapshot, alias: str) -> int | None:
    """The smallest context among the model's ready replicas, which any of them may serve."""
    contexts = [
        _context(r) for node in snapshot.up_nodes for r in node.replicas
        if r.alias == alias and r.ready
    ]  # fmt: skip
    return min(contexts) if contexts else None


def _context(replica: ModelStatus) -> int:
    return replica.config.n_ctx or replica.n_ctx_train


_NO_IMAGES = "images are not supported: llamaherd serves text models"


def _model(name: str, aliases: Collection[str]) -> tuple[str, str]:
    if not name:
        raise BadRequest("model is required", "model")
    return name, resolve(name, aliases)


def _common(parsed: _Generation) -> Options:
    """The options and fields chat and generate share."""
    options = parse_options(parsed.options)
    if isinstance(parsed.think, str) and parsed.think not in THINK_LEVELS:
        raise BadRequest(
            f"think must be true, false or one of {', '.join(THINK_LEVELS)}, not "
            f"{json.dumps(parsed.think)}",
            "think",
        )
    return Options(options.openai, options.num_ctx, _keep_alive(parsed.keep_alive,
                                                                 options.ignored))  # fmt: skip


def _keep_alive(value: object, ignored: tuple[str, ...]) -> tuple[str, ...]:
    return (KEEP_ALIVE_IGNORED, *ignored) if value is not None else ignored


def _stream(parsed: _Generation) -> bool:
    return parsed.stream is not False  # Ollama streams unless told not to


# Ollama's reasoning efforts (for models that have levels); any of them turns thinking on.
THINK_LEVELS = ("high", "medium", "low")


def _openai_body(alias: str, parsed: _Generation, options: Options) -> dict[str, Any]:
    body: dict[str, Any] = {"model": alias, **options.openai}
    fmt = response_format(parsed.format)
    if fmt is not None:
        body["response_format"] = fmt
    if parsed.logprobs or parsed.top_logprobs:
        body["logprobs"] = parsed.logprobs
        body["top_logprobs"] = parsed.top_logprobs
    return body


def _openai_messages(messages: list[_Message]) -> list[dict[str, Any]]:
    """The history in OpenAI's shape, the calls given ids and the tool messages tied to
    them (OpenAI's tool messages name the call they answer; Ollama's name the function)."""
    unanswered: list[tuple[str, str]] = []  # (call id, function name), oldest first
    out = []
    for i, message in enumerate(messages):
        converted = _openai_message(i, message)
        for call in converted.get("tool_calls", ()):
            unanswered.append((call["id"], call["function"]["name"]))
        if converted["role"] == "tool":
            converted["tool_call_id"] = _answered(i, message, unanswered)
        out.append(converted)
    return out


def _answered(index: int, message: _Message, unanswered: list[tuple[str, str]]) -> str:
    """The id of the call a tool message answers, which is then answered."""
    wanted = message.tool_call_id
    for j, (call_id, name) in enumerate(unanswered):
        if (call_id == wanted) if wanted else (not message.tool_name or name == message.tool_name):
            del unanswered[j]
            return call_id
    # A result with no call before it (a client injecting tool output): still shown.
    return wanted or f"call_{index}"


def _openai_message(index: int, message: _Message) -> dict[str, Any]:
    if message.images:
        raise BadRequest(_NO_IMAGES, f"messages[{index}].images")
    role = message.role.lower()  # Ollama lower-cases roles
    out: dict[str, Any] = {"role": role, "content": message.content or ""}
    if message.tool_name:
        out["name"] = message.tool_name
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id or f"call_{index}_{j}",
                "type": "function",
                "function": {
                    "name": call.function.name,
                    # Ollama sends arguments as an object, OpenAI as JSON text
                    "arguments": _arguments(call.function.arguments, index, j),
                },
            }
            for j, call in enumerate(message.tool_calls)
        ]
    return out


def _arguments(arguments: object, index: int, j: int) -> str:
    if arguments is None:
        return "{}"
    if isinstance(arguments, dict):
        return json.dumps(arguments)
    if isinstance(arguments, str):  # OpenAI's form, which some clients send here too
        return arguments
    where = f"messages[{index}].tool_calls[{j}].function.arguments"
    raise BadRequest(f"{where} must be an object", where)


def _reworded(parse: Any, body: dict[str, Any]) -> Any:
    """openai_schema's parse of `body`, its refusals naming Ollama's fields."""
    try:
        return parse(body)
    except BadRequest as exc:
        param = _OPENAI_NAME.sub(lambda m: OLLAMA_NAMES[m.group(1)], exc.param or "") or None
        message = _OPENAI_NAME.sub(lambda m: OLLAMA_NAMES[m.group(1)], exc.message)
        raise BadRequest(message, param) from None


# ---- replies ----------------------------------------------------------------------------
def timestamp(unix_s: float) -> str:
    """Ollama's `created_at`: RFC 3339 in UTC."""
    moment = datetime.fromtimestamp(unix_s, tz=timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Extras:
    """What a reply (or a streamed piece) carries besides its text, in Ollama's shapes:
    the reasoning, each token's logprobs, the tool calls."""

    thinking: str = ""
    logprobs: tuple[gen_pb.TokenLogprobs, ...] = ()
    tool_calls: tuple[AssembledCall, ...] = ()

    @staticmethod
    def of(
        chunks: list[gen_pb.GenerationChunk], call: GenerationCall, calls: bool = True
    ) -> Extras:
        """The extras of `chunks` that `call` asked for (tool calls, when `calls`, whole)."""
        return Extras(
            "".join(c.reasoning for c in chunks) if call.thinking else "",
            tuple(lp for c in chunks for lp in c.logprobs) if call.logprobs else (),
            tuple(assembled(chunks)) if calls else (),
        )

    @staticmethod
    def calls_of(chunks: list[gen_pb.GenerationChunk]) -> Extras:
        """Only the tool calls the deltas of `chunks` make, whole."""
        return Extras(tool_calls=tuple(assembled(chunks)))


def chunk(
    kind: Kind, name: str, created_at: str, text: str, extras: Extras = Extras()
) -> dict[str, Any]:
    """One streamed piece of a reply."""
    return {
        "model": name, "created_at": created_at, **_text(kind, text, extras), "done": False,
        **_logprobs(extras),
    }  # fmt: skip


def final(
    kind: Kind,
    name: str,
    created_at: str,
    text: str,
    finish: int,
    usage: gen_pb.Usage,
    timings: gen_pb.Timings,
    total_ns: int,
    extras: Extras = Extras(),
) -> dict[str, Any]:
    """The last object of a reply: the rest of its text (all of it when not streamed), why
    it ended and its counts. `total_duration` is the gateway's whole handling of the request;
    the model is always loaded, so `load_duration` is 0; `context` is left out (deprecated).
    A turn that called tools ends with "stop", as Ollama's do."""
    reason = "stop" if finish == gen_pb.FINISH_REASON_TOOL_CALLS else oa.finish_reason_name(finish)
    return {
        "model": name,
        "created_at": created_at,
        **_text(kind, text, extras),
        **_logprobs(extras),
        "done": True,
        "done_reason": reason or "stop",
        "total_duration": total_ns,
        "load_duration": 0,
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": round(timings.prompt_ms * NS_PER_MS),
        "eval_count": usage.completion_tokens,
        "eval_duration": round(timings.decode_ms * NS_PER_MS),
    }


def loaded(kind: Kind, name: str, created_at: str) -> dict[str, Any]:
    """The answer to a load request: the model is there (loading is placement's job)."""
    return {
        "model": name, "created_at": created_at, **_text(kind, ""), "done": True,
        "done_reason": "load",
    }  # fmt: skip


def _text(kind: Kind, text: str, extras: Extras = Extras()) -> dict[str, Any]:
    if kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if extras.thinking:
            message["thinking"] = extras.thinking
        if extras.tool_calls:
            message["tool_calls"] = [_tool_call(i, c) for i, c in enumerate(extras.tool_calls)]
        return {"message": message}
    return {"response": text, **({"thinking": extras.thinking} if extras.thinking else {})}


def _tool_call(index: int, call: AssembledCall) -> dict[str, Any]:
    """An Ollama tool call: arguments as an object; the id and index newer releases send."""
    function = {"index": index, "name": call.name, "arguments": call.arguments_object()}
    return {"id": call.id, "function": function}


def _logprobs(extras: Extras) -> dict[str, Any]:
    """Ollama's `logprobs`: per token its text, logprob, bytes and top alternatives (the
    same entries as OpenAI chat's logprobs.content)."""
    return {"logprobs": oa.chat_logprobs(extras.logprobs)} if extras.logprobs else {}


def embed_reply(
    name: str, response: gen_pb.EmbedResponse | None, dimensions: int | None, total_ns: int
) -> dict[str, Any]:
    """/api/embed's reply: L2-normalised vectors (the worker normalises them), cut to
    `dimensions` and normalised again when asked, as Ollama does."""
    vectors = [list(e.values) for e in response.embeddings] if response is not None else []
    if dimensions:
        vectors = [_normalised(v[:dimensions]) if dimensions < len(v) else v for v in vectors]
    reply: dict[str, Any] = {"model": name, "embeddings": vectors}
    if response is not None:
        reply |= {"total_duration": total_ns, "load_duration": 0,
                  "prompt_eval_count": response.prompt_tokens}  # fmt: skip
    return reply


def embeddings_reply(response: gen_pb.EmbedResponse | None) -> dict[str, Any]:
    """/api/embeddings' reply: one vector."""
    if response is None or not response.embeddings:
        return {"embedding": []}
    return {"embedding": list(response.embeddings[0].values)}


def _normalised(vector: list[float]) -> list[float]:
    norm = max(math.sqrt(sum(x * x for x in vector)), 1e-12)
    return [x / norm for x in vector]


def error_body(error: LlamaherdError) -> dict[str, str]:
    """Ollama's error body, in a reply and as a line of a stream: a model no node serves is
    Ollama's "model 'NAME' not found"."""
    if isinstance(error, ModelNotServed):
        return {"error": not_found(error.alias)}
    return {"error": error.message}


def ndjson(payload: Mapping[str, Any]) -> bytes:
    """One line of an NDJSON stream."""
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


# ---- listings -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    """A model the cluster serves: its ready replicas, by node."""

    alias: str
    replicas: tuple[tuple[str, ModelStatus], ...]

    @property
    def first(self) -> ModelStatus:
        return self.replicas[0][1]


def served(snapshot: ClusterSnapshot) -> list[Served]:
    """Models with a ready replica on an up node, by alias (what /v1/models lists)."""
    found: dict[str, list[tuple[str, ModelStatus]]] = {}
    for node in snapshot.up_nodes:
        for replica in node.replicas:
            if replica.ready:
                found.setdefault(replica.alias, []).append((node.node_id, replica))
    return [Served(alias, tuple(found[alias])) for alias in sorted(found)]


def find_served(snapshot: ClusterSnapshot, name: str) -> Served | None:
    """The served model an Ollama name means, if any."""
    models = served(snapshot)
    alias = resolve(name, {m.alias for m in models})
    return next((m for m in models if m.alias == alias), None)


def digest(replica: ModelStatus) -> str:
    """A stable identity for the model (Ollama's is its manifest's sha256): the sha256 of
    its alias and file path, which change when the catalog entry points elsewhere."""
    return hashlib.sha256(f"{replica.alias}\0{replica.config.path}".encode()).hexdigest()


def details(replica: ModelStatus) -> dict[str, Any]:
    """Ollama's `details`; the parameter count and quantisation are not known here."""
    family = replica.architecture
    return {
        "parent_model": "", "format": "gguf", "family": family,
        "families": [family] if family else [], "parameter_size": "",
        "quantization_level": "",
    }  # fmt: skip


def tags(models: list[Served], modified_at: str) -> dict[str, Any]:
    """/api/tags: the models clients may name."""
    return {
        "models": [
            {
                "name": tagged(m.alias), "model": tagged(m.alias), "modified_at": modified_at,
                "size": m.first.file_bytes, "digest": digest(m.first),
                "details": details(m.first),
            }
            for m in models
        ]
    }  # fmt: skip


# Models stay loaded until placement moves them: no expiry to report, so a far date.
NEVER_EXPIRES = "9999-12-31T23:59:59Z"


def ps(models: list[Served]) -> dict[str, Any]:
    """/api/ps: what is loaded, one entry per model; size is one replica's memory (its
    estimate), size_vram the same when its layers are offloaded; the replicas and their
    nodes are in an extra `llamaherd` member."""
    entries = []
    for m in models:
        replica = m.first
        size = replica.memory_bytes or replica.file_bytes
        entries.append(
            {
                "name": tagged(m.alias), "model": tagged(m.alias), "size": size,
                "digest": digest(replica), "details": details(replica),
                "expires_at": NEVER_EXPIRES,
                "size_vram": size if replica.config.n_gpu_layers != 0 else 0,
                "context_length": _context(replica),
                "llamaherd": {"replicas": len(m.replicas),
                              "nodes": [node for node, _ in m.replicas]},
            }
        )  # fmt: skip
    return {"models": entries}


def show(model: Served, modified_at: str) -> dict[str, Any]:
    """/api/show: what the cluster knows of a model without reading its file (the chat
    template and GGUF metadata stay on the workers)."""
    replica = model.first
    config = replica.config
    arch = replica.architecture
    info: dict[str, Any] = {"general.architecture": arch}
    if arch and replica.n_ctx_train:
        info[f"{arch}.context_length"] = replica.n_ctx_train
    parameters = f"num_ctx {_context(replica)}"
    return {
        "modelfile": f"# served by llamaherd from the catalog\nFROM {config.path}\n",
        "parameters": parameters,
        "template": "",
        "details": details(replica),
        "model_info": info,
        # A generation model embeds too (/api/embed), but Ollama lists "embedding" only for
        # embedding models; clients read it to pick one for retrieval.
        "capabilities": ["embedding"] if config.embedding else ["completion", "tools"],
        "modified_at": modified_at,
    }


# ---- what a cluster does not do ------------------------------------------------------------
MANAGEMENT = {
    "/api/pull": "put the GGUF in the model store with `llamaherd models add FILE` or "
    "`llamaherd models import URL`, then name it in the catalog (`model: NAME`); placement "
    "loads it on the nodes",
    "/api/create": "a model's settings are its catalog entry; put a GGUF in the model store "
    "with `llamaherd models add FILE` and give it an entry in the catalog",
    "/api/delete": "take the model out of the catalog (placement unloads it), and its file "
    "out of the store with `llamaherd models rm NAME`",
    "/api/copy": "an alias is a catalog entry: add another entry naming the same file",
    "/api/push": "llamaherd does not publish models to a registry; `llamaherd models list` "
    "shows the store",
}


def refused_management(path: str) -> str:
    """Why a model management call does not apply to a cluster, and what to do instead."""
    return f"{path} is not supported by a llamaherd cluster: {MANAGEMENT[path]}"
