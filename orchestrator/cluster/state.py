"""The coordinator's soft state of the cluster: nodes as their heartbeats last described them.

Pure bookkeeping, driven by events with the time passed in: a report, a closed heartbeat
stream, the passing of time. Nothing here survives a coordinator restart, and nothing needs
to: every worker's next report carries its full state.

Each node id is bound to the credential it first registered with (the digest of its node
key, common.cluster_auth): a report under that id with another credential is refused, and
only the id's current stream can take it out of routing. The binding lasts as long as the
node is tracked: while it is up, and for forget_after_s after it went down; then the id is
free again. A restarted coordinator starts with no bindings, so the first worker to report
an id after the restart owns it (every reporter already had to present the cluster token).
"""

from __future__ import annotations

import collections
import dataclasses
import hmac
from dataclasses import dataclass

from orchestrator.cluster.capacity import CapacityRecord
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId, PlacementProblem, Refusal

REFUSALS_KEPT = 32  # the latest refused registrations the snapshot carries (for dashboards)


@dataclass
class _Tracked:
    node: Node
    stream: int  # the heartbeat stream that owns this node id
    credential: bytes  # digest of the node key the id is bound to
    down_since: float | None = None


class NodeConflict(ValueError):
    """The node id is bound to another credential. The message is what the refused worker
    hears, so it says nothing about the node that holds the id; `reason` is for the
    coordinator's own records (logs, refusals)."""

    def __init__(self, reason: str = "its node id is bound to another node key") -> None:
        super().__init__("registration refused")
        self.reason = reason


class ClusterState:
    def __init__(self, down_after_s: float, forget_after_s: float) -> None:
        self._down_after_s = down_after_s
        self._forget_after_s = forget_after_s
        self._nodes: dict[NodeId, _Tracked] = {}
        self._problems: tuple[PlacementProblem, ...] = ()
        self._refusals: collections.deque[Refusal] = collections.deque(maxlen=REFUSALS_KEPT)
        self._refusal_seq = 0
        self._capacities: tuple[CapacityRecord, ...] = ()
        self.version = 0

    def report(self, node: Node, stream: int, credential: bytes) -> None:
        """Records a heartbeat from `stream`, whose worker proved `credential`.

        An id bound to another credential is refused (NodeConflict), up or down: a worker
        of another cluster or a forger cannot take it over. The same credential on a new
        stream is the worker reconnecting (it may have restarted before its old stream
        closed, or moved address): the new stream owns the id from then on."""
        tracked = self._nodes.get(node.node_id)
        if tracked is not None and not hmac.compare_digest(tracked.credential, credential):
            raise NodeConflict()
        self._nodes[node.node_id] = _Tracked(node, stream, credential)
        self.version += 1

    def owns(self, node_id: NodeId, stream: int) -> bool:
        """Whether `stream` is the current stream of `node_id`."""
        tracked = self._nodes.get(node_id)
        return tracked is not None and tracked.stream == stream

    def disconnected(self, node_id: NodeId, stream: int, now: float, reason: str) -> None:
        """The node's heartbeat stream ended: it leaves routing now, not after a timeout.
        Only its current stream counts: an older or a refused stream ending changes nothing."""
        tracked = self._nodes.get(node_id)
        if tracked is None or tracked.stream != stream or not tracked.node.up:
            return
        self._mark_down(tracked, now, reason)

    def expire(self, now: float) -> bool:
        """Marks silent nodes down and forgets long-dead ones; True when anything changed."""
        changed = False
        for node_id, tracked in list(self._nodes.items()):
            silent = now - tracked.node.last_report
            if tracked.node.up and silent > self._down_after_s:
                self._mark_down(tracked, now, f"no heartbeat for {silent:.1f} s")
                changed = True
            elif tracked.down_since is not None and now - tracked.down_since > self._forget_after_s:
                del self._nodes[node_id]
                self.version += 1
                changed = True
        return changed

    def refused(self, node_id: str, peer: str, reason: str, now: float) -> None:
        """Records a refused registration (never its key): the snapshot carries the latest
        REFUSALS_KEPT, and the version grows so that readers see it."""
        self._refusal_seq += 1
        self._refusals.append(Refusal(self._refusal_seq, now, node_id, peer, reason))
        self.version += 1

    def set_problems(self, problems: tuple[PlacementProblem, ...]) -> None:
        if problems != self._problems:
            self._problems = problems
            self.version += 1

    def set_capacities(self, records: tuple[CapacityRecord, ...]) -> None:
        """The measured capacities (orchestrator.cluster.capacity) every snapshot carries."""
        if records != self._capacities:
            self._capacities = records
            self.version += 1

    def snapshot(self, now: float) -> ClusterSnapshot:
        nodes = tuple(sorted((t.node for t in self._nodes.values()), key=lambda n: n.node_id))
        return ClusterSnapshot(
            self.version, now, nodes, self._problems, tuple(self._refusals), self._capacities
        )

    def _mark_down(self, tracked: _Tracked, now: float, reason: str) -> None:
        tracked.node = dataclasses.replace(tracked.node, up=False, down_reason=reason)
        tracked.down_since = now
        self.version += 1
