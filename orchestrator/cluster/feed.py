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
- **Decoding in pieces**: a gateway decodes on the event loop that routes its requests,
  and half of a 10,000-node fleet took about 230 ms to decode and apply in one piece: a
  request arriving meanwhile waited that long. An update is encoded as a head and pieces
  of CHUNK_NODES nodes, each its own pickle; `SnapshotFollower.follow` decodes one piece
  at a time and lets the loop run between pieces, merges the changed nodes into its copy
  in one pass over their ids, and the reader's snapshot changes only once the whole
  update is in. The nodes an update replaced are freed a piece at a time at the start of
  the next. A thread would not help: unpickling holds the GIL throughout.

Liveness is unchanged: a node marked down or forgotten by the registry is a change like
any other, published within one interval.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import io
import operator
import pickle
import secrets
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from common.collector import collector_paused
from orchestrator.cluster.capacity import CapacityRecord
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId, PlacementProblem, Refusal

# The key of ClusterSnapshot.memo under which a snapshot made from a delta names what the
# delta changed (Changes): readers that derive state from the snapshot before (a gateway's
# Router) update it for those nodes only.
CHANGES = "cluster.feed.Changes"
HISTORY = 16  # publications a delta can start from; a reader further behind gets it whole
# Nodes per separately decoded piece of an update: 2-3 ms of decoding on the 2-core
# development VM, up to ~15 ms when it is busy (tests/bench/simulate_fleet.py, "longest
# loop hold").
CHUNK_NODES = 128

_node_id = operator.attrgetter("status.node_id")  # Node.node_id without a Python call


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


@dataclass(frozen=True)
class Changes:
    """What a delta changed: the snapshot of version `base` became this one by replacing or
    adding `nodes` (the new snapshot's own Node values) and dropping the ids `removed`
    (applied first: an id in both is in the new snapshot)."""

    base: int
    nodes: tuple[Node, ...]
    removed: tuple[NodeId, ...]


class StaleUpdate(ValueError):
    """A delta for a version other than the one the reader holds."""


@dataclass(frozen=True)
class _Head:
    """What an encoded update starts with: the update without its nodes, and how many
    pieces of nodes follow."""

    update: SnapshotUpdate
    pieces: int


def encode(update: SnapshotUpdate) -> bytes:
    """`update` as a head and then its nodes in pieces of CHUNK_NODES, one pickle each,
    one after the other: each piece is decoded on its own. A value shared by many nodes (an
    interned hardware description) is written once per piece rather than once in all:
    a pickle's memo keeps every object it read alive until it is dropped, and dropping a
    whole update's at once held the loop ~15 ms at 10,000 nodes."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    nodes = update.nodes
    starts = range(0, len(nodes), CHUNK_NODES)
    pickler.dump(_Head(dataclasses.replace(update, nodes=()), len(starts)))
    for start in starts:
        pickler.clear_memo()
        pickler.dump(nodes[start : start + CHUNK_NODES])
    return buffer.getvalue()


class _Pieces:
    """An encoded update read a piece at a time, with the collector paused for each."""

    def __init__(self, blob: bytes) -> None:
        self._buffer = io.BytesIO(blob)  # the registry actor's own bytes: never a worker's
        head = self._load()
        if not isinstance(head, _Head):
            raise TypeError(f"not a snapshot update: {type(head).__name__}")
        self.head = head.update
        self.pieces = head.pieces

    def nodes(self) -> tuple[Node, ...]:
        """The next piece's nodes."""
        nodes: tuple[Node, ...] = self._load()
        return nodes

    def _load(self) -> Any:
        with collector_paused():
            return pickle.Unpickler(self._buffer).load()  # a pickle and its own memo


def decode(blob: bytes) -> SnapshotUpdate:
    """The update in `blob` (from encode: the registry's own bytes, never a worker's),
    decoded in one go."""
    pieces = _Pieces(blob)
    nodes = tuple(node for _ in range(pieces.pieces) for node in pieces.nodes())
    return dataclasses.replace(pieces.head, nodes=nodes)


def _check_base(current: ClusterSnapshot | None, update: SnapshotUpdate) -> None:
    """StaleUpdate unless `current` is what the delta `update` starts from."""
    if update.base is not None and (current is None or current.version != update.base):
        held = "nothing" if current is None else f"version {current.version}"
        raise StaleUpdate(f"a delta from version {update.base} reached a reader of {held}")


