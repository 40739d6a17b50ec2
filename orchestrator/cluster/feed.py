"""Cluster snapshots to their readers (the gateways, placement) at fleet scale.

At 10,000 nodes a whole snapshot pickles to about 10 MB and every heartbeat changes it, so
sending each reader the whole snapshot on every change does not hold (tests/bench/
simulate_fleet.py). Three things keep a reader's copy fresh for much less:

- **Publication**: the registry publishes a snapshot at most once per interval (the first
  change after a quiet spell at once), and every reader follows the same publications, so
  an update is built and encoded once and shared by all the readers at the same version.
- **Deltas**: a reader at a recently published version gets the nodes added or changed
  since then and the ids of those removed (a node is a new value whenever its worker
  reports or its liveness changes, so changed means "not the same object"); the small
  parts (problems, refusals, capacities) travel whole. A new reader, one too far behind,
  or one that followed another registry (a restart: another `epoch`) gets the whole
  snapshot.
- **Decoding with the garbage collector paused**: unpickling a snapshot makes hundreds of
  thousands of objects and the collector walked them over and over, about 80% of the
  time; none of them is garbage yet, and the snapshot they replace is freed by reference
  counting, not by the collector.

Liveness is unchanged: a node marked down or forgotten by the registry is a change like
any other, published within one interval.
"""

from __future__ import annotations

import collections
import pickle
import secrets
from dataclasses import dataclass

from common.collector import collector_paused
from orchestrator.cluster.capacity import CapacityRecord
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId, PlacementProblem, Refusal

HISTORY = 16  # publications a delta can start from; a reader further behind gets it whole


@dataclass(frozen=True)
class SnapshotUpdate:
    """What a reader at `base` needs to hold the snapshot of `version`.

    `base` None: a whole snapshot (`nodes` is every node). Otherwise `nodes` are the nodes
    added or changed since `base` and `removed` the ids of those gone; the rest is whole."""

    epoch: str  # the publishing feed's; another epoch is another registry's versions
    version: int
    base: int | None
    taken_at: float
    nodes: tuple[Node, ...]
    removed: tuple[NodeId, ...] = ()
    problems: tuple[PlacementProblem, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    capacities: tuple[CapacityRecord, ...] = ()


class StaleUpdate(ValueError):
    """A delta for a version other than the one the reader holds."""


def encode(update: SnapshotUpdate) -> bytes:
    return pickle.dumps(update, protocol=pickle.HIGHEST_PROTOCOL)


def decode(blob: bytes) -> SnapshotUpdate:
    """The update in `blob` (from encode: the registry's own bytes, never a worker's)."""
    with collector_paused():
        update = pickle.loads(blob)  # the registry actor's own bytes, over Ray
    if not isinstance(update, SnapshotUpdate):
        raise TypeError(f"not a snapshot update: {type(update).__name__}")
    return update


def apply(current: ClusterSnapshot | None, update: SnapshotUpdate) -> ClusterSnapshot:
    """The snapshot `update` describes, built on `current` for a delta (StaleUpdate when
    `current` is not the snapshot of its base version). Always a new snapshot, so what
    readers derive from one (ClusterSnapshot.holders, .memo) is never carried over."""
    if update.base is None:
        nodes = update.nodes
    else:
        if current is None or current.version != update.base:
            held = "nothing" if current is None else f"version {current.version}"
            raise StaleUpdate(f"a delta from version {update.base} reached a reader of {held}")
        by_id = {node.node_id: node for node in current.nodes}
        for node_id in update.removed:
            by_id.pop(node_id, None)
        for node in update.nodes:
            by_id[node.node_id] = node
        nodes = tuple(sorted(by_id.values(), key=lambda n: n.node_id))
    return ClusterSnapshot(
        update.version, update.taken_at, nodes, update.problems, update.refusals, update.capacities
    )


class SnapshotFeed:
    """The registry's side: the published snapshots and what changed between them.

    Keeps, rather than old snapshots (each would keep a fleet's worth of replaced nodes
    alive), the version at which each node last changed and the ids removed within the
    last `history` publications."""

    def __init__(self, epoch: str | None = None, history: int = HISTORY) -> None:
        self.epoch = epoch or secrets.token_hex(8)
        self.latest: ClusterSnapshot | None = None
        self._changed_at: dict[NodeId, int] = {}  # node -> version that last changed it
        self._removed: dict[NodeId, int] = {}  # node -> version that removed it
        self._versions: collections.deque[int] = collections.deque(maxlen=history)
        self._encoded: dict[int | None, bytes] = {}  # base (None: whole) -> latest's update

    def publish(self, snapshot: ClusterSnapshot) -> None:
        """Makes `snapshot` the latest; its version must exceed the previous one's."""
        if self.latest is not None and snapshot.version <= self.latest.version:
            raise ValueError(
                f"version {snapshot.version} published after version {self.latest.version}"
            )
        before = {node.node_id: node for node in self.latest.nodes} if self.latest else {}
        version = snapshot.version
        for node in snapshot.nodes:
            if before.pop(node.node_id, None) is not node:
                self._changed_at[node.node_id] = version
                self._removed.pop(node.node_id, None)
        for node_id in before:  # the nodes the new snapshot no longer has
            del self._changed_at[node_id]
            self._removed[node_id] = version
        self._versions.append(version)
        oldest = self._versions[0]
        self._removed = {n: v for n, v in self._removed.items() if v > oldest}
        self.latest = snapshot
        self._encoded.clear()

    def update(self, epoch: str, since: int) -> SnapshotUpdate:
        """What a reader holding version `since` of `epoch` needs to hold the latest."""
        latest = self.latest
        if latest is None:
            raise LookupError("nothing has been published yet")
        base: int | None = since if epoch == self.epoch and since in self._versions else None
        if base is None:
            nodes = latest.nodes
            removed: tuple[NodeId, ...] = ()
        else:
            nodes = tuple(n for n in latest.nodes if self._changed_at[n.node_id] > base)
            removed = tuple(sorted(n for n, v in self._removed.items() if v > base))
        return SnapshotUpdate(
            self.epoch, latest.version, base, latest.taken_at, nodes, removed,
            latest.problems, latest.refusals, latest.capacities,
        )  # fmt: skip

    def encoded(self, epoch: str, since: int) -> bytes:
        """update(epoch, since), encoded once per publication and base for every reader."""
        base = since if epoch == self.epoch and since in self._versions else None
        blob = self._encoded.get(base)
        if blob is None:
            blob = self._encoded[base] = encode(self.update(epoch, since))
        return blob


class SnapshotFollower:
    """A reader's side: its copy of the cluster, kept by the feed's updates."""

    def __init__(self) -> None:
        self.snapshot: ClusterSnapshot | None = None
        self.epoch = ""

    def since(self) -> tuple[str, int]:
        """The (epoch, version) to ask the feed for an update from."""
        return self.epoch, self.snapshot.version if self.snapshot is not None else -1

    def take(self, blob: bytes) -> ClusterSnapshot:
        """The snapshot after the encoded update `blob`. An update that changes nothing
        gives back the same snapshot object (and what readers derived from it)."""
        update = decode(blob)
        current = self.snapshot if update.epoch == self.epoch else None
        if current is not None and update.base == current.version == update.version:
            return current
        try:
            snapshot = apply(current, update)
        except StaleUpdate:
            self.snapshot, self.epoch = None, ""  # the next update is a whole snapshot
            raise
        self.snapshot, self.epoch = snapshot, update.epoch
        return snapshot
