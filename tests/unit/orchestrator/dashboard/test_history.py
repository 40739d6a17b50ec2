"""The gateway's node history (columnar ring buffers over a window, nulls where a node
reports nothing, forgotten nodes dropped) and its event log."""

from __future__ import annotations

import dataclasses
import json
import math

from common.status import ModelState
from common.telemetry import GpuSample, HostSample, JetsonSample, NodeSample, Temperature
from orchestrator.cluster.events import ClusterEvent
from orchestrator.cluster.types import ClusterSnapshot, Node
from orchestrator.dashboard.history import EventLog, NodeHistory, node_figures
from tests.unit.orchestrator.factories import node, replica

T0 = 1_764_500_000.0
GiB = 1024**3


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def host(cpu: float = 0.25, temps: tuple[float, ...] = (54.0,)) -> HostSample:
    return HostSample(
        cpu_usage_ratio=cpu, cpu_core_usage_ratio=(cpu,), load_average=(0.5, 0.5, 0.5),
        memory_total_bytes=8 * GiB, memory_used_bytes=2 * GiB, memory_available_bytes=6 * GiB,
        swap_total_bytes=0, swap_used_bytes=0, disk_path="/", disk_total_bytes=GiB,
        disk_free_bytes=GiB,
        temperatures=tuple(Temperature(f"t{i}", c) for i, c in enumerate(temps)),
        process_rss_bytes=0,
    )  # fmt: skip


def gpu(
    index: int, busy: float | None, used: int, watts: float | None, temp: float | None = None
) -> GpuSample:
    return GpuSample(
        index=index, name="RTX", unified=False, compute_capability="8.9",
        memory_total_bytes=4 * GiB, memory_used_bytes=used, memory_free_bytes=4 * GiB - used,
        utilization_ratio=busy, temperature_celsius=temp, power_watts=watts,
    )  # fmt: skip


def jetson(watts: float | None, temps: tuple[float, ...]) -> JetsonSample:
    return JetsonSample(
        model="Orin", module="Orin NX", soc="tegra234", cuda_arch="8.7", l4t="36.4.3",
        jetpack="6.2", nvpmodel="MAXN", jetson_clocks=False, emc_utilization_ratio=None,
        emc_hertz=None, gpu_shared_bytes=0,
        temperatures=tuple(Temperature(f"z{i}", c) for i, c in enumerate(temps)),
        power_rails=(), power_total_watts=watts, fans=(),
    )  # fmt: skip


def with_sample(n: Node, sample: NodeSample | None) -> Node:
    return dataclasses.replace(n, status=dataclasses.replace(n.status, telemetry=sample))


def snap(*nodes: Node) -> ClusterSnapshot:
    return ClusterSnapshot(1, 1.0, nodes)


def test_a_pc_with_two_gpus_reports_its_busiest_and_fullest_gpu_and_their_power() -> None:
    gpus = (gpu(0, 0.2, GiB, 30.0, 70.0), gpu(1, 0.9, 3 * GiB, 120.0, 66.0))
    sample = NodeSample(T0, host(temps=(54.0, 61.0)), gpus)
    busy = replica("gemma", active=2, decode_tps=20.0, queued=3, slots_total=4)
    idle = replica("other", ModelState.LOADING)
    figures = node_figures(with_sample(node("w1", busy, idle), sample))
    assert figures == {"up": 1, "cpu": 0.25, "mem": 0.25, "gpu": 0.9, "gpu_mem": 0.75,
                       "temp": 70.0, "power": 150.0, "tps": 40.0, "load": 5}  # fmt: skip


def test_a_jetson_reports_its_board_power_and_hottest_zone() -> None:
    sample = NodeSample(T0, host(temps=()), (gpu(0, None, GiB, 5.0),), jetson(12.5, (48.0, 51.5)))
    figures = node_figures(with_sample(node("j1"), sample))
    assert (figures["power"], figures["temp"], figures["gpu"]) == (12.5, 51.5, None)


def test_what_a_node_does_not_report_is_null_never_nan() -> None:
    cpu_only = node_figures(with_sample(node("c1"), NodeSample(T0, host(cpu=math.nan, temps=()))))
    assert cpu_only == {"up": 1, "cpu": None, "mem": 0.25, "gpu": None, "gpu_mem": None,
                        "temp": None, "power": None, "tps": 0.0, "load": 0}  # fmt: skip
    no_sample = node_figures(node("c2"))
    assert no_sample["cpu"] is None and no_sample["up"] == 1
    down = node_figures(with_sample(node("c3", up=False), NodeSample(T0, host())))
    assert down == {
        "up": 0,
        **dict.fromkeys(("cpu", "mem", "gpu", "gpu_mem", "temp", "power", "tps", "load")),
    }


def test_samples_come_every_interval_and_stay_within_the_window() -> None:
    clock = Clock()
    history = NodeHistory(interval_s=2.0, window_s=10.0, clock=clock)
    cluster = snap(with_sample(node("w1"), NodeSample(T0, host())))
    taken = []
    for _ in range(20):  # a caller ticking every second for 20 s
        taken.append(history.sample(cluster))
        clock.now += 1.0
    assert taken == [True, False] * 10
    points = history.to_json()["nodes"]["w1"]
    assert points["t"] == [T0 + 8, T0 + 10, T0 + 12, T0 + 14, T0 + 16, T0 + 18]
    assert all(len(points[name]) == 6 for name in points)
    assert history.to_json(since=T0 + 16)["nodes"]["w1"]["t"] == [T0 + 18]
    assert history.to_json(since=T0 + 18)["nodes"] == {}
    json.dumps(history.to_json(), allow_nan=False)


def test_an_update_cut_at_the_newest_point_never_repeats_it() -> None:
    # Times are kept to the millisecond: a wall clock that rounds up (…0.8176 → …0.818)
    # must not leave the stored point newer than the mark an update is cut at.
    clock = Clock(T0 + 0.8176)
    history = NodeHistory(interval_s=2.0, window_s=10.0, clock=clock)
    history.sample(snap(with_sample(node("w1"), NodeSample(T0, host()))))
    assert history.to_json()["nodes"]["w1"]["t"] == [history.latest]
    assert history.to_json(since=history.latest)["nodes"] == {}


def test_a_forgotten_node_is_dropped_once_its_last_point_leaves_the_window() -> None:
    clock = Clock()
    history = NodeHistory(interval_s=1.0, window_s=5.0, clock=clock)
    history.sample(snap(node("w1"), node("w2")))
    for step in range(1, 7):
        clock.now = T0 + step
        history.sample(snap(node("w1")))  # w2 forgotten by the cluster
        nodes = history.to_json()["nodes"]
        assert ("w2" in nodes) == (step <= 5), step
    assert len(history.to_json()["nodes"]["w1"]["t"]) == 6


def test_the_event_log_numbers_events_and_keeps_the_latest_newest_first() -> None:
    log = EventLog(capacity=3)
    events = [ClusterEvent("node_joined", "info", f"w{i}", None, f"w{i} joined") for i in range(5)]
    log.record(events[:2], T0)
    log.record(events[2:], T0 + 1)
    assert [e["seq"] for e in log.to_json()] == [5, 4, 3]
    assert log.to_json(after_seq=4) == [
        {"seq": 5, "t": T0 + 1, "kind": "node_joined", "level": "info", "node": "w4",
         "model": None, "message": "w4 joined"}
    ]  # fmt: skip
    assert log.to_json(after_seq=5) == [] and log.last_seq == 5
