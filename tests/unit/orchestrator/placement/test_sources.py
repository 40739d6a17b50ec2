"""Store models in placement: peer URLs and their order, the disk check, the coordinator's
own memory estimate (checked against the worker's), and the index adapter on a real index."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from common.errors import InvalidModelFile
from common.model_settings import ModelConfig
from common.status import DownloadProgress, ModelState, ModelStatus, StoredFile
from orchestrator.cluster.types import Node
from orchestrator.placement.sources import (
    DISK_MARGIN_BYTES,
    IndexedStore,
    StoreModel,
    disk_refusal,
    download_seconds,
    estimate_from_file,
    peer_urls,
    source_for,
)
from orchestrator.store.index import GgufSummary, StoredModel, StoreIndex
from tests.support.gguf_files import write_gguf
from tests.unit.orchestrator.factories import GiB, MiB, node, replica
from worker.config import WorkerSettings
from worker.models.estimate import MemoryBudget
from worker.models.registry import ModelRegistry

SHA = "0f" * 32
MODEL = StoreModel("llama-q4", SHA, 4 * GiB)
STORE = "http://10.0.0.1:8002"


def at(
    node_id: str,
    host: str,
    *replicas: ModelStatus,
    files_port: int | None = 9100,
    holds: bool = True,
    up: bool = True,
) -> Node:
    """A node at `host` that serves its files on `files_port` and may hold the model."""
    n = node(node_id, *replicas, up=up)
    status = dataclasses.replace(
        n.status,
        address=f"{host}:50051",
        files_port=files_port,
        stored_files=(StoredFile(SHA, MODEL.size_bytes, MODEL.name),) if holds else (),
    )
    return dataclasses.replace(n, status=status)


def url(host: str, port: int = 9100) -> str:
    return f"http://{host}:{port}/v1/store/files/{SHA}"


# ---- peers -------------------------------------------------------------------------------


def test_the_fetching_node_gets_holders_first_and_the_store_last() -> None:
    target = at("t", "10.0.1.5", holds=False)
    nodes = [target, at("a", "10.0.1.7"), at("b", "10.0.1.8", holds=False)]
    source = source_for(MODEL, target, nodes, STORE + "/")
    assert source.urls == (url("10.0.1.7"), f"{STORE}/v1/store/files/{SHA}")
    assert (source.name, source.sha256, source.size_bytes) == (MODEL.name, SHA, MODEL.size_bytes)


def test_peers_on_the_targets_network_come_first_then_the_least_busy() -> None:
    target = at("t", "10.0.1.5", holds=False)
    busy = replica("other", queued=3, active=1)
    fetching = replica(
        "x", state=ModelState.DOWNLOADING, download=DownloadProgress(1, 2, 10.0, 1.0)
    )
    nodes = [
        target,
        at("far", "10.0.2.9"),
        at("near-busy", "10.0.1.20", busy),  # same network, serving 4 requests
        at("near-fetching", "10.0.1.30", fetching),
        at("near-idle", "10.0.1.40"),
    ]
    assert peer_urls(SHA, target, nodes) == [
        url("10.0.1.40"),
        url("10.0.1.30"),
        url("10.0.1.20"),
        url("10.0.2.9"),
    ]


def test_down_nodes_nodes_without_a_file_port_and_the_target_itself_are_no_peers() -> None:
    target = at("t", "10.0.1.5")  # holds it too (a reload): never its own source
    nodes = [
        target,
        at("down", "10.0.1.6", up=False),
        at("silent", "10.0.1.7", files_port=None),
        at("ok", "host-b.lan", files_port=8080),
        at("v6", "[fd00::7]"),
    ]
    assert peer_urls(SHA, target, nodes) == [  # none near, none busy: by node id
        f"http://host-b.lan:8080/v1/store/files/{SHA}",
        f"http://[fd00::7]:9100/v1/store/files/{SHA}",
    ]


# ---- disk and time -----------------------------------------------------------------------


def test_disk_refusal_gives_the_numbers() -> None:
    assert disk_refusal(MODEL, MODEL.size_bytes + DISK_MARGIN_BYTES) is None
    reason = disk_refusal(MODEL, 3 * GiB)
    assert reason == (
        f"needs {4 * GiB} bytes of disk for the file (+{DISK_MARGIN_BYTES} spare), "
        f"has {3 * GiB} free"
    )
    assert disk_refusal(MODEL, MODEL.size_bytes) is not None  # no margin left
    assert "does not report" in (disk_refusal(MODEL, None) or "")


def test_download_seconds() -> None:
    assert download_seconds(100 * MiB, 10 * MiB) == 10.0
    assert download_seconds(100 * MiB, 0.0) == float("inf")


# ---- the coordinator's estimate ----------------------------------------------------------


def gguf_file(folder: Path) -> Path:
    tensors = {
        "token_embd.weight": np.zeros((32, 64), np.float32),
        "blk.0.attn_q.weight": np.zeros((64, 64), np.float32),
        "blk.1.attn_q.weight": np.zeros((64, 64), np.float32),
    }
    folder.mkdir(exist_ok=True)
    return write_gguf(
        folder / "m.gguf",
        extra_uint32={"llama.feed_forward_length": 256},
        context_length=1024,
        tensors=tensors,
    )


@pytest.mark.parametrize(
    "settings",
    [{}, {"n_ctx": 0}, {"n_parallel": 2, "n_ctx": 512}, {"embedding": True}, {"n_batch": 2}],
)
def test_the_coordinators_estimate_is_the_workers(
    tmp_path: Path, settings: dict[str, object]
) -> None:
    path = gguf_file(tmp_path / "models")
    config = ModelConfig.model_validate({"alias": "m", "path": str(path), **settings})
    free = 8 * GiB  # room for every slot: the worker does not shrink n_parallel
    budget = MemoryBudget(limit_bytes=free, reserve_bytes=0, available=lambda: free)
    worker = ModelRegistry(
        WorkerSettings(model_dirs=(tmp_path / "models",)), budget, _never, _never_split
    )
    assert estimate_from_file(path, config) == asyncio.run(worker.estimate(config))


def test_an_unreadable_store_copy_is_an_invalid_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(InvalidModelFile, match=r"bad\.gguf"):
        estimate_from_file(bad, ModelConfig(alias="m", path=str(bad)))


def _never(*args: object) -> object:
    raise AssertionError("estimating builds nothing")


async def _never_split(*args: object) -> object:
    raise AssertionError("estimating starts nothing")


# ---- the index adapter -------------------------------------------------------------------


def test_indexed_store_reads_a_real_index(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store = IndexedStore(store_dir, STORE + "/")
    assert store.base_url == STORE
    assert store.lookup("llama-q4") is None  # no index yet: nothing is known, nothing made
    assert not store_dir.exists()
    index = StoreIndex(store_dir)
    incoming = store_dir / "incoming.part"
    incoming.write_bytes(b"x" * 10)
    summary = GgufSummary("llama", 1, "Q4_K_M", 2, 1024, False)
    index.add(StoredModel("llama-q4", SHA, 10, summary, 0.0), incoming)
    found = store.lookup("llama-q4")
    assert found == StoreModel("llama-q4", SHA, 10, store_dir / f"{SHA}.gguf")
    assert found is not None and found.file is not None and found.file.read_bytes() == b"x" * 10
    assert store.lookup("other") is None
    index.remove("llama-q4")  # seen at the next lookup: placement resolves every round
    assert store.lookup("llama-q4") is None
    store.close()
    index.close()
