"""A simulated fleet of up to 10,000 workers driven through the real control-plane code.

Nothing of ours is mocked: every node is a real NodeStatus (common.status) with synthetic
telemetry (tests/support/samples_factory.py) and load, encoded as the NodeReport a worker
sends (common.wire.status), and fed to the real WorkerRegistry.Heartbeat in process (only
grpc.aio's ServicerContext is stood in for, a library boundary), so its report conversion
and ClusterState bookkeeping run as they do behind gRPC. From the registry's snapshot:

- heartbeat ingestion: reports per second through WorkerRegistry.Heartbeat (a stream per
  node, one registration round, then --heartbeat-rounds steady rounds);
- the snapshot: time to build it (WorkerRegistry.snapshot), its size pickled whole (as Ray
  shipped it to every gateway on every change before the feed; the /v1/cluster JSON
  document and the ClusterStatusResponse proto for comparison) and the time to pickle and
  unpickle it;
- its propagation through the feed the gateways follow (orchestrator.cluster.feed): bytes
  and time to publish, encode and take (decode and apply) a whole snapshot (a new gateway)
  and the delta after half the fleet reported (the steady state: one publication per
  0.5 s, heartbeats once a second), and the longest a gateway's event loop is held while
  it follows an update (a probe task on the loop);
- routing: orchestrator.routing.candidates.route plus each policy of POLICIES, per
  request, on a catalog of --models models each READY on 3-5% of the nodes (goal: p99
  <= 50 us at 10,000 nodes);
- placement: orchestrator.placement.planner.plan placing that catalog on an empty fleet,
  and a steady round where everything is placed already (goal: <= 1 s);
- a discrete-event simulation (--sim-nodes heterogeneous nodes, one model, Poisson
  arrivals through --gateways gateways, each with its own policy object and in-flight
  counts, nodes reporting their load once per heartbeat interval through ClusterState):
  queueing delay and TTFT p50/p99 per policy at each --loads level, with an SVG plot.

Service times are calibrated from the embedded Gemma 3 270M on the development machine:
41 tokens/s decode per sequence (../shared/notes/platform.md) and about 390 tokens/s
prefill (a ~50-token prompt's 128 ms TTFT, BENCHMARKS.md, worker overhead). Node speeds are
multiples of that (an Orin Nano 0.6x with one slot up to a PC GPU 4x with four).

    .venv/bin/python tests/bench/simulate_fleet.py [--nodes 100 1000 10000] \\
        [--out fleet.json] [--plot fleet.svg] [--profile 10000]

--profile N prints where route's time goes at N nodes (cProfile, default policy).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import dataclasses
import gc
import heapq
import io
import itertools
import json
import math
import os
import pickle
import pstats
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support.*
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

from llamaherd.v1 import cluster_pb2 as cl_pb
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from support.samples_factory import dgpu, host_sample, jetson_sample, node_sample

from common.cluster_auth import NODE_KEY_KEY
from common.collector import frozen_heap
from common.hardware import HardwareInfo
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig
from common.status import EngineFigures, ModelState, ModelStatus, NodeStatus
from common.telemetry import NodeSample, Temperature
from common.wire.status import node_status_to_report
from orchestrator.bench.report import COLOURS
from orchestrator.cluster.feed import SnapshotFeed, SnapshotFollower
from orchestrator.cluster.registry import PUBLISH_INTERVAL_S, WorkerRegistry
from orchestrator.cluster.reports import view_to_proto
from orchestrator.cluster.state import ClusterState
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId
from orchestrator.cluster.view import cluster_view, view_to_json
from orchestrator.config import CatalogEntry
from orchestrator.gateway.router import Router
from orchestrator.placement.planner import Plan, estimates_needed, plan
from orchestrator.routing.candidates import NoCandidate, route
from orchestrator.routing.policies import DEFAULT_POLICY, POLICY_NAMES, RoundRobin, make_policy
from orchestrator.routing.request import RouteRequest
from orchestrator.worker_client import WorkerClients

GIB = 1024**3
DECODE_TPS = 41.0  # embedded Gemma, 2 threads (platform.md)
PREFILL_TPS = 390.0  # ~50 prompt tokens in 128 ms TTFT (BENCHMARKS.md, worker overhead)
ROUTE_GOAL_US = 50.0
SIM_ALIAS = "gemma-3-270m"  # the model of the request simulation
PLACEMENT_GOAL_S = 1.0
clock = time.perf_counter
# The gateway processes of gateway_figures: (name, power budget in W, FrozenHeap or not,
# Router.update over every node or not). The first two are as gateways were before.
GATEWAY_SETTINGS = (
    ("before", None, False, True),
    ("before, budget", 1e9, False, True),
    ("frozen heap", None, True, False),
    ("frozen heap, budget", 1e9, True, False),
)


@dataclass(frozen=True)
class Kind:
    """A kind of node in the simulated fleet."""

    name: str
    hardware_kind: str
    speed: float  # decode and prefill rate, relative to the embedded Gemma here
    slots: int
    memory_free: int
    share: float  # of the fleet
    jetson: bool


KINDS = (
    Kind("orin-nano", "jetson-orin", 0.6, 1, 5 * GIB, 0.35, True),
    Kind("orin-agx", "jetson-orin", 2.0, 2, 40 * GIB, 0.25, True),
    Kind("pc-cpu", "x86-cpu", 1.0, 1, 12 * GIB, 0.25, False),
    Kind("pc-gpu", "x86-cuda", 4.0, 4, 20 * GIB, 0.15, False),
)


def pick_kinds(count: int, rng: random.Random) -> list[Kind]:
    return rng.choices(KINDS, weights=[k.share for k in KINDS], k=count)


_CONFIGS: dict[tuple[str, int, int], ModelConfig] = {}


def model_config(alias: str, slots: int, max_queue: int = 64) -> ModelConfig:
    """One validated config per (alias, slots, max_queue): what a worker resolves."""
    key = (alias, slots, max_queue)
    if key not in _CONFIGS:
        _CONFIGS[key] = ModelConfig(
            alias=alias, path=f"/models/{alias}.gguf", n_parallel=slots, max_queue=max_queue
        )
    return _CONFIGS[key]


def model_bytes(alias: str) -> int:
    """A stable size per model: 0.3 to 4 GiB (the simulated Gemma: its 253 MB file)."""
    if alias == SIM_ALIAS:
        return 253_113_024
    index = int(alias.rsplit("-", 1)[1])
    return int((0.3 + (index * 0.37) % 3.7) * GIB)


def telemetry(kind: Kind, rng: random.Random) -> NodeSample:
    """A complete sample with this node's own temperatures and usage."""
    temp = rng.uniform(40.0, 80.0)
    host = host_sample(
        cpu_usage_ratio=rng.random(),
        temperatures=(Temperature("coretemp/Package id 0", temp),),
    )
    if kind.jetson:
        jetson = dataclasses.replace(
            jetson_sample(), temperatures=(Temperature("tj", temp), Temperature("gpu", temp - 2))
        )
        return node_sample(host=host, gpus=(), jetson=jetson, sources=("jetson", "host"))
    if kind.hardware_kind == "x86-cuda":
        return node_sample(host=host, gpus=(dgpu(0, temperature_celsius=temp),))
    return node_sample(host=host, gpus=(), sources=("host",))


