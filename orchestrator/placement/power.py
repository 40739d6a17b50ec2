"""The cluster power budget: what the cluster draws now and what a new replica would add.

Pure functions of the nodes' latest telemetry, the measured capacities and the clock
reading `now` (the registry's clock, the one the samples' `taken_at` use). The planner
spends the budget through a PowerLedger as it plans (no new replica once the expected draw
would pass the budget: planner.plan's `power`); admission
(orchestrator.routing.admission.power_admission) reads the same ClusterDraw.

How draw is measured (admission.cluster_draw): a node's draw is
orchestrator.routing.heat.node_watts, its Jetson board total or the sum of its discrete
GPUs' draw, from a sample at most heat.MAX_AGE_S old. The cluster's draw is the sum over
the up nodes that report one.

Nodes that report no power (a CPU-only PC, a GPU whose driver gives no figure, a sample
too old) are **unmeasured**, never counted as drawing 0 without saying so: they are listed
in ClusterDraw.unmeasured (status shows them), the draw is the measured nodes' only (a lower
bound of the real one), and a new replica on such a node adds nothing the budget can know.
So an unmeasured node takes a new replica while the measured draw is within the budget,
and none once it is over it: then every node is refused alike.

What a new replica adds on a measured node, the first that applies:
1. measured: `llamaherd capacity` recorded the node's mean draw serving that model
   (CapacityRecord.watts): that draw less what the node draws now (at least 0);
2. its headroom from telemetry: discrete GPUs that all report an enforced power limit add
   at most their limits less their draw; a Jetson whose power mode names its budget
   (nvpmodel "15W") at most that budget less its board draw;
3. a default: JETSON_REPLICA_W for a Jetson (a MAXN board), DGPU_REPLICA_W for a node
   whose GPUs give no limit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from common.telemetry import NodeSample
from orchestrator.cluster.capacity import CapacityRecord
from orchestrator.cluster.types import Node, NodeId
from orchestrator.routing.admission import ClusterDraw, cluster_draw
from orchestrator.routing.heat import fresh, node_watts

# Defaults of what one more replica draws where nothing better is known: a Jetson in a power
# mode without a number (MAXN) decoding a small model adds about this much over its idle
# draw; a discrete GPU without an enforced limit, about half of a large card's.
JETSON_REPLICA_W = 15.0
DGPU_REPLICA_W = 150.0

# nvpmodel names that state their budget: "15W", "MODE_30W", "7W_AI".
_MODE_WATTS = re.compile(r"(?<![0-9])([0-9]+(?:\.[0-9]+)?)W(?![A-Za-z])")


def telemetry_headroom(sample: NodeSample | None, now: float) -> tuple[float, str] | None:
    """What one more replica may add on the node of `sample` by its telemetry alone (rules 2
    and 3 of the module's docstring) and how that was found; None where it reports no power."""
    if sample is None or not fresh(sample, now):
        return None
    draw = node_watts(sample, now)
    if draw is None:
        return None
    if sample.jetson is not None:
        mode = sample.jetson.nvpmodel or ""
        found = _MODE_WATTS.search(mode)
        if found is not None:
            return max(float(found.group(1)) - draw, 0.0), f"power mode {mode}"
        return JETSON_REPLICA_W, "Jetson default"
    limits = [g.power_limit_watts for g in sample.gpus if not g.unified]
    if limits and all(limit is not None and limit > 0 for limit in limits):
        total = sum(limit for limit in limits if limit is not None)
        return max(total - draw, 0.0), "GPU power limit"
    return DGPU_REPLICA_W, "GPU default"


@dataclass(frozen=True)
class PowerFigures:
    """Everything placement needs to respect `budget_w` this round: the cluster's draw,
    each measured node's telemetry headroom, and the measured draw of a model on a node
    ((alias, node) -> watts, from `llamaherd capacity`)."""

    budget_w: float
    draw: ClusterDraw
    headroom: Mapping[NodeId, tuple[float, str]] = field(default_factory=dict)
    measured: Mapping[tuple[str, NodeId], float] = field(default_factory=dict)

    def replica_watts(self, alias: str, node_id: NodeId) -> tuple[float, str] | None:
        """What a replica of `alias` would add on `node_id` and how that was found; None
        for an unmeasured node."""
        now = self.draw.per_node.get(node_id)
        if now is None:
            return None
        loaded = self.measured.get((alias, node_id))
        if loaded is not None:
            return max(loaded - now, 0.0), "measured"
        return self.headroom.get(node_id)


def power_figures(
    budget_w: float,
    nodes: Sequence[Node],
    now: float,
    capacities: Sequence[CapacityRecord] = (),
) -> PowerFigures:
    """The figures of `budget_w` over `nodes` at `now`. A model measured with several
    contexts on one node counts its highest draw."""
    draw = cluster_draw(nodes, now)
    headroom = {
        node.node_id: found
        for node in nodes
        if node.node_id in draw.per_node
        and (found := telemetry_headroom(node.telemetry, now)) is not None
    }
    measured: dict[tuple[str, NodeId], float] = {}
    for record in capacities:
        if record.watts is not None and record.watts > 0:
            key = (record.model, NodeId(record.node))
            measured[key] = max(measured.get(key, 0.0), record.watts)
    return PowerFigures(budget_w, draw, headroom, measured)


class PowerLedger:
    """The budget as one plan spends it: each replica the plan starts is charged, so the
    next one sees the draw expected after it. Mutable; one per plan."""

    def __init__(self, figures: PowerFigures) -> None:
        self.figures = figures
        self.expected_w = figures.draw.watts

    def refusal(self, alias: str, node_ids: Sequence[NodeId]) -> str | None:
        """Why a replica of `alias` on `node_ids` (one node, or a split's nodes) would pass
        the budget, or None when it fits."""
        budget = self.figures.budget_w
        if self.expected_w > budget:
            return f"power budget {budget:g} W: the cluster draws {self._drawn()}"
        added = self._added(alias, node_ids)
        if added is None or self.expected_w + added[0] <= budget:
            return None
        watts, how = added
        return (
            f"power budget {budget:g} W: the cluster draws {self._drawn()} and a replica "
            f"here adds about {watts:.0f} W ({how})"
        )

    def fits(self, alias: str, node_ids: Sequence[NodeId]) -> bool:
        """Whether refusal() is None, without writing why: the planner asks it of every
        candidate node, and writes the reasons only for an entry left short."""
        budget = self.figures.budget_w
        if self.expected_w > budget:
            return False
        added = 0.0
        for node_id in node_ids:
            found = self.figures.replica_watts(alias, node_id)
            if found is not None:
                added += found[0]
        return self.expected_w + added <= budget

    def charge(self, alias: str, node_ids: Sequence[NodeId]) -> None:
        """Counts a replica of `alias` on `node_ids` as started."""
        added = self._added(alias, node_ids)
        if added is not None:
            self.expected_w += added[0]

    def _added(self, alias: str, node_ids: Sequence[NodeId]) -> tuple[float, str] | None:
        found = [w for n in node_ids if (w := self.figures.replica_watts(alias, n)) is not None]
        if not found:
            return None
        return sum(w for w, _ in found), ", ".join(sorted({how for _, how in found}))

    def _drawn(self) -> str:
        draw = self.figures.draw
        planned = self.expected_w - draw.watts
        extra = f" (+{planned:.0f} W planned this round)" if planned > 0 else ""
        return draw.text() + extra
