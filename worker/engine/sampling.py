"""Sampling parameters of one request, validated on the way in.

Defaults follow llama.cpp (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05); ranges
follow OpenAI where it defines one, so a request that the OpenAI API accepts is accepted
here. Every refusal names the field, the allowed range and the value received.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.errors import InvalidArgument

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 512
MAX_LOGIT_BIAS = 1024
MAX_TOP_LOGPROBS = 20  # as OpenAI
MAX_SEQUENCES = 16  # n: sequences drawn from one prompt
SEED_RANDOM = None
SEED_LIMIT = 0xFFFFFFFF  # seeds are in [0, SEED_LIMIT)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_last_n: int = 64
    seed: int | None = SEED_RANDOM
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = field(default=())
    # Set: each token comes with its log-probability and this many most likely alternatives.
    top_logprobs: int | None = None
    ignore_eos: bool = False  # end-of-generation tokens are never sampled

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalised(self) -> bool:
        return (self.repeat_penalty, self.presence_penalty, self.frequency_penalty) != (
            1.0,
            0.0,
            0.0,
        )

    @classmethod
    def create(cls, **given: Any) -> SamplingParams:
        """Builds params from the fields a client set (absent or None = default), validated."""
        values = {k: v for k, v in given.items() if v is not None}
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidArgument(f"unknown sampling fields: {', '.join(sorted(unknown))}")
        if "stop" in values:
            values["stop"] = _stop_strings(values["stop"])
        if "logit_bias" in values:
            values["logit_bias"] = _logit_bias(values["logit_bias"])
        params = cls(**values)
        params._validate()
        return params

    def _validate(self) -> None:
        _in_range("temperature", self.temperature, 0.0, 2.0)
        _in_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _in_range("top_k", self.top_k, 0, 1 << 20)
        _in_range("min_p", self.min_p, 0.0, 1.0)
        _in_range("repeat_penalty", self.repeat_penalty, 0.0, 10.0, low_open=True)
        _in_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _in_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _in_range("repeat_last_n", self.repeat_last_n, -1, 1 << 20)
        if self.seed is not None:
            _in_range("seed", self.seed, 0, SEED_LIMIT - 1)
        if self.max_tokens is not None:
            _in_range("max_tokens", self.max_tokens, 1, 1 << 24)
        if self.top_logprobs is not None:
            _in_range("top_logprobs", self.top_logprobs, 0, MAX_TOP_LOGPROBS)


def _in_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgument(f"sampling.{name} must be a finite number, got {value}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bracket = "(" if low_open else "["
        raise InvalidArgument(f"sampling.{name} must be in {bracket}{low}, {high}], got {value}")


def _stop_strings(stop: Sequence[str]) -> tuple[str, ...]:
    stops = tuple(stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidArgument(
            f"sampling.stop has {len(stops)} strings; at most {MAX_STOP_STRINGS} are allowed"
        )
    for i, s in enumerate(stops):
        if not s:
            raise InvalidArgument(f"sampling.stop[{i}] is empty")
        if len(s) > MAX_STOP_LENGTH:
            raise InvalidArgument(
                f"sampling.stop[{i}] is {len(s)} characters; at most {MAX_STOP_LENGTH} allowed"
            )
    return stops


def _logit_bias(
    bias: Mapping[int, float] | Sequence[tuple[int, float]],
) -> tuple[tuple[int, float], ...]:
    pairs = tuple(bias.items()) if isinstance(bias, Mapping) else tuple(bias)
    if len(pairs) > MAX_LOGIT_BIAS:
        raise InvalidArgument(
            f"sampling.logit_bias has {len(pairs)} entries; at most {MAX_LOGIT_BIAS} allowed"
        )
    for token, value in pairs:
        if not math.isfinite(value) or not -100.0 <= value <= 100.0:
            raise InvalidArgument(
                f"sampling.logit_bias[{token}] must be in [-100, 100], got {value}"
            )
    return tuple(sorted(pairs))


def check_sequences(n: int, slots: int, model: str) -> None:
    """n sequences from one prompt: within [1, MAX_SEQUENCES] and the model's slots, which
    they take all at once."""
    if not 1 <= n <= MAX_SEQUENCES:
        raise InvalidArgument(f"n must be in [1, {MAX_SEQUENCES}], got {n}")
    if n > slots:
        raise InvalidArgument(
            f"n = {n} sequences need {n} slots at once, but model {model!r} has {slots} "
            f"(n_parallel); ask for at most {slots}"
        )


def check_token_ids(where: str, tokens: Sequence[int], n_vocab: int) -> None:
    """Token ids from a client must exist in the vocabulary: llama.cpp does not check."""
    for i, token in enumerate(tokens):
        if not 0 <= token < n_vocab:
            raise InvalidArgument(
                f"{where}[{i}] = {token} is not a token of this model "
                f"(vocabulary: 0..{n_vocab - 1})"
            )
