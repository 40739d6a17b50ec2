"""The RPC leases helpers hold for split models: their names, and which ones to stop.

A lease is named "<alias>@<head node id>". Aliases cannot contain "@", so any node's
report says which model and which head each of its leases serves, and the coordinator
needs no memory of the leases it started to tidy them up after a restart.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from common.leases import Lease
from orchestrator.cluster.types import Node, NodeId
from orchestrator.placement.eligibility import HOLDING_STATES


@dataclass(frozen=True)
class StopLease:
    """Stop lease `lease_id` on `node_id`."""

    node_id: NodeId
    lease_id: str
    why: str


def lease_id(alias: str, head: NodeId) -> str:
    return f"{alias}@{head}"


def lease_owner(lease: str) -> tuple[str, NodeId] | None:
    """(alias, head) a lease id names, or None for a lease named otherwise."""
    alias, at, head = lease.partition("@")
    return (alias, NodeId(head)) if at and alias and head else None


def leases_of(alias: str, head: NodeId, nodes: Sequence[Node]) -> list[tuple[NodeId, Lease]]:
    """The leases up nodes hold for `alias` on `head`."""
    wanted = lease_id(alias, head)
    return [(n.node_id, lease) for n in nodes if n.up for lease in n.rpc_leases
            if lease.lease_id == wanted]  # fmt: skip


def orphan_leases(aliases: Collection[str], nodes: Sequence[Node]) -> list[StopLease]:
    """Leases of catalog models (`aliases`) that no head uses: the head their id names has
    no loading or ready replica of the model whose rpc_servers include the lease's endpoint.

    A lease is an orphan for a moment while its split is set up (the head loads after its
    helpers start), so callers wait a grace period before stopping one.
    """
    heads = {n.node_id: n for n in nodes if n.up}
    orphans = []
    for node in sorted(heads.values(), key=lambda n: n.node_id):
        for lease in node.rpc_leases:
            owner = lease_owner(lease.lease_id)
            if owner is None or owner[0] not in aliases:
                continue  # not ours: an operator's own split is left alone
            alias, head_id = owner
            head = heads.get(head_id)
            replica = head.replica(alias) if head is not None else None
            if (
                replica is None
                or replica.state not in HOLDING_STATES
                or lease.endpoint not in replica.config.rpc_servers
            ):
                orphans.append(StopLease(node.node_id, lease.lease_id, "no head uses it"))
    return orphans
