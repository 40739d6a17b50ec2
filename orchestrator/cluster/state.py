"""The coordinator's soft state of the cluster: nodes as their heartbeats last described them.

Pure bookkeeping, driven by events with the time passed in: a report, a closed heartbeat
stream, the passing of time. Nothing here survives a coordinator restart, and nothing needs
to: every worker's next report carries its full state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId, PlacementProblem


@dataclass
class _Tracked:
    node: Node
    stream: int  # the heartbeat stream that owns this node id
    down_since: float | None = None


class NodeConflict(ValueError):
    """Another live worker already reports under this node id."""


class ClusterState:
    def __init__(self, down_after_s: float, forget_after_s: float) -> None:
        self._down_after_s = down_after_s
        self._forget_after_s = forget_after_s
        self._nodes: dict[NodeId, _Tracked] = {}
        self._problems: tuple[PlacementProblem, ...] = ()
        self.version = 0

    def report(self, node: Node, stream: int) -> None:
        """Records a heartbeat. A second live stream for the same node id is refused unless
        it comes from the same address (the worker restarted before its old stream closed)."""
        tracked = self._nodes.get(node.node_id)
        if (
            tracked is not None
            and tracked.stream != stream
            and tracked.node.up
            and tracked.node.address != node.address
        ):
            raise NodeConflict(
                f"node id {node.node_id!r} is already registered from {tracked.node.address}; "
                "give each worker its own node_id"
            )
        self._nodes[node.node_id] = _Tracked(node, stream)
        self.version += 1

    def disconnected(self, node_id: NodeId, stream: int, now: float, reason: str) -> None:
        """The node's heartbeat stream ended: it leaves routing now, not after a timeout."""
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

    def set_problems(self, problems: tuple[PlacementProblem, ...]) -> None:
        if problems != self._problems:
            self._problems = problems
            self.version += 1

    def snapshot(self, now: float) -> ClusterSnapshot:
        nodes = tuple(sorted((t.node for t in self._nodes.values()), key=lambda n: n.node_id))
        return ClusterSnapshot(self.version, now, nodes, self._problems)

    def _mark_down(self, tracked: _Tracked, now: float, reason: str) -> None:
        tracked.node = dataclasses.replace(tracked.node, up=False, down_reason=reason)
        tracked.down_since = now
        self.version += 1
