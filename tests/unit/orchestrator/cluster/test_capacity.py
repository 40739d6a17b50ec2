"""The capacity records' file, the record that applies to a replica, and replica planning."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest
from pydantic import SecretStr

from orchestrator.cluster.capacity import (
    CapacityFileError,
    CapacityRecord,
    load_records,
    record_for,
    replicas_needed,
    save_record,
)
from orchestrator.cluster.feed import SnapshotFollower
from orchestrator.cluster.registry import WorkerRegistry
from orchestrator.cluster.reports import view_from_proto, view_to_proto
from orchestrator.cluster.types import ClusterSnapshot
from orchestrator.cluster.view import cluster_view, view_from_json, view_to_json


def record(node: str = "a", n_ctx: int = 4096, max_streams: int = 3, **fields: object):
    values: dict[str, object] = dict(
        node=node, model="m", n_ctx=n_ctx, slo="ttft_p99=2s,itl_p99=150ms",
        max_streams=max_streams, prefill_tps=900.0, decode_tps_stream=30.0,
        decode_tps_total=80.0, e2e_s=3.0, prompt_tokens=128, output_tokens=64,
        measured_at=1.7e9,
    )  # fmt: skip
    values.update(fields)
    return CapacityRecord(**values)  # type: ignore[arg-type]


def test_records_survive_a_round_trip_through_a_private_file(tmp_path):
    path = tmp_path / "state" / "capacity.json"
    assert load_records(path) == ()
    save_record(path, record("b", watts=12.5, quant="Q4_K_M"))
    saved = save_record(path, record("a"))
    assert load_records(path) == saved
    assert [r.node for r in saved] == ["a", "b"]  # stable order
    assert saved[1].watts == 12.5 and saved[1].quant == "Q4_K_M" and saved[0].watts is None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert not (tmp_path / "state" / "capacity.json.new").exists()


def test_a_new_measurement_replaces_the_one_of_the_same_node_model_and_context(tmp_path):
    path = tmp_path / "capacity.json"
    save_record(path, record(max_streams=3))
    save_record(path, record(n_ctx=8192, max_streams=1))
    saved = save_record(path, record(max_streams=5))
    assert sorted((r.n_ctx, r.max_streams) for r in saved) == [(4096, 5), (8192, 1)]


def test_a_file_that_is_not_a_capacity_file_is_named(tmp_path):
    path = tmp_path / "capacity.json"
    path.write_text('{"version": 1, "records": [{"node": "a"}]}')
    with pytest.raises(CapacityFileError, match=r"capacity.json is not a capacity file: records"):
        load_records(path)
    path.write_text('{"version": 9, "records": []}')
    with pytest.raises(CapacityFileError, match="version 9"):
        load_records(path)


def test_only_a_measurement_of_the_same_context_applies():
    records = (record("a", 4096), record("b", 4096))
    assert record_for(records, "a", "m", 4096) == records[0]
    assert record_for(records, "a", "m", 8192) is None
    assert record_for(records, "a", "other", 4096) is None


def test_replicas_needed_takes_the_best_measured_first_then_the_average():
    assert replicas_needed(4, [4, 2]) == 1
    assert replicas_needed(5, [4, 2]) == 2
    assert replicas_needed(9, [4, 2]) == 3  # 6 measured, 3 more at the mean of 3
    assert replicas_needed(0, [4]) == 0
    assert replicas_needed(3, []) is None
    assert replicas_needed(3, [0, 0]) is None


def test_streams_per_watt_needs_a_power_reading():
    assert record(max_streams=4, watts=20.0).streams_per_watt == pytest.approx(0.2)
    assert record().streams_per_watt is None


def test_the_registry_reads_the_file_at_start_and_again_when_it_changes(tmp_path):
    path = tmp_path / "capacity.json"
    save_record(path, record("a", max_streams=2))

    async def scenario() -> None:
        reg = WorkerRegistry(0.2, 3.0, 60.0, SecretStr("t"), capacity_file=path)
        await reg.start("127.0.0.1", 0)
        try:
            follower = SnapshotFollower()
            first = follower.take(await reg.update_after(*follower.since(), 5.0))
            assert [r.max_streams for r in first.capacities] == [2]
            save_record(path, record("a", max_streams=5))
            changed = follower.take(await reg.update_after(*follower.since(), 5.0))
            assert [r.max_streams for r in changed.capacities] == [5]
            path.write_text("not json")  # a broken file keeps what was known
            await asyncio.sleep(0.6)
            assert [r.max_streams for r in reg.snapshot().capacities] == [5]
        finally:
            await reg.stop()

    asyncio.run(scenario())


def test_capacities_cross_the_status_api_and_reach_the_json_view():
    measured = (record("a", watts=20.0, quant="Q4_K_M"), record("b"))
    snap = ClusterSnapshot(version=3, capacities=measured)
    view = cluster_view(snap, 0.0, lambda _: 0, "least-loaded")
    assert view_from_proto(view_to_proto(view)).capacities == measured
    document = view_to_json(view)
    assert document["capacities"][0]["max_streams"] == 3
    assert document["capacities"][0]["watts"] == 20.0 and document["capacities"][1]["watts"] is None
    assert view_from_json(document) == view
