"""Candidate filtering: who may serve a request, and the precise reason for everyone else."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from support.samples_factory import node_sample

from common.status import DownloadProgress, ModelState
from orchestrator.cluster.types import NodeId
from orchestrator.routing.candidates import (
    Candidate,
    NoCandidate,
    Rejection,
    UnknownModel,
    candidates_for,
    route,
)
from orchestrator.routing.request import RouteRequest
from tests.unit.orchestrator.factories import NOW, GiB, MiB, candidate, node, replica, snapshot

M = RouteRequest("m")


def reasons(rejections: Sequence[Rejection]) -> dict[str, str]:
    return {r.node_id: r.reason for r in rejections}


def ids(candidates: Sequence[Candidate]) -> list[str]:
    return [c.node_id for c in candidates]


class FirstPolicy:
    """Picks the first candidate and remembers what it was offered, and for which request."""

    name = "first"

    def __init__(self) -> None:
        self.offered: list[Candidate] = []
        self.request: RouteRequest | None = None

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate:
        self.request = request
        self.offered = list(candidates)
        return candidates[0]


# ---- Candidate ----------------------------------------------------------------------------


def test_load_takes_the_larger_of_reported_and_local_counts() -> None:
    assert candidate("a", load=3, inflight=1).load == 3
    assert candidate("a", load=1, inflight=5).load == 5


def test_load_per_slot_divides_by_slots() -> None:
    assert candidate("a", load=6, slots=4).load_per_slot == 1.5
    assert candidate("a", load=2, slots=1).load_per_slot == 2.0


# ---- eligible candidates ------------------------------------------------------------------


def test_ready_nodes_are_candidates_in_node_order_with_their_details() -> None:
    snap = snapshot(node("b", replica()), node("a", replica()))
    found, rejected = candidates_for(
        snap, "m", now=NOW, inflight={(NodeId("a"), "m"): 2, (NodeId("a"), "other"): 9}
    )
    assert ids(found) == ["a", "b"]
    assert rejected == []
    a = found[0]
    assert a.address == "a:50051"
    assert a.inflight == 2
    assert a.replica.alias == "m"


def test_task_none_accepts_either_kind() -> None:
    snap = snapshot(node("a", replica()), node("e", replica(embedding=True)))
    found, _ = candidates_for(snap, "m", now=NOW)
    assert ids(found) == ["a", "e"]


# ---- every rejection reason ---------------------------------------------------------------


def test_down_node_is_rejected_with_its_down_reason() -> None:
    snap = snapshot(node("a", replica(), up=False, down_reason="no heartbeat for 4.2 s"))
    found, rejected = candidates_for(snap, "m", now=NOW)
    assert found == []
    assert reasons(rejected) == {"a": "down: no heartbeat for 4.2 s"}


def test_down_node_without_a_reason_says_how_old_its_report_is() -> None:
    snap = snapshot(node("a", replica(), up=False, last_report=NOW - 7.25))
    _, rejected = candidates_for(snap, "m", now=NOW)
    assert reasons(rejected) == {"a": "down: last report 7.2 s ago"}


def test_down_node_without_the_model_is_still_listed() -> None:
    snap = snapshot(node("a", replica()), node("z", up=False, down_reason="stream closed"))
    _, rejected = candidates_for(snap, "m", now=NOW)
    assert reasons(rejected) == {"z": "down: stream closed"}


def test_excluded_node_already_failed_this_request() -> None:
    snap = snapshot(node("a", replica()), node("b", replica()))
    found, rejected = candidates_for(snap, "m", now=NOW, exclude={NodeId("a")})
    assert ids(found) == ["b"]
    assert reasons(rejected) == {"a": "already failed this request"}


def test_up_node_without_the_model_is_listed_as_not_loaded() -> None:
    snap = snapshot(node("a", replica()), node("b", replica("other")))
    _, rejected = candidates_for(snap, "m", now=NOW)
    assert reasons(rejected) == {"b": "model not loaded"}


@pytest.mark.parametrize(
    ("state", "error", "reason"),
    [
        (ModelState.LOADING, "", "model loading"),
        (ModelState.UNLOADING, "", "model unloading"),
        (ModelState.FAILED, "file /x.gguf does not exist", "model failed to load: file /x.gguf "
         "does not exist"),
        (ModelState.FAILED, "", "model failed to load: no error reported"),
    ],
)  # fmt: skip
def test_replica_not_ready_says_which_state(state: ModelState, error: str, reason: str) -> None:
    snap = snapshot(node("a", replica(state=state, error=error)))
    found, rejected = candidates_for(snap, "m", now=NOW)
    assert found == []
    assert reasons(rejected) == {"a": reason}


@pytest.mark.parametrize(
    ("progress", "reason"),
    [
        (DownloadProgress(512 * MiB, 2 * GiB, 8e6, 201.0, "10.0.0.1:8002", 1),
         "model downloading: 512.0 MiB of 2.00 GiB, about 201 s left"),
        (DownloadProgress(0, 2 * GiB), "model downloading: waiting for a download slot (2.00 GiB)"),
        (None, "model downloading"),
    ],
)  # fmt: skip
def test_a_downloading_replica_says_how_far_it_is(
    progress: DownloadProgress | None, reason: str
) -> None:
    snap = snapshot(node("a", replica(state=ModelState.DOWNLOADING, download=progress)))
    _, rejected = candidates_for(snap, "m", now=NOW)
    assert reasons(rejected) == {"a": reason}


def test_generation_request_skips_embedding_replicas() -> None:
    snap = snapshot(node("a", replica()), node("e", replica(embedding=True)))
    found, rejected = candidates_for(snap, "m", now=NOW, task="generate")
    assert ids(found) == ["a"]
    assert reasons(rejected) == {"e": "serves embeddings only"}


def test_embedding_request_takes_generation_and_embedding_replicas() -> None:
    """A generation model embeds too (pooled hidden states), so Embed goes to any ready
    replica of the alias."""
    snap = snapshot(node("a", replica()), node("e", replica(embedding=True)))
    found, rejected = candidates_for(snap, "m", now=NOW, task="embed")
    assert sorted(ids(found)) == ["a", "e"]
    assert reasons(rejected) == {}


def test_full_queue_is_overloaded() -> None:
    snap = snapshot(node("a", replica(queued=64, active=1, max_queue=64)))
    _, rejected = candidates_for(snap, "m", now=NOW)
    assert reasons(rejected) == {"a": "overloaded: 64 requests waiting (max_queue 64)"}


def test_queue_with_room_is_a_candidate() -> None:
    snap = snapshot(node("a", replica(queued=63, active=1, max_queue=64)))
    found, _ = candidates_for(snap, "m", now=NOW)
    assert ids(found) == ["a"]


def test_max_queue_zero_means_no_waiting_not_no_limit() -> None:
    # The worker refuses a request while busy when waiting >= max_queue: with 0, any busy.
    busy = snapshot(node("a", replica(active=1, max_queue=0)))
    idle = snapshot(node("a", replica(max_queue=0)))
    _, rejected = candidates_for(busy, "m", now=NOW)
    assert reasons(rejected) == {"a": "overloaded: busy, and max_queue 0 lets no request wait"}
    assert ids(candidates_for(idle, "m", now=NOW)[0]) == ["a"]


def test_local_inflight_reveals_a_full_queue_before_the_heartbeat_does() -> None:
    # The last report shows an idle node, but this gateway alone has sent 1 running + 2
    # waiting requests there since: with max_queue 2 the next one would be refused.
    snap = snapshot(node("a", replica(max_queue=2)))
    _, rejected = candidates_for(snap, "m", now=NOW, inflight={(NodeId("a"), "m"): 3})
    assert reasons(rejected) == {"a": "overloaded: 2 requests waiting (max_queue 2)"}
    found, _ = candidates_for(snap, "m", now=NOW, inflight={(NodeId("a"), "m"): 2})
    assert ids(found) == ["a"]


def test_one_waiting_request_reads_in_the_singular() -> None:
    snap = snapshot(node("a", replica(queued=1, active=1, max_queue=1)))
    _, rejected = candidates_for(snap, "m", now=NOW)
    assert reasons(rejected) == {"a": "overloaded: 1 request waiting (max_queue 1)"}


def test_down_outranks_exclusion_and_kind_outranks_state() -> None:
    snap = snapshot(
        node("a", replica(), up=False, down_reason="gone"),
        node("b", replica(state=ModelState.LOADING, embedding=True)),
    )
    _, rejected = candidates_for(snap, "m", now=NOW, exclude={NodeId("a")}, task="generate")
    assert reasons(rejected) == {"a": "down: gone", "b": "serves embeddings only"}


# ---- route --------------------------------------------------------------------------------


def test_route_asks_the_policy_among_candidates_only() -> None:
    policy = FirstPolicy()
    snap = snapshot(node("a", replica(state=ModelState.LOADING)), node("b", replica()))
    chosen = route(snap, M, now=NOW, policy=policy)
    assert chosen.node_id == "b"
    assert ids(policy.offered) == ["b"]


def test_route_hands_the_policy_the_request_itself() -> None:
    policy = FirstPolicy()
    request = RouteRequest("m", prompt_tokens=12, prefix="0123abcd", session="alice")
    route(snapshot(node("a", replica())), request, now=NOW, policy=policy)
    assert policy.request is request


def test_route_offers_only_replicas_of_the_requests_task() -> None:
    policy = FirstPolicy()
    snap = snapshot(node("a", replica()), node("e", replica(embedding=True)))
    route(snap, RouteRequest("m", "embed"), now=NOW, policy=policy)
    assert sorted(ids(policy.offered)) == ["a", "e"]  # any model embeds
    assert route(snap, RouteRequest("m", "generate"), now=NOW, policy=policy).node_id == "a"
    assert ids(policy.offered) == ["a"]


def test_route_raises_unknown_model_listing_what_is_known() -> None:
    snap = snapshot(
        node("a", replica("zeta"), replica("alpha", state=ModelState.FAILED)),
        node("b", replica("beta"), up=False),
    )
    with pytest.raises(UnknownModel) as info:
        route(snap, M, now=NOW, policy=FirstPolicy())
    assert info.value.alias == "m"
    assert info.value.available == ["alpha", "beta", "zeta"]
    assert "'m'" in str(info.value)


def test_route_on_an_empty_cluster_is_unknown_model() -> None:
    with pytest.raises(UnknownModel) as info:
        route(snapshot(), M, now=NOW, policy=FirstPolicy())
    assert info.value.available == []


def test_model_known_only_to_a_down_node_is_no_candidate_not_unknown() -> None:
    snap = snapshot(node("a", replica(), up=False, down_reason="no heartbeat for 4.2 s"))
    with pytest.raises(NoCandidate):
        route(snap, M, now=NOW, policy=FirstPolicy())


def test_no_candidate_lists_every_node_and_reads_well() -> None:
    snap = snapshot(
        node("node-a", replica(), up=False, down_reason="no heartbeat for 4.2 s"),
        node("node-b", replica(state=ModelState.LOADING)),
        node("node-c"),
    )
    with pytest.raises(NoCandidate) as info:
        route(snap, M, now=NOW, policy=FirstPolicy())
    assert info.value.alias == "m"
    assert info.value.rejections == (
        Rejection(NodeId("node-a"), "down: no heartbeat for 4.2 s"),
        Rejection(NodeId("node-b"), "model loading"),
        Rejection(NodeId("node-c"), "model not loaded"),
    )
    assert str(info.value) == (
        "no worker can serve model 'm' now: node-a: down: no heartbeat for 4.2 s; "
        "node-b: model loading; node-c: model not loaded"
    )


def test_wrong_task_is_no_candidate_with_the_reason() -> None:
    snap = snapshot(node("a", replica(embedding=True)))
    with pytest.raises(NoCandidate, match="serves embeddings only"):
        route(snap, RouteRequest("m", "generate"), now=NOW, policy=FirstPolicy())


def test_candidates_carry_their_nodes_latest_telemetry() -> None:
    # Heat- and power-aware policies read it from the candidate.
    sample = node_sample(taken_at=NOW)
    plain = node("a", replica())
    sampled = dataclasses.replace(plain, status=dataclasses.replace(plain.status, telemetry=sample))
    found, _ = candidates_for(snapshot(sampled, node("b", replica())), "m", now=NOW)
    assert [c.telemetry for c in found] == [sample, None]