def replica(alias: str, kind: Kind, rng: random.Random, max_queue: int = 64) -> ModelStatus:
    """A READY replica with a random load and its node's measured speed."""
    active = rng.randint(0, kind.slots)
    queued = rng.randint(0, 2) if active == kind.slots else 0
    engine = EngineFigures(
        slots_total=kind.slots, active=active, queued=queued,
        decode_tps=DECODE_TPS * kind.speed * rng.uniform(0.9, 1.1),
        prompt_tps=PREFILL_TPS * kind.speed, completed=rng.randint(0, 10_000),
    )  # fmt: skip
    size = model_bytes(alias)
    return ModelStatus(
        alias=alias, config=model_config(alias, kind.slots, max_queue), state=ModelState.READY,
        architecture="gemma3", file_bytes=size, n_ctx_train=32768,
        estimate=MemoryEstimate(size, size // 8, 64 * 1024**2),
        chat_template_source="gguf", engine=engine,
    )  # fmt: skip


def node_status(
    index: int, kind: Kind, models: Sequence[ModelStatus], rng: random.Random
) -> NodeStatus:
    node_id = f"node-{index:05d}"
    hardware = HardwareInfo(
        kind=kind.hardware_kind, model=kind.name, cpu_cores=8, memory_total=kind.memory_free * 2,
        backends=("CPU", "CUDA") if kind.hardware_kind != "x86-cpu" else ("CPU",),
        unified_memory=kind.jetson, reference_decode_tps=DECODE_TPS * kind.speed,
        telemetry_sources=("jetson", "host") if kind.jetson else ("nvml", "host"),
    )  # fmt: skip
    used = sum(m.memory_bytes for m in models)
    return NodeStatus(
        node_id=node_id, address=f"10.{index // 65536}.{index // 256 % 256}.{index % 256}:50051",
        hardware=hardware, models=tuple(models), memory_free=max(kind.memory_free - used, 0),
        version="0.1.0", telemetry=telemetry(kind, rng), model_disk_free_bytes=200 * GIB,
    )  # fmt: skip


def aliases(count: int) -> list[str]:
    return [f"model-{i:02d}" for i in range(count)]


def fleet(
    count: int, models: int, rng: random.Random, share: tuple[float, float]
) -> list[NodeStatus]:
    """`count` nodes, each of `models` models READY on a random share (3-5%) of them."""
    kinds = pick_kinds(count, rng)
    held: list[list[str]] = [[] for _ in range(count)]
    for alias in aliases(models):
        replicas = max(1, round(rng.uniform(*share) * count))
        for index in rng.sample(range(count), replicas):
            held[index].append(alias)
    return [
        node_status(i, kinds[i], [replica(a, kinds[i], rng) for a in held[i]], rng)
        for i in range(count)
    ]


# ---- heartbeats through the registry ------------------------------------------------------
class _Context:
    """Stands in for grpc.aio.ServicerContext (a library boundary): the node key metadata
    and the peer are all the registry reads; an abort is a failed simulation."""

    def __init__(self, key: str, peer: str) -> None:
        self._metadata = ((NODE_KEY_KEY, key),)
        self._peer = peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: object, details: str) -> None:
        raise RuntimeError(f"the registry refused a simulated node: {code}: {details}")


class _Progress:
    """Counts the reports the registry has taken (it asks for the next one only when done
    with the last), and wakes the driver when a round is complete."""

    def __init__(self) -> None:
        self.done = 0
        self.target = 0
        self.event = asyncio.Event()
        self.error: BaseException | None = None  # a stream that failed: the run stops

    def took_one(self) -> None:
        self.done += 1
        if self.done >= self.target:
            self.event.set()


class _Stream:
    """One node's heartbeat stream: the reports the driver puts, as the request iterator."""

    def __init__(self, progress: _Progress) -> None:
        self.queue: asyncio.Queue[cl_pb.NodeReport | None] = asyncio.Queue()
        self._progress = progress
        self._handed = False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> cl_pb.NodeReport:
        if self._handed:
            self._progress.took_one()
        report = await self.queue.get()
        if report is None:
            raise StopAsyncIteration
        self._handed = True
        return report


async def _consume(replies: AsyncIterator[cl_pb.HeartbeatReply], progress: _Progress) -> None:
    try:
        async for reply in replies:
            if reply.error:
                raise RuntimeError(f"the registry refused a simulated report: {reply.error}")
    except Exception as exc:  # handed to the driver, which raises it: a round never hangs
        progress.error = exc
        progress.event.set()


async def _round(
    streams: Sequence[_Stream], reports: Sequence[cl_pb.NodeReport], progress: _Progress
) -> float:
    progress.target += len(streams)
    progress.event = asyncio.Event()
    started = clock()
    for stream, report in zip(streams, reports, strict=True):
        stream.queue.put_nowait(report)
    await progress.event.wait()
    elapsed = clock() - started
    if progress.error is not None:
        raise progress.error
    return elapsed


@dataclass
class Ingested:
    registry: WorkerRegistry
    register_s: float
    round_s: list[float]
    report_bytes: int


