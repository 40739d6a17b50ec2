"""Which nodes may serve a request for a model now, and why each other node may not.

A pure filter over a ClusterSnapshot: the gateway passes the snapshot, the clock reading,
its own in-flight counts and the nodes that already failed this request; it gets back the
eligible candidates and a Rejection for every other node. route() then hands the request
and the candidates to the routing policy. The rejections are what a client
reads when nothing can serve it, so each one names its cause precisely.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.hardware import HardwareInfo
from common.memory import format_bytes
from common.status import DownloadProgress, ModelState, ModelStatus
from common.telemetry import NodeSample
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId
from orchestrator.routing.request import RouteRequest, Task

if TYPE_CHECKING:  # policies import Candidate from here: avoid the import cycle at run time
    from orchestrator.routing.policies import RoutingPolicy

ALREADY_FAILED = "already failed this request"
NOT_LOADED = "model not loaded"
EMBEDDINGS_ONLY = "serves embeddings only"
OVERLOADED = "overloaded: "


@dataclass(frozen=True)
class Candidate:
    """A node that holds the model READY and can take one more request for it."""

    node_id: NodeId
    address: str
    hardware: HardwareInfo
    replica: ModelStatus
    inflight: int = 0  # requests this gateway is relaying to that node for that model now
    telemetry: NodeSample | None = None  # the node's latest sample (heat, power); None: none

    @property
    def load(self) -> int:
        """Requests the node holds for the model, the best we know.

        The reported load is up to a heartbeat stale but covers every gateway; the local
        count is fresh but covers this gateway only. Either is a lower bound, so take the
        larger.
        """
        return max(self.replica.engine.load, self.inflight)

    @property
    def load_per_slot(self) -> float:
        """Load spread over the replica's decoding slots."""
        return self.load / max(self.replica.engine.slots_total, 1)


@dataclass(frozen=True)
class Rejection:
    """A node that cannot take the request, and why. `overloaded`: only because its queue
    for the model is full, so the same request may succeed there moments later."""

    node_id: NodeId
    reason: str
    overloaded: bool = False


class UnknownModel(Exception):
    """No node reports the model in any state: the client named a model nobody serves."""

    def __init__(self, alias: str, available: list[str]) -> None:
        self.alias = alias
        self.available = available  # sorted aliases some node reports, in any state
        listed = ", ".join(available) if available else "none"
        super().__init__(f"model {alias!r} is not served; models: {listed}")


class NoCandidate(Exception):
    """Some node knows the model, but none can take this request now."""

    def __init__(self, alias: str, rejections: tuple[Rejection, ...]) -> None:
        self.alias = alias
        self.rejections = rejections
        reasons = "; ".join(f"{r.node_id}: {r.reason}" for r in rejections) or "no workers"
        super().__init__(f"no worker can serve model {alias!r} now: {reasons}")

    @property
    def overloaded(self) -> bool:
        """Whether some replica would take the request once its queue drains: the client
        should come back later (429), rather than the cluster being unable to serve (503)."""
        return any(r.overloaded for r in self.rejections)


def candidates_for(
    snapshot: ClusterSnapshot,
    alias: str,
    *,
    now: float,
    inflight: Mapping[tuple[NodeId, str], int] | None = None,
    exclude: Collection[NodeId] = (),
    task: Task | None = None,
) -> tuple[list[Candidate], list[Rejection]]:
    """Splits the snapshot's nodes into candidates for `alias` and rejections.

    `now` is on the clock of the snapshot's report times. `inflight` holds this gateway's
    running requests per (node, alias); `exclude` the nodes that already failed this
    request; `task` the kind of replica wanted (None: either). Both lists follow node id
    order, so the same inputs always give the same outputs.
    """
    counts = inflight or {}
    candidates: list[Candidate] = []
    rejections: list[Rejection] = []
    for node in sorted(snapshot.nodes, key=lambda n: n.node_id):
        local = counts.get((node.node_id, alias), 0)
        reason = _rejection_reason(node, alias, now=now, inflight=local, exclude=exclude, task=task)
        if reason is not None:
            overloaded = reason.startswith(OVERLOADED)
            rejections.append(Rejection(node.node_id, reason, overloaded))
            continue
        replica = node.replica(alias)
        assert replica is not None  # _rejection_reason refuses nodes without it
        candidates.append(
            Candidate(
                node_id=node.node_id,
                address=node.address,
                hardware=node.hardware,
                replica=replica,
                inflight=local,
                telemetry=node.telemetry,
            )
        )
    return candidates, rejections


