"""Conversions between the gRPC contract (llamaherd.v1) and the worker's domain types: the
worker's side of the wire, as common.wire is the side both share.

Protobuf stops here: the servicer converts on entry and exit, a split model's relay
converts the same way to reach its child, and nothing below them imports *_pb2.
Model settings, estimates and statuses cross the wire through common.wire, which the
control plane shares; this module holds only what the worker alone converts.
"""

from __future__ import annotations

from collections.abc import Sequence

from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as pb

from common.errors import InvalidArgument
from common.model_settings import ModelConfig
from common.wire.models import model_spec_to_dict
from worker.config import parse_model_config
from worker.engine.generation import (
    ChatMessage,
    Constraint,
    ConstraintKind,
    EmbeddingResult,
    Finished,
    FinishReason,
    GenerationEvent,
    TextDelta,
    Timings,
    TokenLogprob,
    TokenLogprobs,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    Tools,
    Usage,
)
from worker.engine.sampling import SamplingParams
from worker.models.served import Tokenized

_OPTIONAL_SAMPLING = (
    "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
    "frequency_penalty", "repeat_last_n", "seed", "max_tokens", "top_logprobs", "ignore_eos",
)  # fmt: skip

_DEFAULT_SAMPLING = SamplingParams()

_FINISH = {
    FinishReason.STOP: gen_pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: gen_pb.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: gen_pb.FINISH_REASON_TOOL_CALLS,
}
_FINISH_FROM = {code: reason for reason, code in _FINISH.items()}


def sampling_from_proto(msg: gen_pb.SamplingParams) -> SamplingParams:
    given: dict[str, object] = {f: getattr(msg, f) for f in _OPTIONAL_SAMPLING if msg.HasField(f)}
    if msg.stop:
        given["stop"] = list(msg.stop)
    if msg.logit_bias:
        given["logit_bias"] = dict(msg.logit_bias)
    return SamplingParams.create(**given)


def sampling_to_proto(params: SamplingParams) -> gen_pb.SamplingParams:
    """Sets only what differs from the defaults, so a default (0.95, say, which a proto
    float cannot hold exactly) is read back as the very same default."""
    given = {
        f: getattr(params, f)
        for f in _OPTIONAL_SAMPLING
        if getattr(params, f) != getattr(_DEFAULT_SAMPLING, f)
    }
    return gen_pb.SamplingParams(**given, stop=params.stop, logit_bias=dict(params.logit_bias))


def constraint_from_proto(msg: gen_pb.OutputConstraint) -> Constraint | None:
    kind = msg.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "json_object":
        return Constraint(ConstraintKind.JSON_OBJECT) if msg.json_object else None
    return Constraint(ConstraintKind(kind), getattr(msg, kind))


def constraint_to_proto(constraint: Constraint | None) -> gen_pb.OutputConstraint:
    if constraint is None:
        return gen_pb.OutputConstraint()
    if constraint.kind is ConstraintKind.JSON_OBJECT:
        return gen_pb.OutputConstraint(json_object=True)
    return gen_pb.OutputConstraint(**{constraint.kind.value: constraint.text})


def messages_from_proto(messages: list[gen_pb.ChatMessage]) -> list[ChatMessage]:
    return [
        ChatMessage(
            m.role,
            m.content,
            tool_calls=tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls),
            tool_call_id=m.tool_call_id,
            name=m.name,
        )
        for m in messages
    ]


def messages_to_proto(messages: Sequence[ChatMessage]) -> list[gen_pb.ChatMessage]:
    return [
        gen_pb.ChatMessage(
            role=m.role,
            content=m.content,
            tool_calls=[
                gen_pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in m.tool_calls
            ],
            tool_call_id=m.tool_call_id,
            name=m.name,
        )
        for m in messages
    ]


_TOOL_CHOICE = {
    gen_pb.ToolChoice.MODE_AUTO: ToolChoiceMode.AUTO,
    gen_pb.ToolChoice.MODE_NONE: ToolChoiceMode.NONE,
    gen_pb.ToolChoice.MODE_REQUIRED: ToolChoiceMode.REQUIRED,
    gen_pb.ToolChoice.MODE_FUNCTION: ToolChoiceMode.FUNCTION,
}
_TOOL_CHOICE_TO = {mode: code for code, mode in _TOOL_CHOICE.items()}


def tools_from_proto(request: gen_pb.ChatRequest) -> Tools:
    """The tools a chat request offers; checking them (names, schemas) is the chat layer's."""
    choice = request.tool_choice
    return Tools(
        tools=tuple(Tool(t.name, t.description, t.parameters_json) for t in request.tools),
        choice=ToolChoice(_TOOL_CHOICE[choice.mode], choice.function),
        parallel=request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True,
    )


def tools_to_proto(tools: Tools, request: gen_pb.ChatRequest) -> None:
    """Sets `tools` on `request` (a relay's copy of a chat request)."""
    request.tools.extend(
        gen_pb.Tool(name=t.name, description=t.description, parameters_json=t.parameters_json)
        for t in tools.tools
    )
    request.tool_choice.CopyFrom(
        gen_pb.ToolChoice(mode=_TOOL_CHOICE_TO[tools.choice.mode], function=tools.choice.function)
    )
    if not tools.parallel:
        request.parallel_tool_calls = False


def _logprob_from_proto(msg: gen_pb.TokenLogprob) -> TokenLogprob:
    return TokenLogprob(msg.token_id, msg.piece, msg.logprob)


