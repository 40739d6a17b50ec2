"""Sampling parameters are validated on the way in; every refusal names the field."""

from __future__ import annotations

import math

import pytest

from common.errors import InvalidArgument
from worker.engine.sampling import (
    MAX_LOGIT_BIAS,
    MAX_STOP_LENGTH,
    MAX_STOP_STRINGS,
    SamplingParams,
    check_sequences,
    check_token_ids,
)


def test_unset_fields_take_llama_cpp_defaults():
    params = SamplingParams.create(temperature=None, top_k=None)
    assert params == SamplingParams()
    assert (params.temperature, params.top_k, params.top_p, params.min_p) == (0.8, 40, 0.95, 0.05)
    assert not params.greedy and not params.penalised


def test_temperature_zero_is_greedy_and_any_penalty_counts():
    assert SamplingParams.create(temperature=0.0).greedy
    assert SamplingParams.create(repeat_penalty=1.1).penalised
    assert SamplingParams.create(presence_penalty=-0.5).penalised


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", 2.5, "sampling.temperature must be in [0.0, 2.0], got 2.5"),
        ("temperature", -0.1, "sampling.temperature must be in [0.0, 2.0]"),
        ("temperature", math.nan, "sampling.temperature must be a finite number, got nan"),
        ("top_p", 0.0, "sampling.top_p must be in (0.0, 1.0], got 0.0"),
        ("top_p", 1.01, "sampling.top_p must be in (0.0, 1.0]"),
        ("top_k", -1, "sampling.top_k must be in [0, "),
        ("min_p", 1.5, "sampling.min_p must be in [0.0, 1.0]"),
        ("repeat_penalty", 0.0, "sampling.repeat_penalty must be in (0.0, 10.0]"),
        ("presence_penalty", 2.5, "sampling.presence_penalty must be in [-2.0, 2.0]"),
        ("frequency_penalty", -math.inf, "sampling.frequency_penalty must be a finite number"),
        ("repeat_last_n", -2, "sampling.repeat_last_n must be in [-1, "),
        ("seed", -1, "sampling.seed must be in [0, 4294967294]"),
        ("seed", 0xFFFFFFFF, "sampling.seed must be in [0, 4294967294], got 4294967295"),
        ("max_tokens", 0, "sampling.max_tokens must be in [1, "),
        ("top_logprobs", 21, "sampling.top_logprobs must be in [0, 20], got 21"),
        ("top_logprobs", -1, "sampling.top_logprobs must be in [0, 20]"),
    ],
)
def test_each_out_of_range_value_is_refused_naming_its_field(field, value, message):
    with pytest.raises(InvalidArgument) as refused:
        SamplingParams.create(**{field: value})
    assert message in refused.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0.0),
        ("temperature", 2.0),
        ("top_p", 1.0),
        ("top_k", 0),
        ("min_p", 0.0),
        ("repeat_last_n", -1),
        ("seed", 0),
        ("seed", 0xFFFFFFFE),
        ("presence_penalty", -2.0),
        ("max_tokens", 1),
        ("top_logprobs", 0),
        ("top_logprobs", 20),
    ],
)
def test_the_ends_of_each_range_are_accepted(field, value):
    assert getattr(SamplingParams.create(**{field: value}), field) == value


def test_unknown_fields_are_refused_by_name():
    with pytest.raises(InvalidArgument, match="unknown sampling fields: best_of, typical_p"):
        SamplingParams.create(typical_p=0.9, best_of=2, temperature=0.5)


def test_stop_strings_are_limited_in_number_and_length_and_may_not_be_empty():
    assert SamplingParams.create(stop=["a", "b"]).stop == ("a", "b")
    with pytest.raises(InvalidArgument, match=f"sampling.stop has {MAX_STOP_STRINGS + 1} strings"):
        SamplingParams.create(stop=["x"] * (MAX_STOP_STRINGS + 1))
    with pytest.raises(InvalidArgument, match=r"sampling.stop\[1\] is empty"):
        SamplingParams.create(stop=["ok", ""])
    too_long = "x" * (MAX_STOP_LENGTH + 1)
    with pytest.raises(InvalidArgument, match=rf"sampling.stop\[0\] is {MAX_STOP_LENGTH + 1} char"):
        SamplingParams.create(stop=[too_long])


def test_logit_bias_from_a_mapping_or_pairs_is_sorted_and_range_checked():
    assert SamplingParams.create(logit_bias={7: -1.0, 3: 2.5}).logit_bias == ((3, 2.5), (7, -1.0))
    assert SamplingParams.create(logit_bias=[(9, 100.0)]).logit_bias == ((9, 100.0),)
    with pytest.raises(InvalidArgument, match=r"sampling.logit_bias\[5\] must be in \[-100, 100\]"):
        SamplingParams.create(logit_bias={5: 100.5})
    with pytest.raises(InvalidArgument, match=r"sampling.logit_bias\[2\] must be in"):
        SamplingParams.create(logit_bias={2: math.nan})
    many = {i: 0.0 for i in range(MAX_LOGIT_BIAS + 1)}
    with pytest.raises(InvalidArgument, match=f"sampling.logit_bias has {MAX_LOGIT_BIAS + 1}"):
        SamplingParams.create(logit_bias=many)


def test_token_ids_outside_the_vocabulary_are_refused_with_their_place():
    check_token_ids("tokens", [0, 99], n_vocab=100)
    with pytest.raises(InvalidArgument, match=r"tokens\[1\] = 100 is not a token .*0\.\.99"):
        check_token_ids("tokens", [5, 100], n_vocab=100)
    with pytest.raises(InvalidArgument, match=r"sampling.logit_bias\[0\] = -1"):
        check_token_ids("sampling.logit_bias", [-1], n_vocab=100)


def test_n_is_within_1_to_16_and_the_models_slots():
    check_sequences(4, 4, "m")
    with pytest.raises(InvalidArgument, match=r"n must be in \[1, 16\], got 1000"):
        check_sequences(1000, 64, "m")
    with pytest.raises(InvalidArgument, match=r"n must be in \[1, 16\], got 0"):
        check_sequences(0, 4, "m")
    with pytest.raises(InvalidArgument, match=r"n = 5 .* model 'm' has 4 \(n_parallel\)"):
        check_sequences(5, 4, "m")