def route(
    snapshot: ClusterSnapshot,
    request: RouteRequest,
    *,
    now: float,
    policy: RoutingPolicy,
    inflight: Mapping[tuple[NodeId, str], int] | None = None,
    exclude: Collection[NodeId] = (),
) -> Candidate:
    """The candidate `policy` picks for `request` among the replicas of its alias that
    serve its task.

    Raises UnknownModel when no node reports the alias at all (a wrong name, most likely)
    and NoCandidate, with every node's reason, when nodes know it but none can serve now.
    """
    alias = request.alias
    holders = snapshot.holders.get(alias, ())
    if not holders:
        raise UnknownModel(alias, known_aliases(snapshot))
    # Every other node is rejected as NOT_LOADED, so the candidates come from the holders
    # alone (in the same node id order); every node's reason is needed only for the error.
    candidates, _ = candidates_for(
        dataclasses.replace(snapshot, nodes=holders), alias,
        now=now, inflight=inflight, exclude=exclude, task=request.task,
    )  # fmt: skip
    if not candidates:
        _, rejections = candidates_for(
            snapshot, alias, now=now, inflight=inflight, exclude=exclude, task=request.task
        )
        raise NoCandidate(alias, tuple(rejections))
    return policy.choose(request, candidates)


def known_aliases(snapshot: ClusterSnapshot) -> list[str]:
    """Every alias some node reports, in any state, down nodes included, sorted."""
    return sorted({r.alias for node in snapshot.nodes for r in node.replicas})


def _rejection_reason(
    node: Node,
    alias: str,
    *,
    now: float,
    inflight: int,
    exclude: Collection[NodeId],
    task: Task | None,
) -> str | None:
    """Why `node` cannot take a request for `alias`, or None when it can.

    Checks run from the node outward to the replica: a down node's last report says
    nothing reliable about its models, and a node that failed this request is not retried
    whatever it reports.
    """
    if not node.up:
        return "down: " + (node.down_reason or f"last report {now - node.last_report:.1f} s ago")
    if node.node_id in exclude:
        return ALREADY_FAILED
    replica = node.replica(alias)
    if replica is None:
        return NOT_LOADED
    # The kind first: it is permanent, while loading or a full queue will pass.
    if task == "generate" and replica.config.embedding:
        return EMBEDDINGS_ONLY
    if replica.state is ModelState.FAILED:
        return "model failed to load: " + (replica.error or "no error reported")
    if replica.download is not None and replica.state is ModelState.DOWNLOADING:
        return "model downloading: " + _progress(replica.download)
    if not replica.ready:
        return f"model {replica.state.value}"  # loading, downloading, draining, unloading
    return _overload_reason(replica, inflight)


def _progress(download: DownloadProgress) -> str:
    """How far a download is, for a client told to come back later."""
    if download.attempt == 0:
        return f"waiting for a download slot ({format_bytes(download.bytes_total)})"
    done = f"{format_bytes(download.bytes_done)} of {format_bytes(download.bytes_total)}"
    return done + (f", about {download.eta_s:.0f} s left" if download.eta_s > 0 else "")


def _overload_reason(replica: ModelStatus, inflight: int) -> str | None:
    """Why the worker would refuse one more request for this replica, or None.

    The worker refuses a request when the model is busy (every slot running or someone
    already waiting) and `max_queue` requests wait. So max_queue 0 means "no waiting",
    not "no limit": a busy replica is full. This gateway's own in-flight count adds a
    fresher lower bound on the waiting line than the last heartbeat: of `inflight`
    requests at the node, at most `slots_total` run.
    """
    slots = max(replica.engine.slots_total, 1)
    load = max(replica.engine.load, inflight)
    waiting = max(replica.engine.queued, load - slots)
    busy = waiting > 0 or load >= slots
    if not busy or waiting < replica.config.max_queue:
        return None
    if replica.config.max_queue == 0:
        return OVERLOADED + "busy, and max_queue 0 lets no request wait"
    noun = "request" if waiting == 1 else "requests"
    return OVERLOADED + f"{waiting} {noun} waiting (max_queue {replica.config.max_queue})"
