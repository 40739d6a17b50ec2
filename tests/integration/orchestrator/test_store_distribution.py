"""The coordinator's model store, end to end, on namespaced hosts (issue 16).

The coordinator runs in the root namespace (registry and store on the bridge, gateways on
loopback); every worker runs in a network namespace of its own, with a model directory of
its own that does not hold the model. The model is the embedded Gemma GGUF file, added to the
store with `llamaherd models add`; catalog entries name it with `model:`.

A throttle proxy (support.throttle_proxy) stands between the workers and the store: an
iptables DNAT rule in a worker's namespace sends its connections to the store's address
through the proxy, so the worker keeps the URL placement gave it while the test counts the
bytes each fetch moved, slows the transfer down, cuts it, or flips a byte of it. Peers'
file servers get a proxy each too, so the test knows who fetched from whom.

Order matters within the module only in that the later tests start workers of their own:
the first test's two nodes are the only ones running while they fetch.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from llamaherd.v1 import worker_pb2 as w_pb
from llamaherd.v1 import worker_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from support.auth import worker_channel
from support.cluster import Coordinator, start_coordinator, wait_for
from support.netns import Host, Network, network, require_netns
from support.throttle_proxy import ThrottleProxy, redirect, require_iptables
from support.worker_process import LLAMAHERD, WorkerProcess, free_port, start_worker

from worker.models.builtin import resolve

STORE_NAME = "gemma-3-270m-q4"
MODEL = {"n_ctx": 512, "n_parallel": 1, "n_threads": 1, "flash_attn": "off"}
CATALOG = [
    {"alias": "gemma-pair", "model": STORE_NAME, "replicas": 2, "labels": ["pair"], **MODEL},
    {"alias": "gemma-later", "model": STORE_NAME, "replicas": 1, "labels": ["later"], **MODEL},
    {"alias": "gemma-disk", "model": STORE_NAME, "replicas": 1, "labels": ["disk"], **MODEL},
]
FILES_PORT_OFFSET = 1000  # a worker serves peers on its metrics port: gRPC port + 1000
WORKER_PORT = 50051  # support.worker_process puts namespaced workers there
HEADERS_SLACK = 64 * 1024  # HTTP heads around a body: far below any doubled transfer
ROLLOUT_RATE = 50e6  # bytes/s from the store during the rollout: a ~5 s download
# What a reset link loses on its way (the proxy's and the kernel's socket buffers): the
# resumed download fetches it again. A restart would fetch half the file again.
IN_FLIGHT = 8 << 20
SMALL_DIR_BYTES = 64 << 20  # the small model directory: room for a quarter of the file


@dataclass
class StoreCluster:
    net: Network
    coordinator: Coordinator
    workdir: Path
    file: Path  # the GGUF file added to the store
    sha256: str
    size: int
    store_port: int
    store_proxy: ThrottleProxy  # in front of the store for the first test's nodes
    peer_proxies: dict[str, ThrottleProxy]  # node id -> in front of that node's file server
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    stack: ExitStack = field(default_factory=ExitStack)

    @property
    def store(self) -> tuple[str, int]:
        return (self.net.gateway, self.store_port)

    @property
    def store_url(self) -> str:
        return f"http://{self.net.gateway}:{self.store_port}/v1/store/files/{self.sha256}"

    def host(self, index: int) -> Host:
        return self.net.hosts[index]

    def start(
        self, index: int, *labels: str, model_dir: Path | None = None, proxy: bool = True
    ) -> WorkerProcess:
        """A worker on host `index`, node id h<index>, whose first model dir is empty. With
        `proxy`, its connections to the store go through the module's store proxy."""
        host = self.host(index)
        node_id = f"h{index}"
        if model_dir is None:
            model_dir = self.workdir / f"models-{node_id}"
        model_dir.mkdir(parents=True, exist_ok=True)
        if proxy:
            self.stack.enter_context(redirect(host, self.store, self.store_proxy.address))
        config = {"model_dirs": [str(model_dir)], "reference_speed": False}
        label_args = [arg for label in labels for arg in ("--label", label)]
        worker = start_worker(
            self.workdir, config,
            "--coordinator", f"{self.net.gateway}:{self.coordinator.registry_port}",
            "--node-id", node_id, "--heartbeat-interval-s", "0.5", *label_args,
            name=node_id, host=host,
        )  # fmt: skip
        self.workers[node_id] = worker
        self.stack.callback(worker.stop)
        return worker

    def cluster_json(self) -> dict[str, Any]:
        """The document /v1/cluster serves (the same one `llamaherd status --json` prints)."""
        reply = httpx.get(f"http://127.0.0.1:{self.coordinator.http_port}/v1/cluster", timeout=10)
        reply.raise_for_status()
        document: dict[str, Any] = reply.json()
        return document

    def model_on(self, node_id: str, alias: str) -> dict[str, Any] | None:
        for node in self.cluster_json()["nodes"]:
            if node["status"]["node_id"] == node_id and node["up"]:
                for model in node["status"]["models"]:
                    if model["alias"] == alias:
                        return dict(model)
        return None

    def ready_nodes(self, alias: str) -> set[str]:
        return {
            node["status"]["node_id"]
            for node in self.cluster_json()["nodes"]
            if node["up"]
            and any(m["alias"] == alias and m["state"] == "ready" for m in node["status"]["models"])
        }

    def node(self, node_id: str) -> dict[str, Any]:
        for node in self.cluster_json()["nodes"]:
            if node["status"]["node_id"] == node_id:
                return dict(node)
        raise AssertionError(f"{node_id} is not in the cluster")

    def stored_file(self, node_id: str) -> Path:
        return self.workdir / f"models-{node_id}" / "store" / f"{self.sha256}.gguf"

    def spec(self, alias: str) -> w_pb.ModelSpec:
        """A LoadModel spec for the store model with the store as its only source."""
        source = w_pb.ModelSource(
            name=STORE_NAME, sha256=self.sha256, size_bytes=self.size, urls=[self.store_url]
        )
        return w_pb.ModelSpec(alias=alias, path=f"store:{STORE_NAME}", source=source, **MODEL)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _add_to_store(store_dir: Path, file: Path) -> None:
    added = subprocess.run(
        [LLAMAHERD, "models", "add", str(file), "--name", STORE_NAME,
         "--store-dir", str(store_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert added.returncode == 0, added.stdout + added.stderr


@pytest.fixture(scope="module")
def store_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreCluster]:
    require_netns()
    require_iptables()
    workdir = tmp_path_factory.mktemp("store-cluster")
    file = resolve("builtin:gemma-3-270m")
    store_dir = workdir / "store"
    _add_to_store(store_dir, file)
    with network(8) as net, ExitStack() as stack:
        store_port = free_port()
        store_proxy = stack.enter_context(
            ThrottleProxy((net.gateway, 0), (net.gateway, store_port))
        )
        coordinator = start_coordinator(
            workdir, CATALOG, "--host", net.gateway, "--store-port", str(store_port),
            "--store-dir", str(store_dir),
        )  # fmt: skip
        stack.callback(coordinator.stop)
        peer_proxies = {
            f"h{i}": stack.enter_context(
                ThrottleProxy(
                    (net.gateway, 0), (net.hosts[i].address, WORKER_PORT + FILES_PORT_OFFSET)
                )
            )
            for i in (0, 1)
        }
        cluster = StoreCluster(
            net, coordinator, workdir, file, _sha256(file), file.stat().st_size, store_port,
            store_proxy, peer_proxies,
        )  # fmt: skip
        stack.enter_context(cluster.stack)  # workers stop before the coordinator
        yield cluster


def _load_in_background(
    cluster: StoreCluster, worker: WorkerProcess, spec: w_pb.ModelSpec
) -> Callable[[], None]:
    """Sends LoadModel from a thread; returns a join that re-raises its error."""
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            with worker_channel(worker.address) as channel:
                stub = worker_pb2_grpc.WorkerStub(channel)
                stub.LoadModel(w_pb.LoadModelRequest(spec=spec), timeout=300)
        except BaseException as exc:  # handed to the test's thread by join()
            outcome.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()

    def join() -> None:
        thread.join(300)
        if outcome:
            raise outcome[0]

    return join


def _gateway_gauges(cluster: StoreCluster, alias: str) -> dict[str, float]:
    """The gateway's /metrics samples for one model (every node's), by name; the state
    gauge as llamaherd_model_state/<state>."""
    url = f"http://127.0.0.1:{cluster.coordinator.http_port}/metrics"
    text = httpx.get(url, timeout=10).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == alias:
                state = sample.labels.get("state")
                found[sample.name + (f"/{state}" if state else "")] = sample.value
    return found


@dataclass(frozen=True)
class Fetched:
    """What one node's fetch moved, as the proxies saw it."""

    from_store: int  # bytes from the store
    from_peer: int  # bytes from the other node's file server
    gets: list[str]  # its GET requests for the file, to either


def _gets(requests: list[str]) -> list[str]:
    return [r for r in requests if r.startswith("GET /v1/store/files/")]


# ---- (a) two nodes, one fetch each: one from the store, one from its peer -----------------
def _peer_port(cluster: StoreCluster, index: int) -> tuple[str, int]:
    return (cluster.host(index).address, WORKER_PORT + FILES_PORT_OFFSET)


def _through_peer_proxies(cluster: StoreCluster, index: int) -> None:
    """Host `index`'s connections to h0's and h1's file servers go through their proxies."""
    for peer in (0, 1):
        if peer != index:
            proxy = cluster.peer_proxies[f"h{peer}"]
            cluster.stack.enter_context(
                redirect(cluster.host(index), _peer_port(cluster, peer), proxy.address)
            )


def _fetched(cluster: StoreCluster, index: int) -> Fetched:
    address = cluster.host(index).address
    peers = [p for n, p in cluster.peer_proxies.items() if n != f"h{index}"]
    return Fetched(
        from_store=cluster.store_proxy.bytes_down(address),
        from_peer=sum(p.bytes_down(address) for p in peers),
        gets=_gets(cluster.store_proxy.requests(address))
        + [q for p in peers for q in _gets(p.requests(address))],
    )


@pytest.fixture(scope="module")
def rollout(store_cluster: StoreCluster) -> dict[str, Fetched]:
    """A first rollout: h0 and h1, neither holding the file, start together and the catalog
    wants the model on both. The store's link is slowed (ROLLOUT_RATE) while they fetch, so
    the first download surely outlasts the other node's registration: a second fetch of the
    same file can then only come from the store if placement sends it there."""
    cluster = store_cluster
    for i in (0, 1):
        _through_peer_proxies(cluster, i)
    cluster.store_proxy.set_rate(ROLLOUT_RATE)
    try:
        with ThreadPoolExecutor(2) as starting:
            list(starting.map(lambda i: cluster.start(i, "pair"), (0, 1)))
        wait_for(
            lambda: cluster.ready_nodes("gemma-pair") == {"h0", "h1"},
            150,
            "gemma-pair to be ready on h0 and h1",
        )
    finally:
        cluster.store_proxy.set_rate(None)
    return {f"h{i}": _fetched(cluster, i) for i in (0, 1)}


def test_a_first_rollout_fetches_the_file_once_from_the_store_then_from_the_peer(
    store_cluster: StoreCluster, rollout: dict[str, Fetched]
) -> None:
    size = store_cluster.size
    from_store = [n for n, f in rollout.items() if f.from_store >= size]
    assert len(from_store) == 1, f"one node fetches from the store, the other from it: {rollout}"
    first = from_store[0]
    second = next(n for n in rollout if n != first)
    assert rollout[first].from_store < size + HEADERS_SLACK, rollout  # once, not twice
    assert rollout[first].from_peer == 0, rollout
    assert rollout[second].from_store < HEADERS_SLACK, rollout  # at most a HEAD
    assert size <= rollout[second].from_peer < size + HEADERS_SLACK, rollout
    # Placement said why the second replica waited (the problem status shows, logged too).
    waited = f"{second}: waiting for {first} to finish fetching {STORE_NAME} (peer-to-peer rollout)"
    assert waited in store_cluster.coordinator.log_tail(5000), store_cluster.coordinator.log_tail()


def test_each_node_of_the_rollout_fetched_once_and_holds_the_verified_file(
    store_cluster: StoreCluster, rollout: dict[str, Fetched]
) -> None:
    size = store_cluster.size
    for node_id, fetched in rollout.items():
        assert len(fetched.gets) == 1, rollout
        assert size <= fetched.from_store + fetched.from_peer < size + HEADERS_SLACK, rollout
        stored = store_cluster.node(node_id)["status"]["stored_files"]
        assert [f["sha256"] for f in stored] == [store_cluster.sha256]
        assert store_cluster.stored_file(node_id).stat().st_size == size


def test_a_node_joining_later_fetches_from_a_peer_not_the_store(
    store_cluster: StoreCluster, rollout: dict[str, Fetched]
) -> None:
    cluster = store_cluster
    _through_peer_proxies(cluster, 2)
    cluster.start(2, "later")
    wait_for(lambda: cluster.ready_nodes("gemma-later") == {"h2"}, 120, "gemma-later on h2")
    fetched = _fetched(cluster, 2)
    assert fetched.from_store < HEADERS_SLACK, fetched
    assert cluster.size <= fetched.from_peer < cluster.size + HEADERS_SLACK, fetched
    assert len(fetched.gets) == 1, fetched


# ---- (d) a small model directory: refused with the numbers, placed elsewhere ------------
def test_a_node_with_a_small_model_dir_refuses_with_the_numbers_and_placement_picks_another(
    store_cluster: StoreCluster,
) -> None:
    cluster = store_cluster
    small = cluster.workdir / "models-h3"
    small.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DIR_BYTES}", "tmpfs", str(small)], check=True
    )
    cluster.stack.callback(subprocess.run, ["umount", "-l", str(small)], check=False)
    small_worker = cluster.start(3, "disk", model_dir=small)
    cluster.start(4, "disk")
    wait_for(lambda: cluster.ready_nodes("gemma-disk") == {"h4"}, 120, "gemma-disk on h4")
    assert cluster.model_on("h3", "gemma-disk") is None
    free = cluster.node("h3")["status"]["model_disk_free_bytes"]
    assert free is not None and free <= SMALL_DIR_BYTES
    # Placement explains why it passed the node over, with the numbers.
    reasons = [
        line
        for line in cluster.coordinator.log_tail(5000).splitlines()
        if f"h3: needs {cluster.size} bytes" in line
    ]
    assert reasons and f"has {free} free" in reasons[-1], cluster.coordinator.log_tail()

    # The worker checks for itself too: asked directly, it refuses before fetching a byte.
    with worker_channel(small_worker.address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.LoadModel(w_pb.LoadModelRequest(spec=cluster.spec("gemma-small")), timeout=60)
    error: grpc.Call = refused.value
    assert error.code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    ), error.details()
    details = error.details() or ""
    assert str(cluster.size) in details, details
    has = re.search(r"(\d+) bytes free", details)
    assert has and int(has.group(1)) <= SMALL_DIR_BYTES, details
    assert cluster.store_proxy.bytes_down(cluster.host(3).address) < HEADERS_SLACK
    assert not list(small.rglob("*.gguf*")), list(small.rglob("*"))


