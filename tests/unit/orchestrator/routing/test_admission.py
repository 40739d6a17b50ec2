"""Admission at measured capacity: a pure decision over replica loads and a clock reading."""

from __future__ import annotations

import dataclasses

from orchestrator.cluster.capacity import CapacityRecord
from orchestrator.routing.admission import MAX_RETRY_AFTER_S, ReplicaLoad, admit

NOW = 1000.0


def record(node: str = "a", max_streams: int = 2, e2e_s: float = 4.0) -> CapacityRecord:
    return CapacityRecord(
        node=node, model="m", n_ctx=4096, slo="ttft_p99=2s", max_streams=max_streams,
        prefill_tps=900.0, decode_tps_stream=30.0, decode_tps_total=55.0, e2e_s=e2e_s,
        prompt_tokens=128, output_tokens=64, measured_at=0.0,
    )  # fmt: skip


def test_a_replica_below_its_measured_streams_admits():
    decision = admit("m", [ReplicaLoad("a", 1, record(max_streams=2))], NOW)
    assert decision.admitted and decision.full == frozenset()


def test_every_replica_at_its_measured_streams_refuses_naming_model_and_capacity():
    loads = [
        ReplicaLoad("a", 2, record("a", max_streams=2)),
        ReplicaLoad("b", 3, record("b", max_streams=1)),
    ]
    decision = admit("m", loads, NOW)
    assert not decision.admitted and decision.full == {"a", "b"}
    assert "model 'm' is at its measured capacity" in decision.reason
    assert "a holds 2 of 2 streams (measured at ttft_p99=2s)" in decision.reason
    assert "b holds 3 of 1 streams" in decision.reason
    assert decision.retry_after_s >= 1


def test_a_full_replica_beside_one_with_room_admits_and_names_the_full_one():
    loads = [ReplicaLoad("a", 2, record("a", 2)), ReplicaLoad("b", 0, record("b", 2))]
    decision = admit("m", loads, NOW)
    assert decision.admitted and decision.full == {"a"}


def test_a_replica_never_measured_has_no_cap():
    loads = [ReplicaLoad("a", 5, record("a", 1)), ReplicaLoad("b", 100, None)]
    assert admit("m", loads, NOW).admitted
    assert admit("m", [ReplicaLoad("b", 100, None)], NOW).admitted


def test_no_replicas_is_for_routing_to_explain():
    assert admit("m", [], NOW).admitted


def test_a_node_measured_at_zero_streams_still_takes_one():
    assert admit("m", [ReplicaLoad("a", 0, record(max_streams=0))], NOW).admitted
    assert not admit("m", [ReplicaLoad("a", 1, record(max_streams=0))], NOW).admitted


def test_retry_after_is_when_the_oldest_stream_should_end():
    # Started 1.5 s ago, requests take 4 s: one frees in about 2.5 s -> 3.
    load = ReplicaLoad("a", 1, record(max_streams=1, e2e_s=4.0), oldest_started=NOW - 1.5)
    assert admit("m", [load], NOW).retry_after_s == 3
    # The soonest replica wins.
    other = ReplicaLoad("b", 1, record("b", 1, e2e_s=4.0), oldest_started=NOW - 3.5)
    assert admit("m", [load, other], NOW).retry_after_s == 1


def test_retry_after_without_known_starts_spreads_the_request_time_over_the_streams():
    load = ReplicaLoad("a", 4, record(max_streams=4, e2e_s=10.0))
    assert admit("m", [load], NOW).retry_after_s == 3  # 10 s / 4 streams = 2.5 -> 3


def test_retry_after_is_bounded():
    overdue = ReplicaLoad("a", 1, record(max_streams=1), oldest_started=NOW - 100)
    assert admit("m", [overdue], NOW).retry_after_s == 1
    slow = ReplicaLoad("a", 1, record(max_streams=1, e2e_s=1e6), oldest_started=NOW)
    assert admit("m", [slow], NOW).retry_after_s == MAX_RETRY_AFTER_S


def test_the_decision_depends_on_the_clock_passed_in():
    load = ReplicaLoad("a", 1, record(max_streams=1, e2e_s=10.0), oldest_started=0.0)
    assert admit("m", [load], 2.0).retry_after_s == 8
    assert admit("m", [load], 7.0).retry_after_s == 3
    assert dataclasses.replace(load, inflight=0).full is False
