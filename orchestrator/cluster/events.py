"""What changed in the cluster between two snapshots, as events a person reads: a node
joined, went down (and why), came back or was forgotten; a model started loading or
downloading, became ready, failed (with the error), drained or was unloaded; a split's
layout changed; placement could not place a model, or now can; a registration was refused.

Pure: `diff(before, after)` compares two snapshots and returns the events in a stable order
(nodes by id, then placement, then refusals). Wall time and sequence numbers are stamped by
the caller (orchestrator.dashboard), which keeps the recent ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from common.status import ModelState, ModelStatus
from orchestrator.cluster.splits import Split, cluster_splits, layers_text
from orchestrator.cluster.types import ClusterSnapshot, Node

Level = Literal["info", "warning", "error"]


@dataclass(frozen=True)
class ClusterEvent:
    """One change. `node` and `model` are None where the event concerns none."""

    kind: str
    level: Level
    node: str | None
    model: str | None
    message: str


# A replica entering one of these states is an event of this kind and level; UNLOADING is
# not one: the replica's disappearance is (model_unloaded).
_STATE_EVENTS: dict[ModelState, tuple[str, Level, str]] = {
    ModelState.LOADING: ("model_loading", "info", "{model} is loading on {node}"),
    ModelState.DOWNLOADING: ("model_downloading", "info", "{model} is downloading to {node}"),
    ModelState.READY: ("model_ready", "info", "{model} is ready on {node}"),
    ModelState.DRAINING: ("model_draining", "info", "{model} is draining on {node}"),
    ModelState.FAILED: ("model_failed", "error", "{model} failed on {node}"),
}


def diff(before: ClusterSnapshot, after: ClusterSnapshot) -> list[ClusterEvent]:
    """The events that lead from `before` to `after`."""
    events: list[ClusterEvent] = []
    old_nodes = {n.node_id: n for n in before.nodes}
    new_nodes = {n.node_id: n for n in after.nodes}
    for node_id in sorted(old_nodes.keys() | new_nodes.keys()):
        events.extend(_node_events(old_nodes.get(node_id), new_nodes.get(node_id)))
    events.extend(_split_events(before, after))
    events.extend(_placement_events(before, after))
    events.extend(_refusal_events(before, after))
    return events


def _node_events(old: Node | None, new: Node | None) -> Iterable[ClusterEvent]:
    if new is None:
        assert old is not None
        yield ClusterEvent(
            "node_forgotten", "info", old.node_id, None,
            f"{old.node_id} was forgotten (down too long: {old.down_reason or 'no reason'})",
        )  # fmt: skip
        return
    node = new.node_id
    if old is None:
        hw = new.hardware
        yield ClusterEvent(
            "node_joined", "info", node, None,
            f"{node} joined ({hw.kind}, {new.address}, {_models(len(new.replicas))})",
        )  # fmt: skip
        if not new.up:
            yield _down(new)
    elif old.up and not new.up:
        yield _down(new)
    elif not old.up and new.up:
        yield ClusterEvent("node_back", "info", node, None, f"{node} is back")
    yield from _replica_events(node, old.replicas if old is not None else (), new.replicas)


def _models(count: int) -> str:
    return "1 model" if count == 1 else f"{count} models"


def _down(node: Node) -> ClusterEvent:
    reason = node.down_reason or "no reason given"
    return ClusterEvent(
        "node_down", "warning", node.node_id, None, f"{node.node_id} is down: {reason}"
    )


def _replica_events(
    node: str, old: tuple[ModelStatus, ...], new: tuple[ModelStatus, ...]
) -> Iterable[ClusterEvent]:
    was = {m.alias: m for m in old}
    now = {m.alias: m for m in new}
    for alias in sorted(was.keys() | now.keys()):
        before, after = was.get(alias), now.get(alias)
        if after is None:
            yield ClusterEvent(
                "model_unloaded", "info", node, alias, f"{alias} was unloaded from {node}"
            )
            continue
        if before is not None and before.state is after.state:
            if after.state is ModelState.FAILED and after.error != before.error:
                yield _state_event(node, after)  # failed again, for another reason
            continue
        if after.state in _STATE_EVENTS:
            yield _state_event(node, after)


def _state_event(node: str, replica: ModelStatus) -> ClusterEvent:
    kind, level, template = _STATE_EVENTS[replica.state]
    message = template.format(model=replica.alias, node=node)
    if replica.state is ModelState.FAILED:
        message += f": {replica.error or 'no error reported'}"
    return ClusterEvent(kind, level, node, replica.alias, message)


def _split_events(before: ClusterSnapshot, after: ClusterSnapshot) -> Iterable[ClusterEvent]:
    """A split whose layout is new or changed: other nodes, endpoints or layer ranges. The
    head reports its layer count only once it has read the file, so a split is announced
    when its ranges are known (an event naming "the first layers" tells nobody much)."""
    old = {(s.model, s.head): s for s in cluster_splits([n.status for n in before.nodes])}
    for split in cluster_splits([n.status for n in after.nodes]):
        if split.n_layers is None:
            continue
        previous = old.get((split.model, split.head))
        if previous is not None and previous.n_layers is not None and previous.spans == split.spans:
            continue
        yield ClusterEvent("split_planned", "info", split.head, split.model, split_text(split))


def split_text(split: Split) -> str:
    """`gemma-split on host0 (layers 0-8), host1 (layers 9-17)`."""
    return f"{split.model} on " + ", ".join(
        f"{span.node} ({layers_text(span.first, span.count)})" for span in split.spans
    )


def _placement_events(before: ClusterSnapshot, after: ClusterSnapshot) -> Iterable[ClusterEvent]:
    old = {p.alias: p.reason for p in before.problems}
    new = {p.alias: p.reason for p in after.problems}
    for alias in sorted(old.keys() | new.keys()):
        if alias not in new:
            yield ClusterEvent(
                "placement_resolved", "info", None, alias, f"{alias} can be placed again"
            )
        elif old.get(alias) != new[alias]:
            yield ClusterEvent(
                "placement_problem", "warning", None, alias, f"{alias} not placed: {new[alias]}"
            )


def _refusal_events(before: ClusterSnapshot, after: ClusterSnapshot) -> Iterable[ClusterEvent]:
    """One event per refusal newer than `before`'s. A registry that restarted numbers its
    refusals from 1 again: then every refusal `after` carries is new."""
    seen = max((r.seq for r in before.refusals), default=0)
    latest = max((r.seq for r in after.refusals), default=0)
    if latest < seen:
        seen = 0
    for refusal in after.refusals:
        if refusal.seq <= seen:
            continue
        claimed = f"node id {refusal.node_id}" if refusal.node_id else "a worker"
        yield ClusterEvent(
            "registration_refused", "warning", refusal.node_id or None, None,
            f"registration refused for {claimed} from {refusal.peer or 'an unknown peer'}: "
            f"{refusal.reason}",
        )  # fmt: skip
