"""Session memory (a bounded LRU map) and rendezvous hashing of session keys."""

from __future__ import annotations

from collections import Counter

import pytest

from orchestrator.routing.affinity import ROUTED_PER_NODE, RoutedPrefixes, SessionMemory, rendezvous


def test_memory_returns_the_last_node_per_model_and_session() -> None:
    memory = SessionMemory()
    memory.remember("m", "s1", "a")
    memory.remember("other", "s1", "b")
    memory.remember("m", "s1", "c")  # the session moved
    assert memory.last("m", "s1") == "c"
    assert memory.last("other", "s1") == "b"
    assert memory.last("m", "s2") is None


def test_memory_forgets_the_least_recently_routed_session_first() -> None:
    memory = SessionMemory(capacity=3)
    for session in ("s1", "s2", "s3"):
        memory.remember("m", session, "a")
    memory.remember("m", "s1", "a")  # s1 routed again: s2 is now the oldest
    memory.remember("m", "s4", "b")
    assert len(memory) == 3
    assert memory.last("m", "s2") is None
    assert [memory.last("m", s) for s in ("s1", "s3", "s4")] == ["a", "a", "b"]


def test_memory_refuses_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1, got 0"):
        SessionMemory(capacity=0)


def test_rendezvous_ignores_the_order_of_the_nodes() -> None:
    nodes = [f"n{i}" for i in range(8)]
    for i in range(50):
        key = f"session-{i}"
        assert rendezvous(key, nodes) == rendezvous(key, list(reversed(nodes)))


def test_rendezvous_moves_only_the_sessions_of_a_node_that_leaves() -> None:
    nodes = [f"n{i}" for i in range(5)]
    keys = [f"session-{i}" for i in range(500)]
    before = {k: rendezvous(k, nodes) for k in keys}
    after = {k: rendezvous(k, nodes[:-1]) for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "n4"}


def test_rendezvous_spreads_sessions_evenly() -> None:
    nodes = ["a", "b", "c", "d"]
    counts = Counter(rendezvous(f"user-{i}", nodes) for i in range(2000))
    assert set(counts) == set(nodes)
    assert min(counts.values()) > 400  # 500 each on average


# ---- what this gateway sent where ------------------------------------------------------------


def test_routed_prefixes_are_held_for_their_ttl_only() -> None:
    routed = RoutedPrefixes(ttl_s=5.0)
    routed.record("m", "a", (1, 2, 3), now=100.0)
    assert routed.recent("m", "a", now=104.9) == [frozenset({1, 2, 3})]
    assert routed.recent("m", "a", now=105.0) == []
    assert routed.recent("m", "b", now=101.0) == [] and routed.recent("x", "a", now=101.0) == []


def test_routed_prefixes_keep_a_few_chains_per_node_and_a_bounded_number_of_nodes() -> None:
    routed = RoutedPrefixes(ttl_s=60.0, capacity=2)
    for i in range(ROUTED_PER_NODE + 3):
        routed.record("m", "a", (i,), now=float(i))
    assert routed.recent("m", "a", now=20.0) == [
        frozenset({i}) for i in range(3, ROUTED_PER_NODE + 3)
    ]
    routed.record("m", "b", (1,), now=20.0)
    routed.record("m", "c", (1,), now=20.0)  # a, the least recently routed, is forgotten
    assert routed.recent("m", "a", now=20.0) == []
    assert routed.recent("m", "c", now=20.0) == [frozenset({1})]
    routed.record("m", "d", (), now=20.0)  # no chain: nothing to remember
    assert routed.recent("m", "b", now=20.0) == [frozenset({1})]
