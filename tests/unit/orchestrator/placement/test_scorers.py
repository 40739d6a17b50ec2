"""Placement scorers: each one alone, and how RANKING composes them."""

from __future__ import annotations

import itertools
import random

import pytest

from orchestrator.cluster.types import NodeId
from orchestrator.placement.scorers import (
    RANKING,
    Fit,
    fastest,
    model_file_present,
    most_free_memory,
    rank,
    ranked,
    soonest_ready,
)

GiB = 1024**3


def fit(
    node_id: str,
    tps: float = 0.0,
    free_after: int = GiB,
    has_file: bool | None = None,
    download_s: float = 0.0,
) -> Fit:
    return Fit(
        NodeId(node_id), tps, free_after=free_after, has_file=has_file, download_s=download_s
    )


def ids(fits: list[Fit]) -> list[str]:
    return [f.node_id for f in fits]


# ---- each scorer --------------------------------------------------------------------------


def test_fastest_scores_the_reference_speed_and_unmeasured_lowest() -> None:
    assert fastest(fit("agx", tps=200.0)) > fastest(fit("nano", tps=40.0)) > 0
    assert fastest(fit("new", tps=0.0)) == 0.0


def test_most_free_memory_scores_the_bytes_left_after_the_load() -> None:
    assert most_free_memory(fit("a", free_after=6 * GiB)) == 6 * GiB
    assert most_free_memory(fit("a", free_after=6 * GiB)) > most_free_memory(fit("b"))


@pytest.mark.parametrize(("has_file", "score"), [(True, 1.0), (None, 0.0), (False, -1.0)])
def test_model_file_present_is_neutral_when_the_node_does_not_say(
    has_file: bool | None, score: float
) -> None:
    assert model_file_present(fit("a", has_file=has_file)) == score


def test_soonest_ready_scores_the_shorter_download_higher() -> None:
    assert soonest_ready(fit("lan", download_s=20.0)) > soonest_ready(fit("wifi", download_s=90.0))
    assert soonest_ready(fit("holder")) == 0.0  # nothing to fetch
    assert soonest_ready(fit("holder")) > soonest_ready(fit("lan", download_s=20.0))


# ---- composed -----------------------------------------------------------------------------


def test_a_node_with_the_file_beats_a_faster_one_that_must_fetch_it() -> None:
    fits = [fit("fast", tps=300.0, has_file=False), fit("slow", tps=40.0, has_file=True)]
    assert ids(rank(fits)) == ["slow", "fast"]
    # A node that does not say ranks between the two.
    fits.append(fit("silent", tps=10.0))
    assert ids(rank(fits)) == ["slow", "silent", "fast"]


def test_speed_decides_before_memory_and_unmeasured_nodes_come_last() -> None:
    fits = [
        fit("roomy", tps=0.0, free_after=32 * GiB),
        fit("nano", tps=40.0, free_after=16 * GiB),
        fit("agx", tps=200.0, free_after=4 * GiB),
    ]
    assert ids(rank(fits)) == ["agx", "nano", "roomy"]


def test_memory_decides_among_equal_speeds() -> None:
    fits = [fit("a", free_after=2 * GiB), fit("b", free_after=5 * GiB), fit("c")]
    assert ids(rank(fits)) == ["b", "a", "c"]


def test_the_node_id_settles_full_ties_whatever_the_input_order() -> None:
    assert ids(rank([fit("c"), fit("a"), fit("b")])) == ["a", "b", "c"]


def test_rank_takes_any_scorers_in_their_order() -> None:
    fits = [fit("agx", tps=200.0, free_after=GiB), fit("pc", tps=50.0, free_after=30 * GiB)]
    assert ids(rank(fits, [most_free_memory])) == ["pc", "agx"]
    assert ids(rank(fits, [])) == ["agx", "pc"]  # no scorer: node id order


def test_among_nodes_that_must_fetch_the_quicker_download_beats_a_faster_node() -> None:
    fits = [
        fit("agx-wifi", tps=200.0, has_file=False, download_s=400.0),
        fit("nano-lan", tps=40.0, has_file=False, download_s=30.0),
        fit("pc-holder", tps=10.0, has_file=True),
    ]
    assert ids(rank(fits)) == ["pc-holder", "nano-lan", "agx-wifi"]


# ---- ranked: rank's order, lazily ---------------------------------------------------------


def random_fits(count: int, seed: int) -> list[Fit]:
    """Fits with few distinct figures, so every scorer and the node id break ties."""
    rng = random.Random(seed)
    return [
        Fit(
            NodeId(f"n{rng.randrange(10**6):06d}-{i}"),
            reference_tps=rng.choice([0.0, 40.0, 200.0]),
            free_after=rng.choice([1, 2, 3]) * GiB,
            has_file=rng.choice([None, True, False]),
            download_s=rng.choice([0.0, 30.0, 400.0]),
            streams_per_watt=rng.choice([0.0, 0.1]),
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("first", [1, 3, 50, 500])
def test_ranked_yields_every_fit_in_rank_order_whatever_the_first_batch(first: int) -> None:
    fits = random_fits(300, seed=first)
    assert list(ranked(fits, first=first)) == rank(fits)


def test_ranked_takes_any_scorers_like_rank() -> None:
    fits = random_fits(200, seed=7)
    for scorers in ([], [most_free_memory], [fastest, most_free_memory], list(RANKING)):
        assert list(ranked(fits, scorers, first=5)) == rank(fits, scorers)


def test_the_first_few_of_ranked_are_the_first_few_of_rank() -> None:
    fits = random_fits(1000, seed=3)
    assert list(itertools.islice(ranked(fits, first=10), 10)) == rank(fits)[:10]
    assert list(ranked([])) == []
