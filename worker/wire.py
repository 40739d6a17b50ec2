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
    Usage,
)
from worker.engine.sampling import SamplingParams
from worker.models.served import Tokenized

_OPTIONAL_SAMPLING = (
    "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
    "frequency_penalty", "repeat_last_n", "seed", "max_tokens",
)  # fmt: skip

_DEFAULT_SAMPLING = SamplingParams()

_FINISH = {
    FinishReason.STOP: gen_pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: gen_pb.FINISH_REASON_LENGTH,
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
    return [ChatMessage(m.role, m.content) for m in messages]


def messages_to_proto(messages: Sequence[ChatMessage]) -> list[gen_pb.ChatMessage]:
    return [gen_pb.ChatMessage(role=m.role, content=m.content) for m in messages]


def chunk_from_proto(msg: gen_pb.GenerationChunk) -> GenerationEvent:
    """The event a chunk carries; on the per-token path of a split model's relay."""
    if msg.finish_reason == gen_pb.FINISH_REASON_UNSPECIFIED:
        return TextDelta(msg.text, tuple(msg.token_ids))
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
    )


def chunk_to_proto(event: GenerationEvent) -> gen_pb.GenerationChunk:
    if not isinstance(event, Finished):
        return gen_pb.GenerationChunk(text=event.text, token_ids=event.token_ids)
    u, t = event.usage, event.timings
    return gen_pb.GenerationChunk(
        text=event.text,
        token_ids=event.token_ids,
        finish_reason=_FINISH[event.finish_reason],
        usage=gen_pb.Usage(
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            total_tokens=u.total_tokens,
            cached_prompt_tokens=u.cached_prompt_tokens,
        ),
        timings=gen_pb.Timings(
            queue_ms=t.queue_ms,
            prompt_ms=t.prompt_ms,
            time_to_first_token_ms=t.time_to_first_token_ms,
            decode_ms=t.decode_ms,
            prompt_tokens_per_second=t.prompt_tokens_per_second,
            decode_tokens_per_second=t.decode_tokens_per_second,
            total_ms=t.total_ms,
        ),
        stop_sequence=event.stop_sequence,
    )


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
