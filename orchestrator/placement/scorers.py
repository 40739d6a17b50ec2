"""How placement ranks the nodes that can take a model: small scorers, composed in RANKING.

Each scorer is a pure function of one Fit (a node that passed every filter: labels, memory,
not already holding the model) and returns a number, higher is better. RANKING orders them
by precedence: a later scorer only decides among nodes the earlier ones score alike, and
the node id settles what all of them tie on, so the same inputs always rank alike. To add
a consideration, write a scorer and put it in RANKING where it belongs.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from orchestrator.cluster.types import NodeId


class Fit(NamedTuple):
    """A node that can take the model, with the figures the scorers read. A named tuple,
    not a dataclass: a plan at 10,000 nodes makes one per node and catalog entry, and a
    tuple is made in half the time (tests/bench/simulate_fleet.py)."""

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


def sort_key(scorers: Sequence[Scorer] = RANKING) -> Callable[[Fit], tuple[Any, ...]]:
    """The key that orders fits best first: each scorer in turn (higher first), then the
    node id."""

    fns = tuple(scorers)
    if len(fns) == len(RANKING):
        # Spelled out, the key takes half the time of the loop below; a plan computes it
        # for every node that fits every entry (200,000 times at 10,000 nodes).
        a, b, c, d, e = fns
        return lambda fit: (-a(fit), -b(fit), -c(fit), -d(fit), -e(fit), fit.node_id)

    def key(fit: Fit) -> tuple[Any, ...]:
        return (*[-score(fit) for score in fns], fit.node_id)

    return key


def rank(fits: Iterable[Fit], scorers: Sequence[Scorer] = RANKING) -> list[Fit]:
    """The fits best first: by each scorer in turn (higher first), then by node id."""
    return sorted(fits, key=sort_key(scorers))


def ranked(
    fits: Sequence[Fit], scorers: Sequence[Scorer] = RANKING, first: int = 1
) -> Iterator[Fit]:
    """rank's order, produced lazily, for a caller that takes a few of many fits: the best
    `first`, then twice as many more each time it asks for more. Placement takes a few
    hundred of 10,000 nodes: sorting them all cost more than the rest of a plan, and
    each batch keeps only its own fits, so the garbage collector has little to walk."""
    key = sort_key(scorers)
    batch = max(first, 1)
    after: tuple[Any, ...] | None = None
    while True:
        rest = fits if after is None else [fit for fit in fits if key(fit) > after]
        best = heapq.nsmallest(batch, rest, key=key)
        yield from best
        if len(best) < batch:
            return
        after = key(best[-1])  # keys are unique: each ends with the node id
        batch *= 2
