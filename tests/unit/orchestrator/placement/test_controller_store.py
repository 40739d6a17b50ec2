"""The placement controller with store models: names resolved against a real store index
every round, nodes that lack the file sized from the store's copy, LoadModel carrying where
to fetch it (peers first, the store last), downloads timed out by the controller's clock."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from common.memory import format_bytes
from common.model_settings import ModelSource
from common.status import DownloadProgress, ModelState, ModelStatus, StoredFile
from orchestrator.cluster.types import Node, PlacementProblem
from orchestrator.config import CatalogEntry
from orchestrator.placement.controller import Timings
from orchestrator.placement.sources import IndexedStore, estimate_from_file
from orchestrator.store.index import GgufSummary, StoredModel, StoreIndex
from tests.support.gguf_files import write_gguf
from tests.unit.orchestrator.factories import GiB, estimate, node, replica, snapshot
from tests.unit.orchestrator.placement.test_controller import (
    FakeWorker,
    Harness,
    Workers,
)
from tests.unit.orchestrator.placement.test_controller import (
    run as run_controller,
)

TIMINGS = Timings(rejoin_grace_s=0.0, download_timeout_s=100.0)
STORE_URL = "http://10.0.0.1:8002"
CATALOG = [CatalogEntry(alias="m", model="llama-q4", n_ctx=512)]


def add_model(store_dir: Path, name: str = "llama-q4") -> StoredModel:
    """Adds a small real GGUF to a real store index, as `llamaherd models add` leaves it."""
    index = StoreIndex(store_dir)
    incoming = write_gguf(
        store_dir / "incoming.part",
        tensors={"token_embd.weight": np.zeros((32, 64), np.float32)},
        context_length=1024,
    )
    data = incoming.read_bytes()
    model = StoredModel(
        name,
        hashlib.sha256(data).hexdigest(),
        len(data),
        GgufSummary("llama", 2048, "F32", 2, 1024, False),
        0.0,
    )
    index.add(model, incoming)
    index.close()
    return model


def at(node_id: str, *replicas: ModelStatus, holds: str = "", disk: int | None = 10 * GiB) -> Node:
    """A node at 10.0.1.x serving files on 9100; `holds` is the sha256 of a file it has."""
    n = node(node_id, *replicas)
    files = (StoredFile(holds, 1, "llama-q4"),) if holds else ()
    host = f"10.0.1.{ord(node_id[0]) - ord('a') + 1}"
    status = dataclasses.replace(
        n.status,
        address=f"{host}:50051",
        files_port=9100,
        stored_files=files,
        model_disk_free_bytes=disk,
    )
    return dataclasses.replace(n, status=status)


class ByHost(Workers):
    """The fake workers, named by node id although the nodes listen on 10.0.1.x."""

    def __call__(self, address: str) -> FakeWorker:
        host = address.split(":")[0]
        return self[chr(ord("a") + int(host.rsplit(".", 1)[1]) - 1)]


def run(
    store: IndexedStore | None,
    scenario: Callable[[Harness], Awaitable[None]],
    catalog: list[CatalogEntry] = CATALOG,
) -> None:
    """`scenario` against a controller with `store`, on workers that fetch by host."""
    run_controller(
        catalog,
        scenario,
        ByHost(),
        timings=TIMINGS,
        store=store,
        link_bytes_per_second=1e6,
    )


def test_a_name_not_in_the_store_is_a_problem_until_it_is_added(tmp_path: Path) -> None:
    store = IndexedStore(tmp_path / "store", STORE_URL)

    async def scenario(h: Harness) -> None:
        await h.round(at("a"))
        assert h.workers.take() == []
        assert h.published[-1] == (
            PlacementProblem(
                "m", "model llama-q4 is not in the store: llamaherd models add FILE --name llama-q4"
            ),
        )
        model = add_model(tmp_path / "store")  # while the coordinator runs
        await h.round(at("a"))
        assert h.workers.take() == ["a: load m"]  # no estimate asked: a lacks the file
        assert h.published[-1] == ()
        (loaded,) = h.workers["a"].loaded
        assert loaded.path == "store:llama-q4"
        assert loaded.source == ModelSource(
            name="llama-q4",
            sha256=model.sha256,
            size_bytes=model.size_bytes,
            urls=(f"{STORE_URL}/v1/store/files/{model.sha256}",),
        )
        # It fetches first: the load may take the download's time too.
        assert h.workers["a"].timeouts["load"] == TIMINGS.load_timeout_s + 100.0

    run(store, scenario)


def test_without_a_store_a_store_entry_is_a_problem(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.round(at("a"))
        assert h.workers.take() == []
        (problem,) = h.published[-1]
        assert (
            problem.reason
            == "model llama-q4 names a store model, but this coordinator has no store"
        )

    run(None, scenario)


def test_peers_holding_the_file_come_before_the_store(tmp_path: Path) -> None:
    model = add_model(tmp_path / "store")
    store = IndexedStore(tmp_path / "store", STORE_URL)

    async def scenario(h: Harness) -> None:
        h.workers.need(estimate(GiB), "b")
        # a holds the file but has too little memory; b lacks it and fetches from a first.
        holder = dataclasses.replace(
            at("a", holds=model.sha256),
            status=dataclasses.replace(at("a", holds=model.sha256).status, memory_free=0),
        )
        await h.round(holder, at("b"))
        assert h.workers.take() == ["a: estimate m", "b: load m"]
        (loaded,) = h.workers["b"].loaded
        assert loaded.source is not None
        assert loaded.source.urls == (
            f"http://10.0.1.1:9100/v1/store/files/{model.sha256}",
            f"{STORE_URL}/v1/store/files/{model.sha256}",
        )

    run(store, scenario)


def test_a_node_that_lacks_the_file_is_sized_from_the_stores_copy(tmp_path: Path) -> None:
    model = add_model(tmp_path / "store")
    store = IndexedStore(tmp_path / "store", STORE_URL)
    need = estimate_from_file(tmp_path / "store" / f"{model.sha256}.gguf", CATALOG[0])

    async def scenario(h: Harness) -> None:
        short = dataclasses.replace(
            at("a"), status=dataclasses.replace(at("a").status, memory_free=need.total_bytes - 1)
        )
        await h.round(short)
        assert h.workers.take() == []
        (problem,) = h.published[-1]
        free = format_bytes(need.total_bytes - 1)
        assert problem.reason.endswith(
            f"a: needs {format_bytes(need.total_bytes)}, has {free} free"
        )
        await h.round(at("a"))
        assert h.workers.take() == ["a: load m"]

    run(store, scenario)


def test_a_download_past_the_timeout_is_unloaded_and_the_node_left_alone(tmp_path: Path) -> None:
    add_model(tmp_path / "store")
    store = IndexedStore(tmp_path / "store", STORE_URL)
    progress = DownloadProgress(100, 1000, 0.5, 1800.0, "10.0.0.1:8002", 1)
    fetching = replica("m", state=ModelState.DOWNLOADING, download=progress)

    async def scenario(h: Harness) -> None:
        await h.round(at("a", fetching), at("b"))
        assert h.workers.take() == []  # in progress: no second replica on b
        h.clock.now += 99.0
        await h.round(at("a", fetching), at("b"))
        assert h.workers.take() == []
        h.clock.now += 1.0
        await h.round(at("a", fetching), at("b"))
        assert sorted(h.workers.take()) == ["a: unload m", "b: load m"]
        # Once unloaded, a is not asked again before the back-off, and says why.
        await h.round(at("a"), at("b", replica("m", state=ModelState.LOADING)))
        assert h.workers.take() == []

    run(store, scenario)


def test_a_measured_download_rate_steers_the_next_placement(tmp_path: Path) -> None:
    add_model(tmp_path / "store")
    store = IndexedStore(tmp_path / "store", STORE_URL)
    fast = DownloadProgress(100, 1000, 50e6, 1.0, "10.0.0.1:8002", 1)
    other = replica("x", state=ModelState.DOWNLOADING, download=fast)

    async def scenario(h: Harness) -> None:
        # b reported 50 MB/s on another download; a is assumed at 1 MB/s: b goes first even
        # though a sorts first by id.
        await h.round(at("a"), at("b", other))
        assert h.workers.take() == ["b: load m"]

    run(store, scenario)


def test_a_first_rollout_fetches_from_the_store_once_then_from_the_peer(tmp_path: Path) -> None:
    model = add_model(tmp_path / "store")
    store = IndexedStore(tmp_path / "store", STORE_URL)
    catalog = [CatalogEntry(alias="m", model="llama-q4", n_ctx=512, replicas=3)]
    store_url = f"{STORE_URL}/v1/store/files/{model.sha256}"

    def roomy(n: Node) -> Node:  # more memory: ranks first, were nothing else to say
        return dataclasses.replace(n, status=dataclasses.replace(n.status, memory_free=64 * GiB))

    async def scenario(h: Harness) -> None:
        fetched = asyncio.Event()
        h.workers["a"].loading = fetched  # a's load runs until the test says it is done
        await h.controller.reconcile(snapshot(at("a"), at("b"), at("c")))
        await asyncio.sleep(0)
        assert h.workers.take() == ["a: load m"]
        assert h.workers["a"].loaded == []  # still fetching
        waiting = "waiting for a to finish fetching llama-q4 (peer-to-peer rollout)"
        assert h.published[-1] == (
            PlacementProblem("m", f"placed 1 of 3 replicas; b: {waiting}; c: {waiting}"),
        )
        # Before a reports DOWNLOADING, b ranks first: still, the load under way counts.
        await h.controller.reconcile(snapshot(at("a"), roomy(at("b")), at("c")))
        await asyncio.sleep(0)
        assert h.workers.take() == []
        downloading = replica("m", state=ModelState.DOWNLOADING)
        await h.controller.reconcile(snapshot(at("a", downloading), roomy(at("b")), at("c")))
        assert h.workers.take() == []
        fetched.set()
        await h.controller.settle()
        (first,) = h.workers["a"].loaded
        assert first.source is not None and first.source.urls == (store_url,)
        # a holds the verified file now: b and c fetch from it, the store as a fallback.
        loading = replica("m", state=ModelState.LOADING)
        await h.round(at("a", loading, holds=model.sha256), at("b"), at("c"))
        assert sorted(h.workers.take()) == ["b: load m", "c: load m"]
        for peer in ("b", "c"):
            (loaded,) = h.workers[peer].loaded
            assert loaded.source is not None
            peer_url = f"http://10.0.1.1:9100/v1/store/files/{model.sha256}"
            assert loaded.source.urls == (peer_url, store_url)
        assert h.published[-1] == ()

    run(store, scenario, catalog)