def _logprobs_from_proto(msgs: Sequence[gen_pb.TokenLogprobs]) -> tuple[TokenLogprobs, ...]:
    return tuple(
        TokenLogprobs(_logprob_from_proto(m.chosen), tuple(map(_logprob_from_proto, m.top)))
        for m in msgs
    )


# -inf (a token the grammar or a bias rules out) travels as a finite floor, as OpenAI does.
LOGPROB_FLOOR = -9999.0


def _logprob_to_proto(lp: TokenLogprob) -> gen_pb.TokenLogprob:
    return gen_pb.TokenLogprob(
        token_id=lp.token_id, piece=lp.piece, logprob=max(lp.logprob, LOGPROB_FLOOR)
    )


def _logprobs_to_proto(items: Sequence[TokenLogprobs]) -> list[gen_pb.TokenLogprobs]:
    return [
        gen_pb.TokenLogprobs(
            chosen=_logprob_to_proto(i.chosen), top=[_logprob_to_proto(t) for t in i.top]
        )
        for i in items
    ]


def _tool_deltas_from_proto(msgs: Sequence[gen_pb.ToolCallDelta]) -> tuple[ToolCallDelta, ...]:
    return tuple(ToolCallDelta(m.index, m.id, m.name, m.arguments) for m in msgs)


def _tool_deltas_to_proto(deltas: Sequence[ToolCallDelta]) -> list[gen_pb.ToolCallDelta]:
    return [
        gen_pb.ToolCallDelta(index=d.index, id=d.id, name=d.name, arguments=d.arguments)
        for d in deltas
    ]


def chunk_from_proto(msg: gen_pb.GenerationChunk) -> GenerationEvent:
    """The event a chunk carries; on the per-token path of a split model's relay."""
    logprobs = _logprobs_from_proto(msg.logprobs)
    tool_calls = _tool_deltas_from_proto(msg.tool_calls)
    if msg.finish_reason == gen_pb.FINISH_REASON_UNSPECIFIED:
        return TextDelta(
            msg.text,
            tuple(msg.token_ids),
            logprobs=logprobs,
            index=msg.index,
            reasoning=msg.reasoning,
            tool_calls=tool_calls,
        )
    u, t = msg.usage, msg.timings
    return Finished(
        text=msg.text,
        token_ids=tuple(msg.token_ids),
        finish_reason=_FINISH_FROM[msg.finish_reason],
        usage=Usage(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens),
        timings=Timings(
            queue_ms=t.queue_ms,
            prompt_ms=t.prompt_ms,
            time_to_first_token_ms=t.time_to_first_token_ms,
            decode_ms=t.decode_ms,
            total_ms=t.total_ms,
            prompt_tokens_per_second=t.prompt_tokens_per_second,
            decode_tokens_per_second=t.decode_tokens_per_second,
        ),
        stop_sequence=msg.stop_sequence,
        logprobs=logprobs,
        index=msg.index,
        reasoning=msg.reasoning,
        tool_calls=tool_calls,
    )


def chunk_to_proto(event: GenerationEvent) -> gen_pb.GenerationChunk:
    chunk = gen_pb.GenerationChunk(
        text=event.text,
        token_ids=event.token_ids,
        index=event.index,
        reasoning=event.reasoning,
        logprobs=_logprobs_to_proto(event.logprobs) if event.logprobs else None,
        tool_calls=_tool_deltas_to_proto(event.tool_calls) if event.tool_calls else None,
    )
    if not isinstance(event, Finished):
        return chunk
    u, t = event.usage, event.timings
    chunk.finish_reason = _FINISH[event.finish_reason]
    chunk.stop_sequence = event.stop_sequence
    chunk.usage.CopyFrom(
        gen_pb.Usage(
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            total_tokens=u.total_tokens,
            cached_prompt_tokens=u.cached_prompt_tokens,
        )
    )
    chunk.timings.CopyFrom(
        gen_pb.Timings(
            queue_ms=t.queue_ms,
            prompt_ms=t.prompt_ms,
            time_to_first_token_ms=t.time_to_first_token_ms,
            decode_ms=t.decode_ms,
            prompt_tokens_per_second=t.prompt_tokens_per_second,
            decode_tokens_per_second=t.decode_tokens_per_second,
            total_ms=t.total_ms,
        )
    )
    return chunk


def embeddings_to_proto(result: EmbeddingResult) -> gen_pb.EmbedResponse:
    return gen_pb.EmbedResponse(
        embeddings=[gen_pb.Embedding(values=v) for v in result.vectors],
        prompt_tokens=result.prompt_tokens,
    )


def embeddings_from_proto(msg: gen_pb.EmbedResponse) -> EmbeddingResult:
    return EmbeddingResult(tuple(tuple(e.values) for e in msg.embeddings), msg.prompt_tokens)


def tokenized_to_proto(tokenized: Tokenized) -> gen_pb.TokenizeResponse:
    return gen_pb.TokenizeResponse(tokens=tokenized.tokens, pieces=tokenized.pieces)


def tokenized_from_proto(msg: gen_pb.TokenizeResponse) -> Tokenized:
    return Tokenized(tuple(msg.tokens), tuple(msg.pieces))


def model_config_from_proto(spec: pb.ModelSpec) -> ModelConfig:
    if not spec.alias:
        raise InvalidArgument("spec.alias is empty: name the model")
    if not spec.path:
        raise InvalidArgument("spec.path is empty: give a GGUF file or builtin:<name>")
    return parse_model_config(model_spec_to_dict(spec))
