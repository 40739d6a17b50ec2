"""Store models in placement: what a catalog entry's store name resolves to, which nodes
hold its file, where a node that lacks it fetches it, and what it will need once fetched.

Pure functions, plus the one protocol placement reads the coordinator's store through
(ModelStore). The controller resolves names once per round and hands the results to the
planner, so an unknown name is a placement problem in status, never a crash.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.errors import InvalidModelFile
from common.estimate import ModelShape, context_for, estimate_memory, most_slots
from common.gguf import read_gguf
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig, ModelSource
from common.net import split_host_port
from orchestrator.cluster.types import Node, NodeId
from orchestrator.store.index import INDEX_FILE, StoreIndex

FILES_PATH = "/v1/store/files/"
# What a fetching worker keeps free beyond the file: the filesystem's own bookkeeping and
# the logs and caches that share it. A node with less is refused before the download.
DISK_MARGIN_BYTES = 64 << 20


@dataclass(frozen=True)
class StoreModel:
    """One model of the coordinator's store, as placement needs it."""

    name: str
    sha256: str
    size_bytes: int
    file: Path | None = None  # the file on the coordinator's disk, to read its metadata


class ModelStore(Protocol):
    """The coordinator's store, read-only: its index and the URL workers fetch from."""

    def lookup(self, name: str) -> StoreModel | None:
        """The model stored under `name`, None when the store has none by that name."""

    @property
    def base_url(self) -> str:
        """The store's base URL as workers reach it (http://HOST:PORT), no trailing slash."""


class IndexedStore:
    """ModelStore over the store's SQLite index (orchestrator.store.index), opened at the
    first lookup that finds one: a coordinator may start before any model is added."""

    def __init__(self, store_dir: Path, base_url: str) -> None:
        self._dir = store_dir
        self._base_url = base_url.rstrip("/")
        self._index: StoreIndex | None = None

    @property
    def base_url(self) -> str:
        return self._base_url

    def lookup(self, name: str) -> StoreModel | None:
        if self._index is None:
            if not (self._dir / INDEX_FILE).is_file():
                return None  # nothing added yet: every name is unknown
            self._index = StoreIndex(self._dir, create=False)
        found = self._index.find(name)
        if found is None:
            return None
        file = self._index.file_path(found.sha256)
        return StoreModel(found.name, found.sha256, found.size_bytes, file)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None


def unknown_model(name: str) -> str:
    """Why an entry naming `name` cannot be placed, and what to do about it."""
    return f"model {name} is not in the store: llamaherd models add FILE --name {name}"


def holds_file(node: Node, sha256: str) -> bool:
    """Whether the node reports a verified copy of the file in its store dir."""
    return any(f.sha256 == sha256 for f in node.status.stored_files)


def files_port(node: Node) -> int | None:
    """The port of the node's HTTP server serving /v1/store/files (None: it serves none)."""
    port = node.status.files_port
    return port if port else None


def file_url(base_url: str, sha256: str) -> str:
    return base_url.rstrip("/") + FILES_PATH + sha256


def peer_urls(sha256: str, target: Node, nodes: Sequence[Node]) -> list[str]:
    """URLs of the up nodes other than `target` that hold the file and serve it: those on
    the target's own network first (the same IPv4 /24 or IPv6 /64; host names are not
    guessed at), then the least busy (fewest requests in their models, then fewest
    downloads of their own), then by node id."""
    target_host = split_host_port(target.address)[0]
    holders = [
        (node, port)
        for node in nodes
        if node.up
        and node.node_id != target.node_id
        and holds_file(node, sha256)
        and (port := files_port(node)) is not None
    ]

    def order(item: tuple[Node, int]) -> tuple[bool, int, int, NodeId]:
        node = item[0]
        busy = sum(r.engine.load for r in node.replicas)
        fetching = sum(1 for r in node.replicas if r.download is not None)
        near = _same_network(split_host_port(node.address)[0], target_host)
        return (not near, busy, fetching, node.node_id)

    holders.sort(key=order)
    return [
        file_url(f"http://{_url_host(split_host_port(node.address)[0])}:{port}", sha256)
        for node, port in holders
    ]


def source_for(
    model: StoreModel, target: Node, nodes: Sequence[Node], base_url: str
) -> ModelSource:
    """Where `target` fetches the model: peers that hold it first, the store last."""
    urls = (*peer_urls(model.sha256, target, nodes), file_url(base_url, model.sha256))
    return ModelSource(name=model.name, sha256=model.sha256, size_bytes=model.size_bytes, urls=urls)


def disk_refusal(model: StoreModel, disk_free: int | None) -> str | None:
    """Why a node with `disk_free` bytes on its model dir's filesystem cannot fetch the
    file, or None when it can."""
    if disk_free is None:
        return "does not report its model disk's free space (a worker older than the store)"
    need = model.size_bytes + DISK_MARGIN_BYTES
    if need > disk_free:
        return (
            f"needs {model.size_bytes} bytes of disk for the file (+{DISK_MARGIN_BYTES} "
            f"spare), has {disk_free} free"
        )
    return None


def download_seconds(size_bytes: int, bytes_per_second: float) -> float:
    """Expected time to fetch the file at the given rate."""
    return size_bytes / bytes_per_second if bytes_per_second > 0 else float("inf")


def estimate_from_file(path: Path, config: ModelConfig) -> MemoryEstimate:
    """What loading `config` needs, read from the store's copy of its file: the worker's own
    estimate (common.estimate), sized for the most slots it may give the model (it gives
    fewer when memory is short, never more). Reads only the file's metadata."""
    gguf = read_gguf(path)
    shape = ModelShape.from_gguf(gguf)
    n_ctx = context_for(config, shape)
    if n_ctx is None:
        raise InvalidModelFile(
            f"n_ctx is 0 (use the model's) but {path} declares no context length"
        )
    n_parallel = most_slots(config)
    estimate = estimate_memory(gguf, shape, n_ctx, config.n_batch, config.embedding, n_parallel)
    return estimate.without_layers(config.layers_on_rpc(shape.n_layer))


def _same_network(host: str, other: str) -> bool:
    try:
        a, b = ipaddress.ip_address(host), ipaddress.ip_address(other)
    except ValueError:
        return False  # host names: no guess at nearness
    if a.version != b.version:
        return False
    prefix = 24 if a.version == 4 else 64
    return ipaddress.ip_network(f"{a}/{prefix}", strict=False) == ipaddress.ip_network(
        f"{b}/{prefix}", strict=False
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
