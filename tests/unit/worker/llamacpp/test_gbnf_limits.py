"""Constraints over the request limits are refused before the converter or llama.cpp sees
them: the schema of issue 14 (minLength 100000000) took 25 s and GBs to convert."""

from __future__ import annotations

import time

import pytest

from common.errors import InvalidArgument
from worker.engine.generation import Constraint, ConstraintKind
from worker.engine.limits import RequestLimits
from worker.llamacpp.gbnf import constraint_grammar, repetition_bounds

LIMITS = RequestLimits(max_grammar_bytes=4096, max_repetition=100)


def _schema(text: str) -> Constraint:
    return Constraint(ConstraintKind.JSON_SCHEMA, text)


def test_the_issue_14_schema_is_refused_at_once_naming_the_limit() -> None:
    started = time.monotonic()
    with pytest.raises(InvalidArgument) as caught:
        constraint_grammar(_schema('{"type":"string","minLength":100000000}'))
    assert time.monotonic() - started < 0.1
    assert caught.value.message == (
        "constraint.json_schema $.minLength is 100000000; the limit is 2000 (max_repetition)"
    )


def test_a_schema_whose_grammar_is_too_large_is_refused_after_conversion() -> None:
    schema = '{"type":"string","minLength":100}'  # 100 `char` items: ~600 bytes
    with pytest.raises(InvalidArgument, match=r"grammar of constraint.json_schema is \d+ bytes"):
        constraint_grammar(_schema(schema), RequestLimits(max_grammar_bytes=300))
    assert "root" in constraint_grammar(_schema(schema), LIMITS)


def test_a_grammar_over_max_grammar_bytes_is_refused() -> None:
    grammar = "root ::= " + " | ".join(f'"w{i:06d}"' for i in range(1024 * 1024 // 12))
    with pytest.raises(InvalidArgument, match=r"constraint.grammar is 1048\d+ bytes.*4096 bytes"):
        constraint_grammar(Constraint(ConstraintKind.GRAMMAR, grammar), LIMITS)


def test_repetition_counts_are_read_outside_literals_and_comments() -> None:
    grammar = 'root ::= "{9999}" [{}] x{2,300} # y{5000}\nx ::= "a"{7} "b"{1,}'
    assert repetition_bounds(grammar) == [2, 300, 7, 1]


def test_a_grammar_repeating_more_than_max_repetition_is_refused() -> None:
    grammar = Constraint(ConstraintKind.GRAMMAR, 'root ::= "a"{0,100000000}')
    with pytest.raises(InvalidArgument, match=r"repeats an item 100000000 times; the limit is 100"):
        constraint_grammar(grammar, LIMITS)
    assert constraint_grammar(Constraint(ConstraintKind.GRAMMAR, 'root ::= "a"{0,100}'), LIMITS)