def _merged(
    held: Sequence[Node], held_ids: list[str], update: SnapshotUpdate,
    nodes: Sequence[Node], ids: list[str],
) -> tuple[tuple[Node, ...], list[str], list[Node]]:  # fmt: skip
    """The nodes after `update` (whose nodes are `nodes`, with ids `ids`) on the nodes
    `held` (ids `held_ids`, in order), their ids, and the held nodes it replaced or removed.
    A new tuple every time, so what readers derive from a snapshot (ClusterSnapshot.holders,
    .memo) is never carried over.

    Reads no node, only the ids given: at 10,000 nodes reading each node's id again cost
    ~10-20 ms, the objects scattered over a large heap. Changed nodes keep their place in
    the dictionary, so only joined ones are out of order, and sorting an almost sorted
    sequence is one pass."""
    if update.base is None:
        return tuple(nodes), ids, list(held)
    by_id = dict(zip(held_ids, held, strict=True))
    replaced = [by_id.pop(node_id) for node_id in update.removed if node_id in by_id]
    replaced.extend(filter(None, map(by_id.get, ids)))  # nodes are never falsy
    by_id.update(zip(ids, nodes, strict=True))
    order = sorted(by_id)
    return tuple(map(by_id.__getitem__, order)), order, replaced


def _snapshot(update: SnapshotUpdate, nodes: tuple[Node, ...]) -> ClusterSnapshot:
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
        self._indexed: ClusterSnapshot | None = None  # the snapshot _ids describes
        self._ids: list[str] = []  # its nodes' ids, in order
        # The nodes the last update replaced: freed a piece at a time at the start of the
        # next one (freeing half a fleet's nodes at once held the loop ~20 ms at 10,000).
        self._replaced: list[Node] = []

    def since(self) -> tuple[str, int]:
        """The (epoch, version) to ask the feed for an update from."""
        return self.epoch, self.snapshot.version if self.snapshot is not None else -1

    def take(self, blob: bytes) -> ClusterSnapshot:
        """The snapshot after the encoded update `blob`, decoded in one go. An update that
        changes nothing gives back the same snapshot object (and what readers derived
        from it)."""
        steps = self._taking(blob)
        while (snapshot := _advance(steps)) is None:
            pass
        return snapshot

    async def follow(self, blob: bytes) -> ClusterSnapshot:
        """take(blob) on an event loop: the loop runs other tasks between the update's
        pieces, so no step holds it much longer than decoding CHUNK_NODES nodes (or
        merging them: one pass over the ids). The follower's snapshot changes at the end,
        at once; one update at a time per follower."""
        steps = self._taking(blob)
        while (snapshot := _advance(steps)) is None:
            await asyncio.sleep(0)
        return snapshot

    def _taking(self, blob: bytes) -> Generator[None, None, ClusterSnapshot]:
        """take's steps: it yields between pieces, and returns the new snapshot."""
        while self._replaced:  # the last update's, long out of every reader's snapshot
            del self._replaced[-CHUNK_NODES:]
            yield
        pieces = _Pieces(blob)
        update = pieces.head
        current = self.snapshot if update.epoch == self.epoch else None
        if current is not None and update.base == current.version == update.version:
            return current
        try:
            _check_base(current, update)
        except StaleUpdate:
            self.snapshot, self.epoch = None, ""  # the next update is a whole snapshot
            raise
        nodes: list[Node] = []
        ids: list[str] = []
        for _ in range(pieces.pieces):
            yield
            piece = pieces.nodes()
            nodes.extend(piece)
            ids.extend(map(_node_id, piece))  # now, while the piece is fresh in the cache
        yield
        held = () if current is None else current.nodes
        if self._indexed is not current:
            self._ids = [_node_id(n) for n in held]
        merged, self._ids, self._replaced = _merged(held, self._ids, update, nodes, ids)
        if current is None and self.snapshot is not None:  # another registry's, replaced
            self._replaced = list(self.snapshot.nodes)
        snapshot = self._indexed = _snapshot(update, merged)
        if current is not None and update.base is not None:
            snapshot.memo[CHANGES] = Changes(update.base, tuple(nodes), tuple(update.removed))
        self.snapshot, self.epoch = snapshot, update.epoch
        return snapshot


def _advance(steps: Generator[None, None, ClusterSnapshot]) -> ClusterSnapshot | None:
    """One step of SnapshotFollower._taking: None while it has more, else its snapshot."""
    try:
        next(steps)
    except StopIteration as done:
        snapshot: ClusterSnapshot = done.value
        return snapshot
    return None
