"""Where the layers of a split model live, as data: the head's own layers, then each RPC
server's, as llama.cpp places them. `llamaherd status` writes it as text
(orchestrator.status_table); the dashboard draws it as a bar (orchestrator.dashboard).

Pure: computed from the nodes' reports only. A split model's head reports its RPC servers
(config.rpc_servers) and its layer count (estimate.n_layers); the node that lends each
server reports the lease, which names its endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from common.layout import device_layer_counts, offloaded_layers
from common.status import ModelStatus, NodeStatus


@dataclass(frozen=True)
class LayerRange:
    """Consecutive layers: `first` is None when the model's layer count is unknown (then
    only how many is known, and for the head not even that: `count` None)."""

    first: int | None
    count: int | None


@dataclass(frozen=True)
class Span:
    """One device's share of a split model."""

    node: str  # the node holding the layers; an RPC server no node lends: its endpoint
    role: Literal["head", "rpc"]
    endpoint: str  # the RPC server's host:port; "" for the head
    first: int | None
    count: int | None


@dataclass(frozen=True)
class Split:
    """A split model on its head node: its layers' spans, the head's first."""

    model: str
    head: str
    n_layers: int | None  # None when the head has not reported it
    spans: tuple[Span, ...]


def model_layer_ranges(model: ModelStatus) -> list[LayerRange]:
    """The layers of a split model's head, then of each RPC server, as llama.cpp places
    them: the last n_gpu_layers layers over the servers in tensor_split proportions."""
    spec = model.config
    total = model.estimate.n_layers if model.estimate is not None else 0
    servers = len(spec.rpc_servers)
    offloaded = offloaded_layers(spec.n_gpu_layers, total) if total else spec.n_gpu_layers
    shares = list(spec.tensor_split[:servers])
    if len(shares) < servers or sum(shares) <= 0:
        shares = [1.0] * servers  # llama.cpp's own default is unknown here: say equal
    counts = device_layer_counts(offloaded, shares)
    if not total:  # no layer count reported: how many each server holds, not which
        return [LayerRange(None, None), *(LayerRange(None, c) for c in counts)]
    ranges, first = [LayerRange(0, total - offloaded)], total - offloaded
    for count in counts:
        ranges.append(LayerRange(first, count))
        first += count
    return ranges


def layers_text(first: int | None, count: int | None) -> str:
    """`layers 0-8`, `layer 9`, `9 layers` (which unknown), `the first layers` (the head of
    a model whose layer count is unknown) or `no layers`."""
    if count is None:
        return "the first layers"
    if count <= 0:
        return "no layers"
    if first is None:
        return "1 layer" if count == 1 else f"{count} layers"
    return f"layer {first}" if count == 1 else f"layers {first}-{first + count - 1}"


def lenders(nodes: Sequence[NodeStatus]) -> dict[str, str]:
    """The node lending each RPC endpoint, by endpoint."""
    return {lease.endpoint: node.node_id for node in nodes for lease in node.leases}


def lent_ranges(nodes: Sequence[NodeStatus]) -> dict[str, LayerRange]:
    """The layers each RPC endpoint holds, from the split models of every node."""
    held: dict[str, LayerRange] = {}
    for node in nodes:
        for model in node.models:
            if model.config.rpc_servers:
                _, *helpers = model_layer_ranges(model)
                held.update(zip(model.config.rpc_servers, helpers, strict=True))
    return held


def cluster_splits(nodes: Sequence[NodeStatus]) -> tuple[Split, ...]:
    """Every split model of `nodes` (each on its head), in the nodes' order."""
    lent_by = lenders(nodes)
    found = []
    for node in nodes:
        for model in node.models:
            if model.config.rpc_servers:
                found.append(_split(node, model, lent_by))
    return tuple(found)


def _split(node: NodeStatus, model: ModelStatus, lent_by: dict[str, str]) -> Split:
    head, *helpers = model_layer_ranges(model)
    spans = [Span(node.node_id, "head", "", head.first, head.count)]
    spans += [
        Span(lent_by.get(endpoint, endpoint), "rpc", endpoint, held.first, held.count)
        for held, endpoint in zip(helpers, model.config.rpc_servers, strict=True)
    ]
    n_layers = model.estimate.n_layers if model.estimate is not None else 0
    return Split(model.alias, node.node_id, n_layers or None, tuple(spans))
