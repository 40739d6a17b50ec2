"""Whether a node may take a catalog entry at all, shared by single-node and split placement."""

from __future__ import annotations

from common.status import ModelState, ModelStatus
from orchestrator.cluster.types import Node
from orchestrator.config import CatalogEntry

HOLDING_STATES = frozenset(state for state in ModelState if state.holds)


def missing_labels(entry: CatalogEntry, node: Node) -> list[str]:
    return sorted(set(entry.labels) - node.hardware.labels)


def present_reason(replica: ModelStatus) -> str:
    """Why a node that already reports the alias takes no new load of it."""
    if replica.state in HOLDING_STATES:
        return "already holds it"
    if replica.state is ModelState.FAILED:
        # Loading again where it failed would fail again (a missing file, too little
        # memory) every round; an operator's unload clears the way.
        return "failed there: " + (replica.error or "no error reported")
    # Draining or unloading: the worker refuses a load until the unload finishes.
    return f"still {replica.state.value} it"


def node_refusal(entry: CatalogEntry, node: Node) -> str | None:
    """Why `node` takes no part in placing `entry` whatever its memory, or None."""
    replica = node.replica(entry.alias)
    if replica is not None:
        return present_reason(replica)
    missing = missing_labels(entry, node)
    if missing:
        return "lacks labels " + ", ".join(missing)
    return None