# ---- (b) a cut download resumes --------------------------------------------------------
def test_a_download_cut_midway_resumes_where_it_stopped(store_cluster: StoreCluster) -> None:
    cluster = store_cluster
    host = cluster.host(5)
    with (
        ThrottleProxy((cluster.net.gateway, 0), cluster.store) as proxy,
        redirect(host, cluster.store, proxy.address),
    ):
        cut_at = cluster.size // 2
        proxy.cut_next(cut_at)
        worker = cluster.start(5, proxy=False)
        join = _load_in_background(cluster, worker, cluster.spec("gemma-cut"))
        wait_for(lambda: "h5" in cluster.ready_nodes("gemma-cut"), 150, "gemma-cut on h5")
        join()
        relayed = proxy.relayed()
    assert any(r.cut for r in relayed), "the proxy never cut the download"
    gets = _gets([q for r in relayed for q in r.requests])
    assert len(gets) >= 2, gets
    resumed_from = int(gets[-1].rpartition("range=bytes=")[2].split("-")[0] or 0)
    # From where it stopped: the reset loses only what was in flight (socket buffers).
    assert cut_at - IN_FLIGHT <= resumed_from <= cut_at, (resumed_from, cut_at, gets)
    moved = sum(r.bytes_down for r in relayed)
    # Resumed, not restarted: the file crossed the link about once (a restart: 1.5x).
    assert cluster.size <= moved < cluster.size + IN_FLIGHT, (moved, cluster.size)
    assert _sha256(cluster.stored_file("h5")) == cluster.sha256
    assert not cluster.stored_file("h5").with_suffix(".gguf.part").exists()


