"""What the gateway tells clients about the cluster, built from its current view."""

from __future__ import annotations

from llamaherd.v1 import inference_pb2 as inf_pb

from orchestrator.cluster.reports import node_to_proto
from orchestrator.cluster.types import ClusterSnapshot, Replica
from orchestrator.gateway.router import Router


def cluster_models(
    snapshot: ClusterSnapshot, created_unix_s: int = 0
) -> inf_pb.ListClusterModelsResponse:
    """Models with at least one ready replica on an up node, by alias."""
    ready: dict[str, list[tuple[str, Replica]]] = {}
    for node in snapshot.up_nodes:
        for replica in node.replicas:
            if replica.ready:
                ready.setdefault(replica.alias, []).append((node.node_id, replica))
    models = []
    for alias, holders in sorted(ready.items()):
        _, first = holders[0]
        models.append(
            inf_pb.ClusterModel(
                alias=alias,
                ready_replicas=len(holders),
                nodes=[node for node, _ in holders],
                embedding=first.embedding,
                n_ctx=first.n_ctx,
                architecture=first.architecture,
                created_unix_s=created_unix_s,
            )
        )
    return inf_pb.ListClusterModelsResponse(models=models)


def cluster_status(router: Router) -> inf_pb.ClusterStatusResponse:
    snapshot = router.snapshot
    now = router.state_clock()
    return inf_pb.ClusterStatusResponse(
        nodes=[node_to_proto(n, now, router.inflight_to(n.node_id)) for n in snapshot.nodes],
        placement_problems=[
            inf_pb.PlacementProblem(alias=p.alias, reason=p.reason) for p in snapshot.problems
        ],
        routing_policy=router.policy.name,
        state_version=snapshot.version,
    )
