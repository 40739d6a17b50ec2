"""The status model: what a node and each model it hosts are doing now.

Produced by the worker (its registry and engine), sent in every heartbeat, and consumed
unchanged by the coordinator's cluster state, routing, placement, `llamaherd status`,
`/metrics` and the JSON APIs. One type per concept; their wire form is in
common.wire.status, their JSON form is these dataclasses serialised as they are.

A new model state is one member of ModelState plus its proto enum value (worker.proto
ModelState, same name): routing serves only READY, placement counts LOADING, DOWNLOADING
and READY as holding the model, and everything else reads the state by name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from common.hardware import HardwareInfo
from common.leases import Lease
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig
from common.telemetry import NodeSample


class ModelState(str, enum.Enum):
    LOADING = "loading"
    DOWNLOADING = "downloading"  # its file is being fetched to the node
    READY = "ready"  # the only state that takes new requests
    DRAINING = "draining"  # finishing its requests in flight, taking no new ones
    UNLOADING = "unloading"
    FAILED = "failed"  # could not be loaded, or lost while serving (error says why)

    @property
    def holds(self) -> bool:
        """The node has, or is getting, this model: placement counts it as placed."""
        return self in (ModelState.LOADING, ModelState.DOWNLOADING, ModelState.READY)


# The most prefix hashes a model reports: a few slots' chains (common.prefix.DEPTHS each),
# few enough that a heartbeat of many models stays small.
MAX_PREFIX_HASHES = 64


@dataclass(frozen=True)
class EngineFigures:
    """A hosted model's engine: its load now and its recent speed."""

    slots_total: int = 0  # sequences decoded together (n_parallel as resolved)
    queued: int = 0  # waiting for a free slot
    active: int = 0  # in a slot: prefilling or generating
    cached_tokens: int = 0  # held in the slots' KV caches, reusable as prefixes
    decode_tps: float = 0.0  # recent per-sequence decode rate; 0 = not measured yet
    prompt_tps: float = 0.0  # recent prefill rate; 0 = not measured yet
    completed: int = 0  # requests finished since the model was loaded
    # Prefix hashes (common.prefix) of what the slots' caches hold, most recent first, at
    # most MAX_PREFIX_HASHES: prefix-aware routing matches requests against them.
    prefix_hashes: tuple[int, ...] = ()

    @property
    def load(self) -> int:
        """Requests the model holds: waiting plus running."""
        return self.queued + self.active


@dataclass(frozen=True)
class DownloadProgress:
    """A model's file on its way to the node (state DOWNLOADING)."""

    bytes_done: int = 0
    bytes_total: int = 0
    bytes_per_second: float = 0.0  # recent rate; 0 = not measured yet (or waiting its turn)
    eta_s: float = 0.0  # seconds left at that rate; 0 = unknown
    source: str = ""  # host:port being fetched from
    attempt: int = 0  # 1 for the first try; 0 = waiting for a download slot

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 0.0


@dataclass(frozen=True)
class StoredFile:
    """A verified store file in a worker's store dir, which it serves to its peers."""

    sha256: str
    size_bytes: int
    name: str = ""  # the store name it was fetched as; empty when not known


@dataclass(frozen=True)
class ModelStatus:
    """One model on one node, as its worker sees it now."""

    alias: str
    config: ModelConfig  # as resolved by the worker, its defaults filled in
    state: ModelState
    error: str = ""  # why a FAILED model failed
    architecture: str = ""  # general.architecture, e.g. gemma3
    file_bytes: int = 0
    n_ctx_train: int = 0
    estimate: MemoryEstimate | None = None  # from the GGUF metadata, before loading
    chat_template_source: str = ""  # gguf, config, chat_format:<name> or fallback:<name>
    engine: EngineFigures = field(default_factory=EngineFigures)
    download: DownloadProgress | None = None  # set while its file is being fetched

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def memory_bytes(self) -> int:
        """What the worker reserved for it (its estimate's total)."""
        return self.estimate.total_bytes if self.estimate is not None else 0


@dataclass(frozen=True)
class NodeStatus:
    """A node as its worker reports it in each heartbeat: stateless, complete every time."""

    node_id: str  # stable name of the node (default: hostname:port)
    address: str  # host:port where the node's Worker service is reachable
    hardware: HardwareInfo
    models: tuple[ModelStatus, ...] = ()
    memory_free: int = 0  # what models may still use on this node
    version: str = ""  # llamaherd version of the worker
    telemetry: NodeSample | None = None  # the latest sample; None until the first
    leases: tuple[Lease, ...] = ()  # devices this node lends to split models' heads
    stored_files: tuple[StoredFile, ...] = ()  # verified store files it holds and serves
    model_disk_free_bytes: int | None = None  # free on the first model dir's filesystem
    # Port of its HTTP server serving stored_files at /v1/store/files/<sha256>, on the host
    # of `address`; None = it serves none (metrics off).
    files_port: int | None = None

    def model(self, alias: str) -> ModelStatus | None:
        return next((m for m in self.models if m.alias == alias), None)