async def ingest(
    statuses: Sequence[NodeStatus], rounds: int, profile: cProfile.Profile | None = None
) -> tuple[Ingested, Callable[[], Any]]:
    """Every node registers over its own Heartbeat stream, then reports `rounds` times
    (and once more under `profile`, uncounted). Returns the figures and a coroutine
    function that closes the streams."""
    registry = WorkerRegistry(
        heartbeat_interval_s=1.0, down_after_s=1e9, forget_after_s=1e9,
        token=SecretStr("simulated-cluster-token"),
    )  # fmt: skip
    reports = [node_status_to_report(s, sequence=1) for s in statuses]
    progress = _Progress()
    streams = [_Stream(progress) for _ in statuses]
    tasks = [
        asyncio.create_task(
            _consume(
                registry.Heartbeat(stream, _Context(f"key-{i}", f"ipv4:10.0.0.1:{i}")), progress
            )
        )
        for i, stream in enumerate(streams)
    ]
    register_s = await _round(streams, reports, progress)
    round_s = [await _round(streams, reports, progress) for _ in range(rounds)]
    if profile is not None:
        profile.enable()
        await _round(streams, reports, progress)
        profile.disable()

    async def close() -> None:
        for stream in streams:
            stream.queue.put_nowait(None)
        await asyncio.gather(*tasks)

    size = statistics.median(r.ByteSize() for r in reports)
    return Ingested(registry, register_s, round_s, int(size)), close


