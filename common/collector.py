"""Python's garbage collector paused around a burst of allocation that makes no cycles."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


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
