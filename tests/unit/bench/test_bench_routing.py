"""The routing benchmark's pure parts (tests/bench/bench_routing.py): its workloads are the
fixed, seeded schedules it promises, and its figures, ratios and goal verdicts follow from
the requests. The benchmark itself needs root, namespaces and cgroups; it is not run here."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from orchestrator.bench.metrics import RequestRecord

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_routing.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_routing", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def sizes(bench: ModuleType, clients: int = 6, singles: int = 18) -> object:
    return bench.Sizes(clients=clients, singles=singles, turns=3, system_prompts=3,
                       system_words=180, single_words=60, max_tokens=16)  # fmt: skip


def items(bench: ModuleType, workload: str, seed: str = "19") -> list[object]:
    words = bench.text_words()
    built: list[object] = bench.build_items(workload, sizes(bench), words, random.Random(seed))
    return built


def requests(bench: ModuleType, built: list[object]) -> int:
    return sum(len(i.questions) if isinstance(i, bench.Chat) else 1 for i in built)


def test_each_workload_is_the_same_schedule_for_the_same_seed(bench: ModuleType) -> None:
    for workload in bench.WORKLOADS:
        assert items(bench, workload) == items(bench, workload)
    assert items(bench, "none") != items(bench, "none", seed="20")


def test_shared_is_one_chat_per_client_over_a_few_long_system_prompts(bench: ModuleType) -> None:
    built = items(bench, "shared")
    assert len(built) == 6 and all(isinstance(i, bench.Chat) for i in built)
    assert {i.system for i in built} <= {0, 1, 2}
    assert all(len(i.questions) == 3 and len(set(i.questions)) == 3 for i in built)
    systems = bench.system_prompts(bench.text_words(), 3, 180)
    assert len({s[:512] for s in systems}) == 3  # the gateway fingerprints 512 characters
    assert all(len(s.split()) > 180 for s in systems)


def test_none_has_no_shared_opening(bench: ModuleType) -> None:
    built = items(bench, "none")
    assert len(built) == 18 and all(isinstance(i, bench.Single) for i in built)
    openings = {i.prompt.split(":")[0] for i in built}
    assert len(openings) == 18


def test_mixed_is_about_a_quarter_chat_turns_chats_first(bench: ModuleType) -> None:
    built = items(bench, "mixed")
    chats = [i for i in built if isinstance(i, bench.Chat)]
    assert built[: len(chats)] == chats
    share = sum(len(c.questions) for c in chats) / requests(bench, built)
    assert share == pytest.approx(0.25)
    assert bench.mixed_chats(4, 3) == 1  # never none at all


def record(ttft: float, node: str, tokens: int = 16, error: str | None = None) -> RequestRecord:
    chunks = () if error else (ttft, ttft + 1.0)
    return RequestRecord(level=0, index=0, warmup=False, sent_s=0.0, chunk_s=chunks,
                         done_s=ttft + 1.0, output_tokens=tokens, prompt_tokens=100,
                         node=node, error=error)  # fmt: skip


def test_summary_ratios_and_goals_follow_from_the_requests(bench: ModuleType) -> None:
    ttft = {"round-robin": 4.0, "least-loaded": 3.0, "session-affinity": 1.0}
    segments = [
        bench.Segment(workload, policy, 0, 10.0,
                      [record(ttft[policy], "host0"), record(ttft[policy], "host1"),
                       record(9.0, "host0", error="timeout")], [None, None, None])
        for workload in bench.WORKLOADS for policy in ttft
    ]  # fmt: skip
    summary = bench.summarise(segments, list(ttft))
    rr, affinity = summary["shared"]["round-robin"], summary["shared"]["session-affinity"]
    assert rr["requests"] == 3 and rr["failed"] == 1
    assert rr["ttft_p50_s"] == 4.0 and rr["tokens_per_s"] == pytest.approx(3.2)
    assert rr["busiest_node_share"] == 0.5
    assert affinity["ttft_p50_vs_round_robin"] == pytest.approx(0.25)
    assert affinity["ttft_p50_vs_least_loaded"] == pytest.approx(1 / 3)
    assert affinity["tokens_per_s_vs_least_loaded"] == pytest.approx(1.0)
    (line,) = bench.goals(summary)
    assert line.startswith("session-affinity: shared p50 <= 0.5x RR 0.25x met")
    assert "MISSED" not in line


def test_a_policy_slower_than_least_loaded_misses_its_goal(bench: ModuleType) -> None:
    ttft = {"round-robin": 4.0, "least-loaded": 3.0, "prefix-cache": 3.3}
    segments = [bench.Segment(w, p, 0, 10.0, [record(t, "host0")], [None])
                for w in bench.WORKLOADS for p, t in ttft.items()]  # fmt: skip
    (line,) = bench.goals(bench.summarise(segments, list(ttft)))
    assert "shared p50 <= 0.5x RR 0.82x MISSED" in line
    assert "none p50 <= 1.05x LL 1.10x MISSED" in line


def test_over_two_rounds_every_policy_runs_at_the_same_mean_position(bench: ModuleType) -> None:
    policies = ["a", "b", "c", "d", "e"]
    for start in (0, 2):
        rounds = [bench.round_order(policies, start), bench.round_order(policies, start + 1)]
        assert all(sorted(order) == policies for order in rounds)
        means = {p: sum(order.index(p) for order in rounds) / 2 for p in policies}
        assert set(means.values()) == {2.0}
    assert bench.round_order(policies, 2) != bench.round_order(policies, 0)


def test_turns_kept_counts_later_turns_on_the_previous_turns_node(bench: ModuleType) -> None:
    records = [
        record(1.0, "host0"),
        record(1.0, "host1"),
        record(1.0, "host0"),
        record(1.0, "host2"),
        record(1.0, "host1"),
        record(1.0, "host2", error="timeout"),
    ]
    sessions = ["a", "b", "a", None, "a", "b"]  # a: 0 -> 0 -> 1; b's second turn failed
    segment = bench.Segment("mixed", "round-robin", 0, 10.0, records, sessions)
    assert segment.follow_ups() == (2, 1)
    summary = bench.summarise([segment], ["round-robin"])
    assert summary["mixed"]["round-robin"]["turns_kept_on_node"] == 0.5
    assert summary["none"]["round-robin"]["turns_kept_on_node"] is None
