"""Conversions between the gRPC contract (llamaherd.v1) and the worker's domain types.

Protobuf stops here: the servicer converts on entry and exit, nothing deeper imports *_pb2.
Model settings and estimates use the converters derived from their fields in
common.wire.models, shared with the control plane (re-exported here for the servicer).
"""

from __future__ import annotations

from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as pb

from common.errors import InvalidArgument
from common.model_settings import ModelConfig
from common.wire.models import estimate_to_proto as estimate_to_proto
from common.wire.models import model_config_to_proto as model_config_to_proto
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
)
from worker.engine.sampling import SamplingParams
from worker.models.registry import ModelInfo, ModelState

_OPTIONAL_SAMPLING = (
    "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
    "frequency_penalty", "repeat_last_n", "seed", "max_tokens",
)  # fmt: skip

_FINISH = {
    FinishReason.STOP: gen_pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: gen_pb.FINISH_REASON_LENGTH,
}
_STATES = {
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.UNLOADING: pb.MODEL_STATE_UNLOADING,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}


def sampling_from_proto(msg: gen_pb.SamplingParams) -> SamplingParams:
    given: dict[str, object] = {f: getattr(msg, f) for f in _OPTIONAL_SAMPLING if msg.HasField(f)}
    if msg.stop:
        given["stop"] = list(msg.stop)
    if msg.logit_bias:
        given["logit_bias"] = dict(msg.logit_bias)
    return SamplingParams.create(**given)


def constraint_from_proto(msg: gen_pb.OutputConstraint) -> Constraint | None:
    kind = msg.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "json_object":
        return Constraint(ConstraintKind.JSON_OBJECT) if msg.json_object else None
    return Constraint(ConstraintKind(kind), getattr(msg, kind))


def messages_from_proto(messages: list[gen_pb.ChatMessage]) -> list[ChatMessage]:
    return [ChatMessage(m.role, m.content) for m in messages]


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
    )


def embeddings_to_proto(result: EmbeddingResult) -> gen_pb.EmbedResponse:
    return gen_pb.EmbedResponse(
        embeddings=[gen_pb.Embedding(values=v) for v in result.vectors],
        prompt_tokens=result.prompt_tokens,
    )


def model_config_from_proto(spec: pb.ModelSpec) -> ModelConfig:
    if not spec.alias:
        raise InvalidArgument("spec.alias is empty: name the model")
    if not spec.path:
        raise InvalidArgument("spec.path is empty: give a GGUF file or builtin:<name>")
    return parse_model_config(model_spec_to_dict(spec))


def model_info_to_proto(info: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(
        alias=info.alias,
        spec=model_config_to_proto(info.config),
        state=_STATES[info.state],
        error=info.error,
        architecture=info.architecture,
        file_bytes=info.file_bytes,
        n_ctx_train=info.n_ctx_train,
        memory=estimate_to_proto(info.estimate) if info.estimate else None,
        chat_template_source=info.chat_template_source,
        queued_requests=info.queued,
        active_requests=info.active,
        slots_total=info.slots_total,
        cached_tokens=info.cached_tokens,
        decode_tokens_per_second=info.decode_tps,
        prompt_tokens_per_second=info.prompt_tps,
        completed_requests=info.completed,
    )
