"""Streaming generation from the real Gemma model through a real gRPC channel."""

from __future__ import annotations

import json

from llamaherd.v1 import generation_pb2 as gen_pb
from support.models import GEMMA
from support.rpc import generate

STORY = "Once upon a time"


def test_greedy_generation_streams_token_by_token(stub):
    result = generate(stub, GEMMA, STORY, temperature=0, max_tokens=24)

    deltas = result.chunks[:-1]
    assert len(deltas) >= 10, "text should arrive in many chunks, not all at the end"
    assert all(c.finish_reason == gen_pb.FINISH_REASON_UNSPECIFIED for c in deltas)
    assert result.final.finish_reason == gen_pb.FINISH_REASON_LENGTH
    assert result.final.usage.completion_tokens == 24
    assert len(result.token_ids) == 24
    assert result.text.strip(), "the model produced text"
    # The same greedy request gives the same text, token for token.
    again = generate(stub, GEMMA, STORY, temperature=0, max_tokens=24)
    assert again.text == result.text
    assert again.token_ids == result.token_ids


def test_usage_counts_the_prompt_as_tokenize_does(stub):
    tokens = stub.Tokenize(gen_pb.TokenizeRequest(model=GEMMA, text=STORY)).tokens
    result = generate(stub, GEMMA, STORY, temperature=0, max_tokens=3)
    usage = result.final.usage
    assert usage.prompt_tokens == len(tokens)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_repeated_prompt_reuses_the_cached_prefix(stub):
    prompt = "The quick brown fox jumps over the lazy dog. " * 4
    generate(stub, GEMMA, prompt, temperature=0, max_tokens=2)
    second = generate(stub, GEMMA, prompt + "Then", temperature=0, max_tokens=2)
    usage = second.final.usage
    assert usage.cached_prompt_tokens >= usage.prompt_tokens - 3


def test_timings_are_reported(stub):
    final = generate(stub, GEMMA, STORY, temperature=0, max_tokens=16).final
    t = final.timings
    assert 0 < t.time_to_first_token_ms < t.total_ms
    assert t.decode_ms > 0
    assert t.decode_tokens_per_second > 1
    assert t.prompt_ms > 0


def test_stop_string_ends_generation_and_is_not_returned(stub):
    free = generate(stub, GEMMA, STORY, temperature=0, max_tokens=40).text
    assert "." in free, "the greedy story should contain a sentence end"
    stopped = generate(stub, GEMMA, STORY, temperature=0, max_tokens=40, stop=["."])
    assert stopped.final.finish_reason == gen_pb.FINISH_REASON_STOP
    assert stopped.text == free[: free.index(".")]


def test_seeded_sampling_is_reproducible(stub):
    a = generate(stub, GEMMA, STORY, temperature=1.0, seed=1234, max_tokens=20)
    b = generate(stub, GEMMA, STORY, temperature=1.0, seed=1234, max_tokens=20)
    c = generate(stub, GEMMA, STORY, temperature=1.0, seed=99, max_tokens=20)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_grammar_constrains_the_output_and_ends_generation(stub):
    grammar = gen_pb.OutputConstraint(grammar='root ::= "yes" | "no"')
    result = generate(stub, GEMMA, "Is the sky blue? Answer:", grammar, temperature=0)
    assert result.text in {"yes", "no"}
    assert result.final.finish_reason == gen_pb.FINISH_REASON_STOP


def test_json_schema_output_is_valid_json_of_that_shape(stub):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    constraint = gen_pb.OutputConstraint(json_schema=json.dumps(schema))
    result = generate(stub, GEMMA, "A person as JSON:", constraint, temperature=0, max_tokens=60)
    value = json.loads(result.text)
    assert isinstance(value["name"], str)
    assert isinstance(value["age"], int)


def test_logit_bias_bans_a_token(stub):
    baseline = generate(stub, GEMMA, STORY, temperature=0, max_tokens=1)
    first = baseline.token_ids[0]
    biased = generate(stub, GEMMA, STORY, temperature=0, max_tokens=1, logit_bias={first: -100})
    assert biased.token_ids[0] != first


def test_ignore_eos_runs_to_max_tokens_even_past_a_forced_end(stub):
    # A client bias that makes the end token certain: the reply ends at once...
    eos = {1: 100.0, 106: 100.0}  # Gemma's <eos> and <end_of_turn>
    ended = generate(stub, GEMMA, STORY, temperature=0, max_tokens=6, logit_bias=eos)
    assert ended.final.finish_reason == gen_pb.FINISH_REASON_STOP
    assert ended.final.usage.completion_tokens <= 1
    # ...and ignore_eos bans every end token, overriding that bias.
    full = generate(
        stub, GEMMA, STORY, temperature=0, max_tokens=6, logit_bias=eos, ignore_eos=True
    )
    assert full.final.finish_reason == gen_pb.FINISH_REASON_LENGTH
    assert full.final.usage.completion_tokens == 6
    assert not set(full.token_ids) & {1, 106}


def test_max_tokens_is_capped_by_the_context(stub):
    # 1000-token prompt in a 1024-token context leaves room for at most 24 tokens.
    prompt = "word " * 999
    result = generate(stub, GEMMA, prompt, temperature=0, max_tokens=500)
    assert result.final.finish_reason == gen_pb.FINISH_REASON_LENGTH
    assert result.final.usage.prompt_tokens + result.final.usage.completion_tokens <= 1024
