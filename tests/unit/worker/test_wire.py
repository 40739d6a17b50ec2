"""The request and result converters both ways: a split model relays through them, so
what crosses twice must arrive exactly as it left."""

from __future__ import annotations

import pytest
from llamaherd.v1 import generation_pb2 as gen_pb

from worker import wire
from worker.engine.generation import (
    ChatMessage,
    Constraint,
    ConstraintKind,
    EmbeddingResult,
    Finished,
    FinishReason,
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


def test_default_sampling_crosses_as_an_empty_message_and_returns_the_exact_defaults() -> None:
    message = wire.sampling_to_proto(SamplingParams())
    assert message == gen_pb.SamplingParams()
    # 0.95 cannot be held by a proto float: sending it would come back as 0.949999988.
    assert wire.sampling_from_proto(message) == SamplingParams()


def test_sampling_a_client_set_survives_a_relay_exactly() -> None:
    sent = gen_pb.SamplingParams(
        temperature=0.7, top_p=0.9, top_k=7, min_p=0.1, repeat_penalty=1.1,
        presence_penalty=0.5, frequency_penalty=-0.5, repeat_last_n=-1, seed=42,
        stop=["\n\n", "END"], max_tokens=12, logit_bias={5: -100.0, 3: 2.5}, ignore_eos=True,
        top_logprobs=3,
    )  # fmt: skip
    received = wire.sampling_from_proto(sent)
    relayed = wire.sampling_to_proto(received)
    assert relayed == sent
    assert wire.sampling_from_proto(relayed) == received


def test_a_seed_of_zero_and_greedy_temperature_are_kept_not_taken_for_unset() -> None:
    params = SamplingParams.create(temperature=0.0, seed=0, top_logprobs=0)
    message = wire.sampling_to_proto(params)
    assert message.HasField("temperature") and message.HasField("seed")
    assert message.HasField("top_logprobs")
    assert wire.sampling_from_proto(message) == params


@pytest.mark.parametrize(
    "constraint",
    [
        None,
        Constraint(ConstraintKind.GRAMMAR, 'root ::= "yes" | "no"'),
        Constraint(ConstraintKind.JSON_SCHEMA, '{"type": "object"}'),
        Constraint(ConstraintKind.JSON_OBJECT),
    ],
)
def test_constraints_survive_the_wire(constraint: Constraint | None) -> None:
    assert wire.constraint_from_proto(wire.constraint_to_proto(constraint)) == constraint


def test_messages_survive_the_wire_in_order() -> None:
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi ✓")]
    assert wire.messages_from_proto(wire.messages_to_proto(messages)) == messages


def test_a_text_chunk_survives_the_wire() -> None:
    delta = TextDelta("Once", (9038,))
    assert wire.chunk_from_proto(wire.chunk_to_proto(delta)) == delta
    # A held-back token (part of a UTF-8 character) arrives with no text yet.
    held = TextDelta("", (239, 240))
    assert wire.chunk_from_proto(wire.chunk_to_proto(held)) == held


@pytest.mark.parametrize("reason", list(FinishReason))
def test_the_final_chunk_survives_the_wire_with_its_accounting(reason: FinishReason) -> None:
    finished = Finished(
        text=" end",
        token_ids=(1, 2),
        finish_reason=reason,
        usage=Usage(prompt_tokens=5, completion_tokens=2, cached_prompt_tokens=3),
        stop_sequence="END" if reason is FinishReason.STOP else "",
        timings=Timings(
            queue_ms=0.25, prompt_ms=12.5, time_to_first_token_ms=13.0, decode_ms=40.125,
            total_ms=53.5, prompt_tokens_per_second=400.0, decode_tokens_per_second=24.9,
        ),
    )  # fmt: skip
    message = wire.chunk_to_proto(finished)
    assert message.usage.total_tokens == 7
    assert wire.chunk_from_proto(message) == finished


def test_embeddings_survive_the_wire() -> None:
    # Values a float32 holds exactly, as llama.cpp's are.
    result = EmbeddingResult(((0.5, -0.25, 1.0), (0.125, 0.0, -1.0)), prompt_tokens=6)
    assert wire.embeddings_from_proto(wire.embeddings_to_proto(result)) == result


def test_tokens_and_their_pieces_survive_the_wire() -> None:
    tokenized = Tokenized((2, 9038, 239), (b"<bos>", b"Once", b"\xe2\x9c"))
    assert wire.tokenized_from_proto(wire.tokenized_to_proto(tokenized)) == tokenized
    assert wire.tokenized_from_proto(wire.tokenized_to_proto(Tokenized((2,)))).pieces == ()


def test_tool_calls_and_tool_results_in_the_history_survive_the_wire() -> None:
    messages = [
        ChatMessage("user", "Weather in Oslo?"),
        ChatMessage(
            "assistant", "", tool_calls=(ToolCall("call_1", "weather", '{"city":"Oslo"}'),)
        ),
        ChatMessage("tool", '{"temp": 3}', tool_call_id="call_1", name="weather"),
    ]
    assert wire.messages_from_proto(wire.messages_to_proto(messages)) == messages


@pytest.mark.parametrize(
    "tools",
    [
        Tools(),
        Tools((Tool("weather", "Current weather", '{"type":"object"}'),)),
        Tools(
            (Tool("a"), Tool("b")),
            ToolChoice(ToolChoiceMode.FUNCTION, "b"),
            parallel=False,
        ),
        Tools((Tool("a"),), ToolChoice(ToolChoiceMode.REQUIRED)),
    ],
)
def test_tools_survive_the_wire(tools: Tools) -> None:
    request = gen_pb.ChatRequest(model="m")
    wire.tools_to_proto(tools, request)
    assert wire.tools_from_proto(request) == tools


def test_a_chunk_with_logprobs_reasoning_and_tool_call_deltas_survives_the_wire() -> None:
    lp = TokenLogprobs(TokenLogprob(7, b"\xe2\x9c", -0.25), (TokenLogprob(7, b"\xe2\x9c", -0.25),))
    event = TextDelta(
        "",
        (7,),
        logprobs=(lp,),
        index=2,
        reasoning="hmm",
        tool_calls=(ToolCallDelta(0, "call_1", "weather", '{"ci'),),
    )
    assert wire.chunk_from_proto(wire.chunk_to_proto(event)) == event


def test_an_impossible_token_travels_with_a_finite_logprob() -> None:
    lp = TokenLogprobs(TokenLogprob(1, b"a", float("-inf")))
    chunk = wire.chunk_to_proto(TextDelta("a", (1,), logprobs=(lp,)))
    assert chunk.logprobs[0].chosen.logprob == wire.LOGPROB_FLOOR
