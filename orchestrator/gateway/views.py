"""What the gateway tells clients about the cluster, built from its current view."""

from __future__ import annotations

from llamaherd.v1 import inference_pb2 as inf_pb

from common.status import ModelStatus
from orchestrator.cluster.types import ClusterSnapshot
from orchestrator.cluster.view import ClusterView, PowerView, cluster_view
from orchestrator.gateway.router import Router
from orchestrator.routing.admission import RESUME_RATIO


def cluster_models(
    snapshot: ClusterSnapshot, created_unix_s: int = 0
) -> inf_pb.ListClusterModelsResponse:
    """Models with at least one ready replica on an up node, by alias."""
    ready: dict[str, list[tuple[str, ModelStatus]]] = {}
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
                embedding=first.config.embedding,
                n_ctx=first.config.n_ctx,
                architecture=first.architecture,
                created_unix_s=created_unix_s,
            )
        )
    return inf_pb.ListClusterModelsResponse(models=models)


def cluster_status(router: Router) -> ClusterView:
    """The cluster as this gateway sees it now; the gRPC and HTTP APIs serve it."""
    return cluster_view(
        router.snapshot, router.state_clock(), router.inflight_to, router.policy.name,
        power_view(router),
    )  # fmt: skip


def power_view(router: Router) -> PowerView | None:
    """The power budget as `router` last judged it; None without a budget."""
    budget = router.power_budget_w
    if budget is None:
        return None
    draw = router.power_draw
    return PowerView(
        budget_w=budget,
        draw_w=draw.watts,
        measured_nodes=draw.measured,
        unmeasured_nodes=draw.unmeasured,
        admitting=router.power.admitted,
        resume_below_w=RESUME_RATIO * budget,
    )