# ---- (c) a flipped byte is caught by the hash ------------------------------------------
def test_a_flipped_byte_is_caught_by_the_hash_and_the_file_fetched_again(
    store_cluster: StoreCluster,
) -> None:
    cluster = store_cluster
    host = cluster.host(6)
    with (
        ThrottleProxy((cluster.net.gateway, 0), cluster.store) as proxy,
        redirect(host, cluster.store, proxy.address),
    ):
        proxy.corrupt_next(cluster.size // 3)
        worker = cluster.start(6, proxy=False)
        join = _load_in_background(cluster, worker, cluster.spec("gemma-flip"))
        wait_for(lambda: "h6" in cluster.ready_nodes("gemma-flip"), 150, "gemma-flip on h6")
        join()
        relayed = proxy.relayed()
    assert any(r.corrupted for r in relayed), "the proxy never flipped a byte"
    moved = sum(r.bytes_down for r in relayed)
    # The corrupt copy was thrown away whole and fetched again: two transfers.
    assert moved >= 2 * cluster.size, (moved, cluster.size)
    assert len(_gets([q for r in relayed for q in r.requests])) >= 2
    assert _sha256(cluster.stored_file("h6")) == cluster.sha256
    assert "sha256" in worker.log_tail(400)


# ---- (e) progress in status while a throttled download runs ------------------------------
def test_progress_shows_in_status_while_the_file_travels(store_cluster: StoreCluster) -> None:
    cluster = store_cluster
    host = cluster.host(7)
    with (
        ThrottleProxy((cluster.net.gateway, 0), cluster.store, rate=8e6) as proxy,
        redirect(host, cluster.store, proxy.address),
    ):
        worker = cluster.start(7, proxy=False)
        join = _load_in_background(cluster, worker, cluster.spec("gemma-slow"))

        def downloading() -> dict[str, Any] | None:
            model = cluster.model_on("h7", "gemma-slow")
            progress = model and model["state"] == "downloading" and model["download"]
            if progress and progress["bytes_done"] > 0:
                return dict(progress)
            return None

        first = wait_for(downloading, 60, "gemma-slow to be downloading on h6")
        assert first["bytes_total"] == cluster.size
        assert first["source"] == f"{cluster.net.gateway}:{cluster.store_port}"
        assert first["attempt"] == 1
        later = wait_for(
            lambda: (d := downloading()) and d["bytes_done"] > first["bytes_done"] and d,
            30,
            "bytes_done to grow",
        )
        assert 0 < later["bytes_per_second"] < 3 * 8e6  # the proxy's cap, room for bursts
        assert later["eta_s"] > 0
        shown = subprocess.run(
            [LLAMAHERD, "status", "--json", "--gateway", cluster.coordinator.gateway],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        node = next(n for n in json.loads(shown.stdout)["nodes"] if n["status"]["node_id"] == "h7")
        (model,) = [m for m in node["status"]["models"] if m["alias"] == "gemma-slow"]
        assert model["state"] == "downloading", model
        assert model["download"]["bytes_done"] >= later["bytes_done"]
        gauges = _gateway_gauges(cluster, "gemma-slow")
        assert gauges["llamaherd_model_download_total_bytes"] == cluster.size, gauges
        assert 0 < gauges["llamaherd_model_download_bytes"] < cluster.size, gauges
        assert gauges["llamaherd_model_state/downloading"] == 1, gauges
        proxy.set_rate(None)  # let the rest through at full speed
        wait_for(lambda: "h7" in cluster.ready_nodes("gemma-slow"), 120, "gemma-slow ready")
        join()
    model_now = cluster.model_on("h7", "gemma-slow")
    assert model_now is not None and model_now["download"] is None
