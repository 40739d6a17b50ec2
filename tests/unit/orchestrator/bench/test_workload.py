"""Load levels, arrival schedules and synthetic prompts."""

from __future__ import annotations

import itertools
import random

import pytest

from orchestrator.bench.workload import (
    WORDS,
    Level,
    WorkloadError,
    arrival_offsets,
    next_word_count,
    parse_levels,
    prompt_text,
    request_rng,
)


def test_levels_parse_from_a_list():
    assert parse_levels("concurrency", "1, 2,4") == (
        Level("concurrency", 1), Level("concurrency", 2), Level("concurrency", 4),
    )  # fmt: skip
    assert [level.label for level in parse_levels("poisson", "0.5,2")] == [
        "poisson 0.5 req/s", "poisson 2 req/s",
    ]  # fmt: skip
    assert parse_levels("rate", "3")[0].label == "3 req/s"


@pytest.mark.parametrize(
    ("kind", "text", "says"),
    [
        ("rate", "0", "--rate '0': 0 must be more than 0 requests per second"),
        ("poisson", "2,-1", "-1 must be more than 0 requests per second"),
        ("concurrency", "0", "0 must be more than 0 streams"),
        ("concurrency", "1.5", "1.5 is not a whole number of streams"),
        ("rate", "fast", "'fast' is not a number"),
        ("rate", "nan", "must be more than 0"),
    ],
)
def test_levels_that_cannot_run_are_refused(kind, text, says):
    with pytest.raises(WorkloadError) as caught:
        parse_levels(kind, text)
    assert says in str(caught.value)


def test_a_fixed_rate_spaces_requests_evenly():
    offsets = arrival_offsets(Level("rate", 4), random.Random(0), count=5)
    assert offsets == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert arrival_offsets(Level("rate", 2), random.Random(0), within_s=1.9) == [0, 0.5, 1, 1.5]


def test_poisson_arrivals_are_seeded_and_average_the_rate():
    level = Level("poisson", 5)
    first = arrival_offsets(level, random.Random(7), count=2000)
    assert first == arrival_offsets(level, random.Random(7), count=2000)
    assert first != arrival_offsets(level, random.Random(8), count=2000)
    gaps = [b - a for a, b in itertools.pairwise(first)]
    assert sum(gaps) / len(gaps) == pytest.approx(0.2, rel=0.1)
    assert len(set(round(g, 6) for g in gaps)) > 1900  # not evenly spaced


def test_a_concurrency_level_has_no_schedule():
    with pytest.raises(WorkloadError):
        arrival_offsets(Level("concurrency", 2), random.Random(0), count=3)


def test_prompts_are_seeded_per_request():
    a = prompt_text(50, request_rng(0, 0, 1))
    assert a == prompt_text(50, request_rng(0, 0, 1))
    assert a != prompt_text(50, request_rng(0, 0, 2))
    assert a != prompt_text(50, request_rng(1, 0, 1))
    assert len(a.split()) == 50 and set(a.split()) <= set(WORDS)


@pytest.mark.parametrize(("overhead", "per_word"), [(3, 1), (12, 1), (1, 2)])
def test_the_word_count_search_reaches_the_target(overhead, per_word):
    def count(words: int) -> int:  # a tokenizer with a fixed template overhead
        return overhead + per_word * words

    points: list[tuple[int, int]] = []
    for _ in range(4):
        words = next_word_count(points, 128)
        points.append((words, count(words)))
    assert points[-1][1] == 128 or (per_word == 2 and abs(points[-1][1] - 128) <= 1)
