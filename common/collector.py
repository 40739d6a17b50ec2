"""Python's garbage collector around a large heap: paused around a burst of allocation
that makes no cycles (collector_paused), and kept off a slowly replaced heap (FrozenHeap)."""

from __future__ import annotations

import contextlib
import gc
import os
import resource
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The collector off for the block (or the decorated call), and as it was after.

    At fleet scale the coordinator keeps millions of objects alive (one snapshot holds
    several per node), and a burst of new ones (a decoded snapshot, a plan's fits) made the
    collector walk all of them several times over: most of the time of both, measured in
    tests/bench/simulate_fleet.py. Use it only where the work makes no reference cycles, so
    nothing waits for the collector meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class FrozenHeap:
    """Keeps a process that holds a large, slowly replaced heap (a gateway's or placement's
    copy of a 10,000-node snapshot: millions of objects) clear of full collections.

    A full collection walks every tracked object: at 10,000 nodes it held the event loop
    ~0.5-1 s, several times a minute, since each update's new nodes count towards the next
    one (tests/bench/simulate_fleet.py, "a gateway process following the feed").
    `settle()`, called once an update is taken, moves every tracked object to the permanent
    generation (gc.freeze: a list splice, whatever the heap's size), which no collection
    walks. What a later update replaces is still freed at once by reference counting (the
    snapshots make no cycles); only a reference cycle that becomes garbage while frozen
    stays. So settle watches the process's resident memory: past `growth` times what it
    was after the last full collection (plus `slack_bytes`), it unfreezes everything and
    collects it once (one full pause), which bounds what dead cycles can hold to about as
    much as the process holds alive. (Counting the frozen objects instead,
    gc.get_freeze_count, walks them all: ~80 ms at 10,000 nodes.) `rss` reads the resident
    bytes; the process's own by default."""

    def __init__(
        self,
        growth: float = 2.0,
        slack_bytes: int = 64 << 20,
        rss: Callable[[], int] | None = None,
    ) -> None:
        self.growth = growth
        self.slack_bytes = slack_bytes
        self._rss = rss or resident_bytes
        self.baseline: int | None = None  # resident bytes after the last full collection
        self.collections = 0  # full collections settle has made

    def settle(self) -> None:
        """Freezes what is tracked now; first, when the process has grown past its bound,
        collects everything once."""
        if self.baseline is None:  # the first: no pause; what is garbage now is bounded
            self.baseline = self._rss()
        elif self._rss() > self.growth * self.baseline + self.slack_bytes:
            gc.unfreeze()
            gc.collect()
            self.collections += 1
            self.baseline = self._rss()
        gc.freeze()


def resident_bytes() -> int:
    """This process's resident memory, in bytes (Linux: /proc; elsewhere its peak)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def frozen_heap() -> FrozenHeap:
    """The process's FrozenHeap: one per process, as the collector is."""
    return _FROZEN


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_FROZEN = FrozenHeap()
