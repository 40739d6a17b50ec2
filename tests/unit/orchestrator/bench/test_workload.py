"""Load levels, arrival schedules and synthetic prompts."""

from __future__ import annotations

import itertools
import random

import pytest

from orchestrator.bench.workload import (
    WORDS,
    Lengths,
    Level,
    WorkloadError,
    arrival_offsets,
    length_rng,
    next_word_count,
    parse_lengths,
    parse_levels,
    prompt_text,
    request_rng,
    words_for,
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


@pytest.mark.parametrize(
    ("text", "lengths"),
    [
        ("128", Lengths("fixed", 128)),
        ("uniform:64-256", Lengths("uniform", 64, 256)),
        (" Normal:128,32 ", Lengths("normal", 128, 32)),
        ("normal:1,0", Lengths("normal", 1, 0)),
    ],
)
def test_lengths_parse(text, lengths):
    assert parse_lengths("--prompt-tokens", text) == lengths
    assert parse_lengths("--x", lengths.text) == lengths  # the text reads back


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("0", "--output-tokens 0: must be at least 1"),
        ("-3", "is not of the form N, uniform:MIN-MAX or normal:MEAN,STDEV"),
        ("lots", "is not of the form"),
        ("uniform:64", "is not of the form"),
        ("uniform:64-x", "is not of the form"),
        ("uniform:256-64", "MIN and MAX must be whole, 1 <= MIN <= MAX"),
        ("uniform:0-4", "1 <= MIN <= MAX"),
        ("uniform:1.5-4", "must be whole"),
        ("normal:128", "is not of the form"),
        ("normal:128,-1", "MEAN must be 1 or more and STDEV 0 or more"),
        ("normal:inf,3", "MEAN must be 1 or more"),
        ("zipf:1,2", "is not of the form"),
    ],
)
def test_lengths_that_cannot_be_drawn_are_refused(text, says):
    with pytest.raises(WorkloadError) as caught:
        parse_lengths("--output-tokens", text)
    assert says in str(caught.value)


def test_uniform_lengths_cover_the_range_and_are_seeded():
    lengths = Lengths("uniform", 64, 67)
    draws = [lengths.draw(length_rng(0, "prompt", 0, i)) for i in range(400)]
    assert set(draws) == {64, 65, 66, 67}
    assert draws == [lengths.draw(length_rng(0, "prompt", 0, i)) for i in range(400)]
    assert draws != [lengths.draw(length_rng(0, "output", 0, i)) for i in range(400)]
    assert lengths.mean == 65.5 and lengths.fixed is None


def test_normal_lengths_centre_on_the_mean_and_never_go_below_one():
    lengths = Lengths("normal", 128, 32)
    draws = [lengths.draw(length_rng(1, "prompt", 0, i)) for i in range(4000)]
    assert sum(draws) / len(draws) == pytest.approx(128, rel=0.03)
    assert all(isinstance(d, int) for d in draws)
    wide = Lengths("normal", 2, 50)
    assert min(wide.draw(length_rng(1, "prompt", 0, i)) for i in range(500)) == 1


def test_words_for_a_token_count_take_the_server_s_overhead_off():
    assert words_for(128, 3) == 125
    assert words_for(2, 5) == 1  # never an empty prompt
