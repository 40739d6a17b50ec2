"""Property-based fuzzing of the OpenAI request parsing (Hypothesis).

The invariant, for any JSON value a client can send and for valid requests with fields
mutated: parsing returns a call whose proto serialises, or raises BadRequest (kind
invalid_argument) naming the offending param, whose OpenAI envelope encodes as JSON. Never
another exception: anything else reaches the client as a 500.

Brief by default; `make fuzz` (LLAMAHERD_FUZZ=long) runs thousands of examples.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.fuzz import fuzz_settings

from common.errors import ErrorKind
from orchestrator.gateway import openai_schema as schema
from orchestrator.gateway.errors import BadRequest, openai_envelope

PARSERS: dict[str, Callable[[object], object]] = {
    "chat": schema.parse_chat,
    "completion": schema.parse_completion,
    "embeddings": schema.parse_embeddings,
}
TIME_BOUND_S = 2.0

# Text as JSON decoders produce it: any code point, lone surrogates included ("\ud800" is
# valid JSON and json.loads returns it as is).
TEXT = st.text(st.characters(codec=None, exclude_categories=())) | st.sampled_from(
    ["", "\ud800", "a\udfffb", "\x00", "0", "-1", "1e999", "NaN", "12"]
)
NUMBERS = (
    st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([10**400, -(10**400), 2**31, 2**63, 2**64])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([1e300, -1e39, 3.5e38, 5e-324])
)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(TEXT, children, max_size=5),
    max_leaves=20,
)

MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]) | JSON},
    optional={
        "content": TEXT
        | JSON
        | st.lists(
            st.fixed_dictionaries({"type": st.just("text") | JSON}, optional={"text": TEXT | JSON}),
            max_size=3,
        )
    },
)
RESPONSE_FORMAT = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "json_object", "json_schema"]) | JSON},
    optional={
        "json_schema": st.fixed_dictionaries(
            {}, optional={"name": TEXT | JSON, "schema": JSON, "strict": JSON}
        )
        | JSON
    },
)
SAMPLING = {
    "stream": st.booleans() | JSON,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": JSON}) | JSON,
    "max_tokens": NUMBERS | JSON,
    "temperature": NUMBERS | JSON,
    "top_p": NUMBERS,
    "top_k": NUMBERS,
    "min_p": NUMBERS,
    "repeat_penalty": NUMBERS,
    "repeat_last_n": NUMBERS,
    "presence_penalty": NUMBERS,
    "frequency_penalty": NUMBERS,
    "seed": NUMBERS | JSON,
    "stop": TEXT | st.lists(TEXT, max_size=20) | JSON,
    "logit_bias": st.dictionaries(TEXT | st.integers().map(str), NUMBERS, max_size=4) | JSON,
    "n": NUMBERS | JSON,
    "logprobs": JSON,
    "top_logprobs": JSON,
    "grammar": TEXT | JSON,
    "response_format": RESPONSE_FORMAT | JSON,
    "user": JSON,
    "metadata": JSON,
}
BODIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "chat": st.fixed_dictionaries(
        {"model": st.just("gemma") | TEXT | JSON, "messages": st.lists(MESSAGE, max_size=3)},
        optional={
            **SAMPLING,
            "max_completion_tokens": NUMBERS | JSON,
            "tools": JSON,
            "functions": JSON,
            "tool_choice": JSON,
        },
    ),
    "completion": st.fixed_dictionaries(
        {"model": st.just("gemma") | TEXT, "prompt": TEXT | st.lists(TEXT | JSON, max_size=2)},
        optional={**SAMPLING, "echo": JSON, "suffix": TEXT | JSON, "best_of": NUMBERS | JSON},
    ),
    "embeddings": st.fixed_dictionaries(
        {"model": st.just("gemma") | TEXT, "input": TEXT | st.lists(TEXT | JSON, max_size=4)},
        optional={
            "encoding_format": st.sampled_from(["float", "base64"]) | JSON,
            "dimensions": NUMBERS | JSON,
            "user": JSON,
        },
    ),
}


def _check(kind: str, body: object) -> None:
    started = time.monotonic()
    try:
        call = PARSERS[kind](body)
    except BadRequest as exc:
        assert exc.kind is ErrorKind.INVALID_ARGUMENT
        assert exc.message
        if isinstance(body, dict):
            assert isinstance(exc.param, str) and exc.param, f"no param named: {exc.message}"
        json.dumps(openai_envelope(exc))  # the envelope must reach the client
    else:
        request = call.request  # type: ignore[attr-defined]
        request.SerializeToString()  # what the gateway sends to the worker
    assert time.monotonic() - started < TIME_BOUND_S


@pytest.mark.parametrize("kind", sorted(PARSERS))
@fuzz_settings()
@given(body=JSON)
def test_any_json_value_is_parsed_or_refused_precisely(kind: str, body: object) -> None:
    _check(kind, body)


@pytest.mark.parametrize("kind", sorted(PARSERS))
@fuzz_settings(examples_scale=2)
@given(data=st.data())
def test_mutated_requests_are_parsed_or_refused_precisely(kind: str, data: st.DataObject) -> None:
    _check(kind, data.draw(BODIES[kind]))


# ---- what the fuzzers found, kept as plain regression tests --------------------------------
def _deep(levels: int) -> object:
    value: object = "x"
    for _ in range(levels):
        value = {"a": [value]}
    return value


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 10**400}, "temperature"),
        ({"top_p": -(10**400)}, "top_p"),
        ({"temperature": 1e300}, "temperature"),
        ({"logit_bias": {"5": 10**400}}, "logit_bias"),
        ({"logit_bias": {"5": 1e39}}, "logit_bias"),
        ({"model": "gem\ud800ma"}, "model"),
        ({"stop": ["ok", "\udfff"]}, "stop[1]"),
        ({"messages": [{"role": "user", "content": "hi \ud83d"}]}, "messages[0].content"),
        ({"grammar": "root ::= \ud800"}, "grammar"),
        ({"user": "\ud800"}, "user"),
        ({"metadata": {"k\ud800": 1}}, "metadata"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": _deep(3000)}}},
         "response_format.json_schema.schema"),
        ({"metadata": _deep(3000)}, "metadata"),
    ],
)  # fmt: skip
def test_values_the_protos_cannot_hold_are_refused_naming_the_param(
    body: dict[str, object], param: str
) -> None:
    full = {"model": "gemma", "messages": [{"role": "user", "content": "Hi"}], **body}
    with pytest.raises(BadRequest) as info:
        schema.parse_chat(full)
    assert info.value.param is not None and info.value.param.startswith(param)
