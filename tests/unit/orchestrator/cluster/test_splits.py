"""The layer spans of split models as data: the head's layers first, then each RPC
server's, on the node that lends it (the endpoint when no node does)."""

from __future__ import annotations

from common.memory import MemoryEstimate
from common.status import ModelStatus, NodeStatus
from orchestrator.cluster.splits import Span, Split, cluster_splits, layers_text
from tests.unit.orchestrator.factories import lease, replica, rpc_node

SERVERS = ("10.0.0.2:50100", "10.0.0.3:50100")


def head(n_layers: int, n_gpu_layers: int, shares: tuple[float, ...] = (1.0, 1.0)) -> ModelStatus:
    estimate = MemoryEstimate(0, 0, 0, n_layers=n_layers) if n_layers else None
    return replica(
        "big", rpc_servers=SERVERS, tensor_split=shares, n_gpu_layers=n_gpu_layers,
        estimate=estimate,
    )  # fmt: skip


def cluster(model: ModelStatus) -> list[NodeStatus]:
    return [
        rpc_node("node-a", model).status,
        rpc_node("node-b", leases=(lease("big", "node-a", SERVERS[0]),)).status,
        rpc_node("node-c", leases=(lease("big", "node-a", SERVERS[1]),)).status,
    ]


def test_a_split_lists_the_heads_layers_then_each_lenders() -> None:
    (split,) = cluster_splits(cluster(head(27, 18)))
    assert split == Split(
        "big", "node-a", 27,
        (
            Span("node-a", "head", "", 0, 9),
            Span("node-b", "rpc", SERVERS[0], 9, 9),
            Span("node-c", "rpc", SERVERS[1], 18, 9),
        ),
    )  # fmt: skip


def test_uneven_shares_follow_tensor_split() -> None:
    (split,) = cluster_splits(cluster(head(10, 8, (7.0, 1.0))))
    assert [(s.first, s.count) for s in split.spans] == [(0, 2), (2, 7), (9, 1)]


def test_without_a_layer_count_only_how_many_is_known() -> None:
    (split,) = cluster_splits(cluster(head(0, 18)))
    assert split.n_layers is None
    assert [(s.first, s.count) for s in split.spans] == [(None, None), (None, 9), (None, 9)]


def test_an_endpoint_no_node_lends_is_named_by_itself() -> None:
    (split,) = cluster_splits([rpc_node("node-a", head(27, 18)).status])
    assert [s.node for s in split.spans] == ["node-a", *SERVERS]


def test_models_that_are_not_split_have_no_spans() -> None:
    assert cluster_splits([rpc_node("node-a", replica("small")).status]) == ()


def test_layer_text() -> None:
    assert layers_text(0, 9) == "layers 0-8"
    assert layers_text(9, 1) == "layer 9"
    assert layers_text(None, 9) == "9 layers"
    assert layers_text(None, 1) == "1 layer"
    assert layers_text(None, None) == "the first layers"
    assert layers_text(3, 0) == "no layers"
