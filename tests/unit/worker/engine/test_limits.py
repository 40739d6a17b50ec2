"""The request limits' own checks: each refusal names the limit, its setting and the value."""

from __future__ import annotations

import json
import time

import pytest

from common.errors import InvalidArgument
from worker.engine.limits import RequestLimits, check_text, json_depth, parse_schema

LIMITS = RequestLimits(
    max_prompt_bytes=100, max_schema_bytes=1000, max_json_depth=8, max_repetition=50
)


def test_json_depth_counts_brackets_outside_strings() -> None:
    assert json_depth('{"a": [1, {"b": "[[[{{{"}]}') == 3
    assert json_depth('"\\"[["') == 0
    assert json_depth("[" * 100_000 + "]" * 100_000) == 100_000


def test_a_deep_schema_is_refused_before_the_parser_recurses() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(InvalidArgument, match=r"nests 100000 levels deep.*8 \(max_json_depth\)"):
        parse_schema(deep, RequestLimits(max_schema_bytes=1_000_000, max_json_depth=8))


def test_a_large_schema_is_refused_by_size() -> None:
    text = json.dumps({"enum": ["x" * 2000]})
    with pytest.raises(InvalidArgument, match=r"is 2014 bytes; the limit is 1000 bytes"):
        parse_schema(text, LIMITS)


@pytest.mark.parametrize("keyword", ["minLength", "maxLength", "minItems", "maxItems"])
def test_a_repetition_count_over_the_cap_is_refused_naming_where(keyword: str) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", keyword: 100_000_000}}}
    started = time.monotonic()
    with pytest.raises(InvalidArgument) as caught:
        parse_schema(json.dumps(schema), LIMITS)
    assert f"$.properties.a.{keyword} is 100000000" in caught.value.message
    assert "the limit is 50 (max_repetition)" in caught.value.message
    assert time.monotonic() - started < 0.1


def test_a_schema_within_the_limits_is_parsed() -> None:
    schema = {"type": "string", "minLength": 50, "properties": {"minLength": {"type": "integer"}}}
    assert parse_schema(json.dumps(schema), LIMITS) == schema


def test_invalid_json_is_refused_with_the_parsers_reason() -> None:
    with pytest.raises(InvalidArgument, match="is not valid JSON"):
        parse_schema("{", LIMITS)


def test_texts_over_max_prompt_bytes_are_refused_in_bytes() -> None:
    check_text("prompt", "x" * 100, LIMITS)
    check_text("prompt", "é" * 50, LIMITS)  # 100 bytes
    with pytest.raises(InvalidArgument, match=r"prompt is 102 bytes.*100 bytes per text"):
        check_text("prompt", "é" * 51, LIMITS)
    with pytest.raises(InvalidArgument, match=r"max_prompt_bytes"):
        check_text("text", "x" * 101, LIMITS)


def test_the_limits_are_worker_settings() -> None:
    from worker.config import WorkerSettings
    from worker.models.local import request_limits

    assert request_limits(WorkerSettings()) == RequestLimits()
    limits = request_limits(WorkerSettings(max_grammar_bytes="8KiB", max_repetition=10))
    assert (limits.max_grammar_bytes, limits.max_repetition) == (8192, 10)
