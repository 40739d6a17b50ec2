"""How placement ranks the nodes that can take a model: small scorers, composed in RANKING.

Each scorer is a pure function of one Fit (a node that passed every filter: labels, memory,
not already holding the model) and returns a number, higher is better. RANKING orders them
by precedence: a later scorer only decides among nodes the earlier ones score alike, and
the node id settles what all of them tie on, so the same inputs always rank alike. To add
a consideration, write a scorer and put it in RANKING where it belongs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from orchestrator.cluster.types import NodeId


@dataclass(frozen=True)
class Fit:
    """A node that can take the model, with the figures the scorers read."""

    node_id: NodeId
    reference_tps: float  # the node's reference decode speed; 0 = not measured
    free_after: int  # bytes of memory the node has left once the model is loaded
    # Whether the node reports the model's file: True (it has it), False (it lacks it),
    # None (it does not say: a path entry, whose files are the operator's business).
    has_file: bool | None = None
    download_s: float = 0.0  # expected time to fetch the file first; 0 when it has it
    # Measured concurrent streams of the model per watt (llamaherd capacity, on a node that
    # reports power); 0 = not measured.
    streams_per_watt: float = 0.0


Scorer = Callable[[Fit], float]


def model_file_present(fit: Fit) -> float:
    """A node that has the model's file starts it without fetching gigabytes first; one
    that does not say is neutral, between one that has it and one that lacks it."""
    if fit.has_file is None:
        return 0.0
    return 1.0 if fit.has_file else -1.0


def soonest_ready(fit: Fit) -> float:
    """Among nodes that must fetch the file, the one whose download ends first serves
    first: the file's size over the node's link rate (measured, or assumed)."""
    return -fit.download_s


def most_streams_per_watt(fit: Fit) -> float:
    """Where `llamaherd capacity` measured the model on nodes that report power, the node
    serving the most streams per watt; unmeasured nodes (0) come after every measured one,
    so a cluster without measurements ranks as before."""
    return fit.streams_per_watt


def fastest(fit: Fit) -> float:
    """A faster node serves sooner. Unmeasured nodes (0) come after every measured one."""
    return fit.reference_tps


def most_free_memory(fit: Fit) -> float:
    """The most memory left after the load spreads models over the cluster, leaving room
    on every node for the next one."""
    return float(fit.free_after)


# Precedence, first to last. File presence first: it tells nodes apart for store models
# (nodes report their store files), and then it saves a download; then the expected
# download time among those that must fetch. For a path entry both are neutral everywhere
# and the order is measured streams per watt (where measured), speed, then memory.
RANKING: tuple[Scorer, ...] = (
    model_file_present, soonest_ready, most_streams_per_watt, fastest, most_free_memory,
)  # fmt: skip


def rank(fits: Iterable[Fit], scorers: Sequence[Scorer] = RANKING) -> list[Fit]:
    """The fits best first: by each scorer in turn (higher first), then by node id."""
    return sorted(fits, key=lambda fit: (*(-score(fit) for score in scorers), fit.node_id))