# ---- the snapshot the gateways receive ----------------------------------------------------
def _timed(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The median seconds of `repeats` calls, and the last call's result."""
    times: list[float] = []
    result: Any = None
    for _ in range(repeats):
        started = clock()
        result = function()
        times.append(clock() - started)
    return statistics.median(times), result


def snapshot_figures(registry: WorkerRegistry, repeats: int) -> tuple[dict[str, Any], Any]:
    gc.collect()  # the garbage of earlier steps is not this step's cost
    build_s, snapshot = _timed(registry.snapshot, repeats)
    # What a gateway's first route() on a new snapshot adds: the alias index (cached then).
    index_s, _ = _timed(lambda: dataclasses.replace(snapshot).holders, repeats)
    pickle_s, blob = _timed(lambda: pickle.dumps(snapshot, protocol=5), repeats)
    unpickle_s, _ = _timed(lambda: pickle.loads(blob), repeats)
    view = cluster_view(snapshot, snapshot.taken_at, lambda _node: 0, DEFAULT_POLICY)
    json_s, document = _timed(lambda: json.dumps(view_to_json(view)), 1)
    proto = view_to_proto(view)
    figures = {
        "build_ms": build_s * 1e3,
        "pickle_bytes": len(blob),
        "pickle_ms": pickle_s * 1e3,
        "unpickle_ms": unpickle_s * 1e3,
        "propagation_ms": (build_s + pickle_s + unpickle_s) * 1e3,
        "holders_index_ms": index_s * 1e3,
        "json_bytes": len(document.encode()),
        "json_ms": json_s * 1e3,
        "proto_bytes": proto.ByteSize(),
    }
    return figures, snapshot


def feed_figures(snapshot: ClusterSnapshot, repeats: int) -> dict[str, Any]:
    """What a gateway following the feed costs: a whole snapshot (a new gateway), then the
    delta after half the nodes reported again (new Node values, as the registry makes for
    every report); the registry's side (publish, encode) and the gateway's (take: decode
    with the collector paused, then patch its copy), and the longest its event loop is
    held while it follows the update piece by piece (SnapshotFollower.follow, with a probe
    task on the same loop). Medians of `repeats`."""
    gc.collect()
    base = dataclasses.replace(snapshot, version=1)
    half = {n.node_id for n in base.nodes[::2]}
    moved = tuple(
        dataclasses.replace(n, last_report=n.last_report + 0.5) if n.node_id in half else n
        for n in base.nodes
    )
    after = dataclasses.replace(base, version=2, taken_at=base.taken_at + 0.5, nodes=moved)
    times: dict[str, list[float]] = collections.defaultdict(list)
    whole = delta = b""
    for _ in range(repeats):
        feed = SnapshotFeed(epoch="sim")
        feed.publish(base)
        started = clock()
        whole = feed.encoded("", -1)
        times["whole_encode"].append(clock() - started)
        started = clock()
        feed.publish(after)
        times["publish"].append(clock() - started)
        started = clock()
        delta = feed.encoded("sim", 1)
        times["delta_encode"].append(clock() - started)
    for _ in range(repeats):
        started = clock()
        SnapshotFollower().take(whole)
        times["whole_take"].append(clock() - started)
        gateway = _holding(base)
        started = clock()
        patched = gateway.take(delta)
        times["delta_take"].append(clock() - started)
        if patched.nodes != after.nodes:
            raise RuntimeError("the gateway's copy differs from the registry's snapshot")
        followed, held = asyncio.run(_loop_held(SnapshotFollower().follow(whole)))
        times["whole_hold"].append(held)
        patched, held = asyncio.run(_loop_held(_holding(base).follow(delta)))
        times["delta_hold"].append(held)
        if followed.nodes != base.nodes or patched.nodes != after.nodes:
            raise RuntimeError("the gateway's copy differs from the registry's snapshot")
    ms = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    return {
        "feed_publish_ms": ms["publish"],
        "feed_whole_bytes": len(whole),
        "feed_whole_encode_ms": ms["whole_encode"],
        "feed_whole_take_ms": ms["whole_take"],
        "feed_whole_hold_ms": ms["whole_hold"],
        "feed_delta_nodes": len(half),
        "feed_delta_bytes": len(delta),
        "feed_delta_encode_ms": ms["delta_encode"],
        "feed_delta_take_ms": ms["delta_take"],
        "feed_delta_hold_ms": ms["delta_hold"],
        "feed_interval_s": PUBLISH_INTERVAL_S,
    }


def _holding(snapshot: ClusterSnapshot) -> SnapshotFollower:
    """A follower (a gateway) holding `snapshot` of the feed "sim"."""
    follower = SnapshotFollower()
    follower.snapshot, follower.epoch = snapshot, "sim"
    return follower


async def _loop_held(work: Awaitable[Any]) -> tuple[Any, float]:
    """`work`'s result, and the longest the event loop went without running a probe task
    beside it (a request arriving then would wait that long to be routed)."""
    longest = 0.0
    done = False

    async def probe() -> None:
        nonlocal longest
        last = clock()
        while not done:
            await asyncio.sleep(0)
            now = clock()
            longest, last = max(longest, now - last), now

    task = asyncio.create_task(probe())
    await asyncio.sleep(0)
    try:
        result = await work
    finally:
        done = True
        await task
    return result, longest


# ---- a gateway following the feed ------------------------------------------------------------
def gateway_figures(
    snapshot: ClusterSnapshot, updates: int, budget_w: float | None, freeze: bool, whole: bool
) -> dict[str, Any]:
    """A gateway process following `updates` deltas of half the fleet each (every node
    reports once a second, a publication every 0.5 s): its own process (no registry objects
    in its heap), fed the encoded updates through a pipe; per update, what it spends on
    the update (take, Router.update, closing gone workers' channels) and the longest its
    event loop went without running a probe task (full collections included), the full
    collections (gc.callbacks) and its RSS. `freeze`: the gateway settles its heap after
    each update (common.collector.FrozenHeap), as Gateway._follow_cluster does; `whole`:
    its Router takes each snapshot as if whole and the channels kept are read off every
    node (a pass over the fleet each, as before they took a delta's changes)."""
    flags = ["freeze"] * freeze + ["whole"] * whole
    command = [sys.executable, __file__, "--gateway-child", ",".join(flags) or "plain"]
    if budget_w is not None:
        command += ["--gateway-budget-w", str(budget_w)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    feed = SnapshotFeed(epoch="sim", history=2)
    current = dataclasses.replace(snapshot, version=1)
    feed.publish(current)
    _send(child.stdin, feed.encoded("", -1))
    nodes = list(current.nodes)
    for version in range(2, updates + 2):
        wall = time.time()
        for index in range(version % 2, len(nodes), 2):  # each node reports once a second
            nodes[index] = _reported_again(nodes[index], wall)
        current = dataclasses.replace(
            current, version=version, taken_at=current.taken_at + 0.5, nodes=tuple(nodes)
        )
        feed.publish(current)
        _send(child.stdin, feed.encoded("sim", version - 1))
    _send(child.stdin, b"")
    child.stdin.close()
    result: dict[str, Any] = json.loads(child.stdout.read())
    if child.wait() != 0:
        raise RuntimeError(f"the gateway process failed ({child.returncode})")
    return result


def _reported_again(node: Node, wall: float) -> Node:
    """`node` after one more heartbeat: a new report with a new telemetry sample."""
    status = node.status
    sample = status.telemetry
    if sample is not None:
        status = dataclasses.replace(status, telemetry=dataclasses.replace(sample, taken_at=wall))
    return dataclasses.replace(node, status=status, last_report=node.last_report + 0.5)


def _send(pipe: Any, blob: bytes) -> None:
    pipe.write(len(blob).to_bytes(8, "big") + blob)
    pipe.flush()


def gateway_child(freeze: bool, whole: bool, budget_w: float | None) -> None:
    """The gateway side of gateway_figures: follows the updates on stdin, prints figures."""
    pauses: list[float] = []
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = clock()
        else:
            pauses.append(clock() - started[0])

    gc.callbacks.append(timed)
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * page

    def read(n: int) -> bytes:
        return sys.stdin.buffer.read(n)

    async def run() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        clients = WorkerClients()
        router = Router(RoundRobin(), clients, 1, power_budget_w=budget_w)
        follower = SnapshotFollower()
        heap = frozen_heap()
        longest = [0.0]
        done = False

        async def probe() -> None:
            last = clock()
            while not done:
                await asyncio.sleep(0)
                now = clock()
                longest[0], last = max(longest[0], now - last), now

        task = asyncio.create_task(probe())
        rows: list[dict[str, float]] = []
        while True:
            size = int.from_bytes(await loop.run_in_executor(None, read, 8), "big")
            if not size:
                break
            blob = await loop.run_in_executor(None, read, size)
            longest[0] = 0.0
            pauses.clear()
            at = clock()
            snapshot = await follower.follow(blob)
            if whole:  # the same snapshot without what it derived: no changes named
                snapshot = dataclasses.replace(snapshot)
            took = clock()
            await router.follow(snapshot)
            updated = clock()
            if whole:
                await clients.keep_only(n.address for n in snapshot.nodes)
            else:
                await clients.keep_only(router.addresses)
            kept = clock()
            if freeze:
                heap.settle()
            settled = clock()
            await asyncio.sleep(0.02)  # the loop runs on; a collection may come late
            rows.append({
                "take_ms": (took - at) * 1e3, "update_ms": (updated - took) * 1e3,
                "keep_ms": (kept - updated) * 1e3, "settle_ms": (settled - kept) * 1e3,
                "hold_ms": longest[0] * 1e3, "full_gcs": len(pauses),
                "full_gc_ms": max(pauses, default=0.0) * 1e3, "rss": rss(),
            })  # fmt: skip
        done = True
        await task
        return {"updates": rows[1:], "heap_collections": heap.collections, "nodes": len(
            router.snapshot.nodes)}  # fmt: skip

    print(json.dumps(asyncio.run(run())))


def gateway_summary(figures: dict[str, Any]) -> dict[str, float]:
    """The figures of gateway_figures summed up: per update medians and maxima, full
    collections per minute at two updates a second, RSS after the first tenth and at the
    end."""
    rows = figures["updates"]
    warm = rows[len(rows) // 10 :]

    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in warm))

    full = sum(r["full_gcs"] for r in warm)
    return {
        "updates": len(rows),
        "take_ms": med("take_ms"),
        "update_ms": med("update_ms"),
        "update_max_ms": max(r["update_ms"] for r in warm),
        "keep_ms": med("keep_ms"),
        "settle_max_ms": max(r["settle_ms"] for r in warm),
        "hold_p50_ms": med("hold_ms"),
        "hold_max_ms": max(r["hold_ms"] for r in warm),
        "full_gcs_per_min": full / len(warm) * 120,
        "full_gc_max_ms": max(r["full_gc_ms"] for r in warm),
        "rss_start_mb": warm[0]["rss"] / 1e6,
        "rss_end_mb": rows[-1]["rss"] / 1e6,
        "rss_max_mb": max(r["rss"] for r in rows) / 1e6,
        "heap_collections": figures["heap_collections"],
    }


# ---- routing -------------------------------------------------------------------------------
def _percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1), nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def route_figures(
    snapshot: ClusterSnapshot, models: int, samples: int, budget_s: float, seed: int
) -> dict[str, dict[str, float]]:
    """Per policy: route()'s time per request, in microseconds, on the snapshot; at most
    `samples` requests or `budget_s` seconds (at least 20 requests).

    Routing prepares each model's ready replicas once per snapshot, on its first request
    (orchestrator.routing.candidates.ReplicaTable): that first request is timed apart
    (first_route_figures), and these run on a snapshot whose models are all prepared, as
    a gateway's are between two snapshots."""
    rng = random.Random(seed)
    names = aliases(models)
    default = make_policy(DEFAULT_POLICY, random.Random(seed))
    for alias in names:
        route(snapshot, RouteRequest(alias), now=snapshot.taken_at, policy=default)
    requests = [
        RouteRequest(rng.choice(names), prompt_tokens=rng.randint(32, 512), prefix=f"{i:016x}")
        for i in range(samples)
    ]
    nodes = [n.node_id for n in snapshot.nodes]
    inflight: collections.Counter[tuple[NodeId, str]] = collections.Counter(
        {(rng.choice(nodes), rng.choice(names)): rng.randint(1, 3) for _ in range(len(nodes) // 10)}
    )
    figures: dict[str, dict[str, float]] = {}
    for name in POLICY_NAMES:
        policy = make_policy(name, random.Random(seed))
        times: list[float] = []
        deadline = clock() + budget_s
        for request in requests:
            started = time.perf_counter_ns()
            route(snapshot, request, now=snapshot.taken_at, policy=policy, inflight=inflight)
            times.append((time.perf_counter_ns() - started) / 1e3)
            if len(times) >= 20 and clock() > deadline:
                break
        figures[name] = {
            "p50_us": _percentile(times, 0.5), "p99_us": _percentile(times, 0.99),
            "mean_us": statistics.fmean(times), "requests": len(times),
        }  # fmt: skip
    return figures


def first_route_figures(snapshot: ClusterSnapshot, models: int, seed: int) -> dict[str, float]:
    """The first request for each model on a snapshot as a gateway receives it (its alias
    index built: holders_index_ms), in microseconds, with the default policy: it prepares
    the model's ReplicaTable. p99 is the largest."""
    fresh = dataclasses.replace(snapshot)  # no index or table yet
    fresh.holders  # noqa: B018  (timed apart: snapshot_figures' holders_index_ms)
    default = make_policy(DEFAULT_POLICY, random.Random(seed))
    first: list[float] = []
    for alias in aliases(models):
        started = time.perf_counter_ns()
        route(fresh, RouteRequest(alias), now=snapshot.taken_at, policy=default)
        first.append((time.perf_counter_ns() - started) / 1e3)
    return {
        "p50_us": _percentile(first, 0.5), "p99_us": max(first),
        "mean_us": statistics.fmean(first), "requests": len(first),
    }  # fmt: skip


def profile_route(snapshot: ClusterSnapshot, models: int, requests: int, seed: int) -> str:
    """Where route()'s time goes with the default policy (cProfile, top functions)."""
    rng = random.Random(seed)
    policy = make_policy(DEFAULT_POLICY, random.Random(seed))
    batch = [RouteRequest(rng.choice(aliases(models))) for _ in range(requests)]
    profile = cProfile.Profile()
    profile.enable()
    for request in batch:
        route(snapshot, request, now=snapshot.taken_at, policy=policy)
    profile.disable()
    return _top(profile)


def _top(profile: cProfile.Profile) -> str:
    """The functions that took the most time of their own."""
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(14)
    return out.getvalue()


# ---- placement -----------------------------------------------------------------------------
def catalog(
    snapshot_nodes: Sequence[Node], models: int, replicas: int | None
) -> list[CatalogEntry]:
    """The catalog: `replicas` of each model, or, with None, as many as the nodes hold now."""
    held = collections.Counter(r.alias for n in snapshot_nodes for r in n.replicas)
    return [
        CatalogEntry(alias=a, path=f"/models/{a}.gguf", replicas=replicas or held[a])
        for a in aliases(models)
    ]


def placement_figures(
    statuses: Sequence[NodeStatus], placed: ClusterSnapshot, models: int, repeats: int
) -> dict[str, Any]:
    """plan() placing the catalog on the same fleet with nothing loaded, then a steady
    round on the fleet as it is (every replica placed: nothing to do)."""
    gc.collect()
    replicas = max(1, round(0.04 * len(statuses)))
    empty = [Node(dataclasses.replace(s, models=()), last_report=0.0) for s in statuses]
    wanted = catalog(empty, models, replicas)
    needed_s, needed = _timed(lambda: estimates_needed(wanted, empty), 1)
    estimates = {
        (entry.alias, node_id): MemoryEstimate(model_bytes(entry.alias), 0, 64 * 1024**2)
        for entry, node_id in needed
    }
    fresh_s, fresh = _timed(lambda: plan(wanted, empty, estimates), repeats)
    steady_catalog = catalog(placed.nodes, models, None)
    steady_s, steady = _timed(lambda: plan(steady_catalog, placed.nodes, {}), repeats)
    assert isinstance(fresh, Plan) and isinstance(steady, Plan)
    if not steady.empty:
        raise RuntimeError(f"a fully placed catalog planned actions: {steady.actions[:3]}")
    return {
        "replicas_per_model": replicas,
        "estimates_needed_s": needed_s,
        "fresh_plan_s": fresh_s,
        "fresh_loads": len(fresh.loads),
        "fresh_problems": len(fresh.problems),
        "steady_plan_s": steady_s,
    }


# ---- discrete-event simulation of requests -------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One simulated request."""

    arrived: float
    prompt: int  # tokens
    output: int  # tokens
    gateway: int  # the gateway that routed it (and counts it in flight)
    counted: bool  # False during the warm-up


@dataclass
class SimNode:
    status: NodeStatus
    kind: Kind
    running: int = 0
    waiting: collections.deque[Job] = dataclasses.field(default_factory=collections.deque)

    @property
    def rate(self) -> float:
        return DECODE_TPS * self.kind.speed

    def service_s(self, prompt: int, output: int) -> tuple[float, float]:
        """(seconds to the first token, seconds in all) for one request alone in a slot."""
        first = prompt / (PREFILL_TPS * self.kind.speed) + 1 / self.rate
        return first, first + (output - 1) / self.rate


PROMPT_RANGE = (32, 512)
OUTPUT_RANGE = (16, 256)


def sim_fleet(count: int, rng: random.Random) -> list[SimNode]:
    nodes: list[SimNode] = []
    for index, kind in enumerate(pick_kinds(count, rng)):
        rep = replica(SIM_ALIAS, kind, rng, max_queue=1 << 20)
        rep = dataclasses.replace(
            rep, engine=dataclasses.replace(rep.engine, active=0, queued=0, decode_tps=0.0)
        )
        nodes.append(SimNode(node_status(index, kind, [rep], rng), kind))
    return nodes


def capacity_rps(nodes: Sequence[SimNode]) -> float:
    """Requests per second the fleet completes when every slot is busy."""
    prompt = sum(PROMPT_RANGE) / 2
    output = sum(OUTPUT_RANGE) / 2
    return sum(n.kind.slots / n.service_s(int(prompt), int(output))[1] for n in nodes)


def simulate(
    nodes_count: int, load: float, policy_name: str, requests: int, gateways: int,
    heartbeat_s: float, seed: int,
) -> dict[str, float]:  # fmt: skip
    """Queueing delay and TTFT p50/p99 (seconds) of `requests` Poisson arrivals at `load`
    times the fleet's capacity, routed by `policy_name` on `gateways` gateways. The same
    seed gives every policy the same fleet and the same arrivals."""
    rng = random.Random(seed)
    nodes = sim_fleet(nodes_count, rng)
    by_id = {n.status.node_id: n for n in nodes}
    rate = load * capacity_rps(nodes)
    state = ClusterState(down_after_s=1e9, forget_after_s=1e9)
    served = dict.fromkeys(by_id, 0)

    def report(node: SimNode, now: float) -> None:
        rep = node.status.models[0]
        engine = dataclasses.replace(
            rep.engine, active=node.running, queued=len(node.waiting),
            decode_tps=node.rate if served[node.status.node_id] else 0.0,
            completed=served[node.status.node_id],
        )  # fmt: skip
        status = dataclasses.replace(node.status, models=(dataclasses.replace(rep, engine=engine),))
        state.report(Node(status, last_report=now), stream=1, credential=b"sim")

    for node in nodes:
        report(node, 0.0)
    policies = [make_policy(policy_name, random.Random(seed + g)) for g in range(gateways)]
    inflight = [collections.Counter[tuple[NodeId, str]]() for _ in range(gateways)]
    events: list[tuple[float, int, str, Any]] = []
    order = itertools.count()
    t = 0.0
    warmup = requests // 10  # arrivals before the queues settle are not measured
    for index in range(requests):
        t += rng.expovariate(rate)
        prompt, output = rng.randint(*PROMPT_RANGE), rng.randint(*OUTPUT_RANGE)
        job = Job(t, prompt, output, rng.randrange(gateways), counted=index >= warmup)
        heapq.heappush(events, (t, next(order), "arrive", job))
    for node in nodes:  # heartbeats, each node on its own phase
        heapq.heappush(events, (rng.uniform(0, heartbeat_s), next(order), "beat", node))
    snapshot = state.snapshot(0.0)
    delays: list[float] = []
    ttfts: list[float] = []
    rejected = 0
    arrivals = 0
    running = 0  # requests in a slot, fleet-wide: heartbeats stop once all are done

    def start(node: SimNode, job: Job, now: float) -> None:
        nonlocal running
        running += 1
        node.running += 1
        first, total = node.service_s(job.prompt, job.output)
        if job.counted:
            delays.append(now - job.arrived)
            ttfts.append(now - job.arrived + first)
        heapq.heappush(events, (now + total, next(order), "done", (node, job)))

    while events:
        now, _, what, data = heapq.heappop(events)
        if what == "arrive":
            arrivals += 1
            job = data
            if snapshot.version != state.version:
                snapshot = state.snapshot(now)
            request = RouteRequest(SIM_ALIAS, prompt_tokens=job.prompt)
            g = job.gateway
            try:
                chosen = route(snapshot, request, now=now, policy=policies[g], inflight=inflight[g])
            except NoCandidate:
                rejected += 1
                continue
            node = by_id[chosen.node_id]
            inflight[g][(chosen.node_id, SIM_ALIAS)] += 1
            if node.running < node.kind.slots:
                start(node, job, now)
            else:
                node.waiting.append(job)
        elif what == "done":
            node, job = data
            node.running -= 1
            running -= 1
            served[node.status.node_id] += 1
            inflight[job.gateway][(node.status.node_id, SIM_ALIAS)] -= 1
            if node.waiting:
                start(node, node.waiting.popleft(), now)
        elif arrivals < requests or running:  # a heartbeat, while requests remain
            report(data, now)
            heapq.heappush(events, (now + heartbeat_s, next(order), "beat", data))
    return {
        "queue_p50_s": _percentile(delays, 0.5), "queue_p99_s": _percentile(delays, 0.99),
        "ttft_p50_s": _percentile(ttfts, 0.5), "ttft_p99_s": _percentile(ttfts, 0.99),
        "rejected": rejected, "arrival_rps": rate, "measured": len(ttfts),
    }  # fmt: skip


def simulation_figures(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    """{policy: {load: figures}} for the discrete-event simulation."""
    return {
        name: {
            f"{load:g}": simulate(
                args.sim_nodes,
                load,
                name,
                args.sim_requests,
                args.gateways,
                args.heartbeat_s,
                args.seed,
            )
            for load in args.loads
        }
        for name in POLICY_NAMES
    }


# ---- output --------------------------------------------------------------------------------
PANEL_W, PANEL_H, PAD_LEFT, PAD_TOP, PAD_BOTTOM, LEGEND_W = 400, 300, 56, 34, 40, 280


def _log_panel(
    x0: float, title: str, loads: Sequence[float], series: dict[str, list[float]]
) -> str:
    """One chart of `series` (seconds, log scale) against the load, at x offset `x0`."""
    values = [v for vs in series.values() for v in vs if v > 0]
    low = math.floor(math.log10(min(values, default=0.01)))
    high = max(math.ceil(math.log10(max(values, default=1.0))), low + 1)
    left, right = x0 + PAD_LEFT, x0 + PANEL_W - 12
    top, bottom = PAD_TOP, PANEL_H - PAD_BOTTOM
    span = (max(loads) - min(loads)) or 1.0

    def px(load: float) -> float:
        return left + (load - min(loads)) / span * (right - left)

    def py(value: float) -> float:
        return bottom - (math.log10(value) - low) / (high - low) * (bottom - top)

    parts = [f'<text x="{left}" y="{top - 14}" class="title">{title}</text>']
    for power in range(low, high + 1):
        y = py(10.0**power)
        parts.append(
            f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
            f"{10.0**power:g} s</text>"
        )
    for load in loads:
        parts.append(
            f'<text x="{px(load):.1f}" y="{bottom + 16}" class="tick" text-anchor="middle">'
            f"{load:g}</text>"
        )
    parts.append(
        f'<text x="{(left + right) / 2}" y="{PANEL_H - 6}" class="axis" text-anchor="middle">'
        "load (share of the fleet's capacity)</text>"
    )
    for n, values_ in enumerate(series.values()):
        colour = COLOURS[n % len(COLOURS)]
        points = [(px(x), py(v)) for x, v in zip(loads, values_, strict=True) if v > 0]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        dash = ' stroke-dasharray="6 4"' if n % 2 else ""
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )
    return "".join(parts)


def svg_plot(simulation: dict[str, dict[str, dict[str, float]]], loads: Sequence[float]) -> str:
    """TTFT p50 and p99 against the load, one line per policy (log scale: round-robin on a
    mixed fleet is orders of magnitude off the others), and a legend that names policies
    whose figures are identical to an earlier one's."""
    panels = []
    for n, (field, title) in enumerate((("ttft_p50_s", "TTFT p50"), ("ttft_p99_s", "TTFT p99"))):
        series = {
            name: [by_load[f"{load:g}"][field] for load in loads]
            for name, by_load in simulation.items()
        }
        panels.append(_log_panel(n * PANEL_W, title, loads, series))
    legend = []
    seen: dict[str, str] = {}
    for n, (name, by_load) in enumerate(simulation.items()):
        key = json.dumps(by_load, sort_keys=True)
        same = f" (= {seen[key]})" if key in seen else ""
        seen.setdefault(key, name)
        y, x, colour = PAD_TOP + 18 * n, 2 * PANEL_W, COLOURS[n % len(COLOURS)]
        dash = ' stroke-dasharray="6 4"' if n % 2 else ""  # as its line in the panels
        legend.append(
            f'<line x1="{x}" x2="{x + 24}" y1="{y - 4}" y2="{y - 4}" stroke="{colour}" '
            f'stroke-width="2"{dash}/><text x="{x + 30}" y="{y}" fill="{colour}" '
            f'class="legend">{name}{same}</text>'
        )
    width = 2 * PANEL_W + LEGEND_W
    style = (
        "text{font-family:sans-serif} .grid{stroke:#e5e7eb} .tick{font-size:10px;fill:#555}"
        " .axis{font-size:11px;fill:#333} .legend{font-size:11px;font-weight:600}"
        " .title{font-size:13px;font-weight:600;fill:#111}"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PANEL_H}" '
        f'viewBox="0 0 {width} {PANEL_H}"><style>{style}</style>'
        f'<rect width="100%" height="100%" fill="white"/>{"".join(panels)}{"".join(legend)}</svg>'
    )


def fleet_table(sizes: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="control plane at fleet scale (snapshot: what a gateway receives)")
    for column in ("nodes", "reports/s", "snapshot ms", "pickled KB", "pickle ms",
                   "unpickle ms", "index ms", "JSON KB", "proto KB", "plan s (fresh)",
                   "plan s (steady)"):  # fmt: skip
        table.add_column(column, justify="right")
    for count, f in sizes.items():
        s, p = f["snapshot"], f["placement"]
        table.add_row(
            count, f"{f['heartbeats']['reports_per_s']:,.0f}", f"{s['build_ms']:.1f}",
            f"{s['pickle_bytes'] / 1e3:,.0f}", f"{s['pickle_ms']:.1f}", f"{s['unpickle_ms']:.1f}",
            f"{s['holders_index_ms']:.1f}", f"{s['json_bytes'] / 1e3:,.0f}",
            f"{s['proto_bytes'] / 1e3:,.0f}", f"{p['fresh_plan_s']:.3f}",
            f"{p['steady_plan_s']:.3f}",
        )  # fmt: skip
    return table


def feed_table(sizes: dict[str, dict[str, Any]]) -> Table:
    table = Table(
        title="a snapshot update to one gateway: whole snapshot per change (before) and the "
        f"feed (one publication per {PUBLISH_INTERVAL_S:g} s, half the fleet changed)"
    )
    for column in ("nodes", "before: KB", "pickle+unpickle ms", "feed whole: KB", "encode+take ms",
                   "longest hold ms", "feed delta: nodes", "KB", "publish ms", "encode ms",
                   "take ms", "longest hold ms"):  # fmt: skip
        table.add_column(column, justify="right")
    for count, f in sizes.items():
        s = f["snapshot"]
        table.add_row(
            count, f"{s['pickle_bytes'] / 1e3:,.0f}", f"{s['pickle_ms'] + s['unpickle_ms']:,.1f}",
            f"{s['feed_whole_bytes'] / 1e3:,.0f}",
            f"{s['feed_whole_encode_ms'] + s['feed_whole_take_ms']:,.1f}",
            f"{s['feed_whole_hold_ms']:,.1f}",
            f"{s['feed_delta_nodes']:,}", f"{s['feed_delta_bytes'] / 1e3:,.0f}",
            f"{s['feed_publish_ms']:,.1f}", f"{s['feed_delta_encode_ms']:,.1f}",
            f"{s['feed_delta_take_ms']:,.1f}", f"{s['feed_delta_hold_ms']:,.1f}",
        )  # fmt: skip
    return table


def gateway_table(sizes: dict[str, dict[str, Any]]) -> Table:
    table = Table(
        title="a gateway process following the feed (half the fleet per update; medians "
        "and maxima after the first tenth; full GCs per minute at 2 updates/s)"
    )
    for column in ("nodes", "setting", "updates", "take ms", "Router.update ms", "max",
                   "close gone ms", "settle max ms", "longest hold p50", "max", "full GCs/min",
                   "longest full GC ms", "RSS MB start", "end", "max"):  # fmt: skip
        table.add_column(column, justify="right")
    for count, f in sizes.items():
        for name, g in f.get("gateway", {}).items():
            table.add_row(
                count, name, f"{g['updates']}", f"{g['take_ms']:.1f}", f"{g['update_ms']:.2f}",
                f"{g['update_max_ms']:.1f}", f"{g['keep_ms']:.2f}", f"{g['settle_max_ms']:.2f}",
                f"{g['hold_p50_ms']:.1f}",
                f"{g['hold_max_ms']:.1f}", f"{g['full_gcs_per_min']:.1f}",
                f"{g['full_gc_max_ms']:.0f}", f"{g['rss_start_mb']:.0f}",
                f"{g['rss_end_mb']:.0f}", f"{g['rss_max_mb']:.0f}",
            )  # fmt: skip
    return table


def route_table(sizes: dict[str, dict[str, Any]]) -> Table:
    table = Table(title=f"route() + policy per request, µs (goal p99 <= {ROUTE_GOAL_US:g})")
    table.add_column("nodes", justify="right")
    table.add_column("policy")
    for column in ("p50", "p99", "mean", "requests"):
        table.add_column(column, justify="right")
    for count, f in sizes.items():
        rows = {**f["routing"], "first request per model (p99: max)": f["first_route"]}
        for name, r in rows.items():
            table.add_row(
                count, name, f"{r['p50_us']:,.1f}", f"{r['p99_us']:,.1f}", f"{r['mean_us']:,.1f}",
                str(r["requests"]),
            )  # fmt: skip
    return table


def simulation_table(simulation: dict[str, dict[str, dict[str, float]]], nodes: int) -> Table:
    table = Table(title=f"simulated requests on {nodes} heterogeneous nodes, ms")
    for column in ("policy", "load", "queue p50", "queue p99", "TTFT p50", "TTFT p99", "rejected"):
        table.add_column(column, justify="right")
    for name, by_load in simulation.items():
        for load, f in by_load.items():
            table.add_row(
                name, load, f"{f['queue_p50_s'] * 1e3:,.0f}", f"{f['queue_p99_s'] * 1e3:,.0f}",
                f"{f['ttft_p50_s'] * 1e3:,.0f}", f"{f['ttft_p99_s'] * 1e3:,.0f}",
                str(int(f["rejected"])),
            )  # fmt: skip
    return table


def measure_size(count: int, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    rng = random.Random(args.seed)
    statuses = fleet(count, args.models, rng, (0.03, 0.05))

    profile = cProfile.Profile() if args.profile == count else None

    async def run() -> tuple[Ingested, dict[str, Any], ClusterSnapshot]:
        ingested, close = await ingest(statuses, args.heartbeat_rounds, profile)
        figures, snapshot = snapshot_figures(ingested.registry, args.repeats)
        await close()
        return ingested, figures, snapshot

    ingested, snapshot_stats, snapshot = asyncio.run(run())
    snapshot_stats.update(feed_figures(snapshot, args.repeats))  # runs event loops of its own
    gateway: dict[str, Any] = {}
    if args.gateway_updates:
        for name, budget, freeze, whole in GATEWAY_SETTINGS:
            console.log(
                f"{count} nodes: a gateway following {args.gateway_updates} updates, {name}"
            )
            followed = gateway_figures(snapshot, args.gateway_updates, budget, freeze, whole)
            gateway[name] = gateway_summary(followed)
    reports = count * len(ingested.round_s)
    figures: dict[str, Any] = {
        "heartbeats": {
            "register_s": ingested.register_s,
            "round_s": ingested.round_s,
            "reports_per_s": reports / sum(ingested.round_s) if reports else 0.0,
            "report_bytes": ingested.report_bytes,
        },
        "snapshot": snapshot_stats,
        "gateway": gateway,
        "routing": route_figures(
            snapshot, args.models, args.route_samples, args.route_budget_s, args.seed
        ),
        "first_route": first_route_figures(snapshot, args.models, args.seed),
        "placement": placement_figures(statuses, snapshot, args.models, args.repeats),
    }
    if profile is not None:
        console.print(f"one heartbeat round of {count} reports:\n" + _top(profile))
        console.print(
            f"route() at {count} nodes:\n" + profile_route(snapshot, args.models, 200, args.seed)
        )
    return figures


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--nodes", type=int, nargs="+", default=[100, 1000, 10000], help="fleet sizes")
    add("--models", type=int, default=20, help="models in the catalog")
    add("--heartbeat-rounds", type=int, default=3, help="steady report rounds per fleet size")
    add("--route-samples", type=int, default=2000, help="routed requests per policy and size")
    add("--route-budget-s", type=float, default=3.0, help="seconds per policy and size at most")
    add("--repeats", type=int, default=3, help="timed repeats of snapshot and placement")
    add("--sim-nodes", type=int, default=32, help="nodes in the request simulation")
    add("--sim-requests", type=int, default=20000, help="arrivals per policy and load")
    add("--loads", type=float, nargs="+", default=[0.5, 0.8, 0.95], help="shares of capacity")
    add("--gateways", type=int, default=4, help="gateways routing the simulated requests")
    add("--heartbeat-s", type=float, default=1.0, help="simulated heartbeat interval")
    add("--seed", type=int, default=1)
    add("--profile", type=int, default=0, help="profile route() at this fleet size")
    add(
        "--gateway-updates",
        type=int,
        default=60,
        help="deltas a gateway process follows per fleet size and setting (0: none)",
    )
    add("--gateway-budget-w", type=float, default=None, help=argparse.SUPPRESS)
    add("--gateway-child", help=argparse.SUPPRESS)
    add("--out", type=Path, help="write the figures as JSON here")
    add("--plot", type=Path, help="write the simulation's SVG plot here")
    args = parser.parse_args(argv)
    if min(args.nodes) < 1 or args.models < 1 or args.sim_nodes < 1 or args.gateways < 1:
        parser.error("--nodes, --models, --sim-nodes and --gateways must be at least 1")
    if any(not 0 < load < 1 for load in args.loads):
        parser.error("--loads are shares of capacity, each between 0 and 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.gateway_child is not None:  # the gateway process of gateway_figures
        flags = args.gateway_child.split(",")
        gateway_child("freeze" in flags, "whole" in flags, args.gateway_budget_w)
        return {}
    console = Console(width=max(Console().width, 132))
    sizes: dict[str, dict[str, Any]] = {}
    for count in args.nodes:
        console.log(f"{count} nodes ...")
        sizes[str(count)] = measure_size(count, args, console)
    console.log(f"simulating requests on {args.sim_nodes} nodes ...")
    simulation = simulation_figures(args)
    console.print(fleet_table(sizes))
    console.print(feed_table(sizes))
    console.print(gateway_table(sizes))
    console.print(route_table(sizes))
    console.print(simulation_table(simulation, args.sim_nodes))
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    result = {
        "format": "llamaherd-fleet-sim/1",
        "command": command,
        "calibration": {
            "decode_tps": DECODE_TPS,
            "prefill_tps": PREFILL_TPS,
            "kinds": [dataclasses.asdict(k) for k in KINDS],
        },
        "sizes": sizes,
        "simulation": {
            "nodes": args.sim_nodes,
            "gateways": args.gateways,
            "requests": args.sim_requests,
            "policies": simulation,
        },
    }
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        console.log(f"wrote {args.out}")
    if args.plot is not None:
        args.plot.write_text(svg_plot(simulation, args.loads))
        console.log(f"wrote {args.plot}")
    return result


if __name__ == "__main__":
    main()
