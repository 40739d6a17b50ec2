"""FrozenHeap: what it freezes leaves the collector's walks, is still freed by reference
counting, and dead cycles frozen with it are collected once the process has grown past its
bound."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from common.collector import FrozenHeap, resident_bytes


class Plain:
    pass


class Cyclic:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session as it was


def test_frozen_objects_leave_the_walks_and_are_still_freed_by_reference_counting(
    unfrozen: None,
) -> None:
    rss = [100]
    heap = FrozenHeap(growth=2.0, slack_bytes=0, rss=lambda: rss[0])
    acyclic = [Plain() for _ in range(3)]
    held = weakref.ref(acyclic[0])
    heap.settle()
    assert gc.get_freeze_count() > 0 and gc.get_count()[0] == 0
    del acyclic
    assert held() is None  # reference counting frees it, frozen or not
    assert heap.collections == 0 and heap.baseline == 100


def test_dead_cycles_frozen_are_collected_once_the_process_outgrows_its_bound(
    unfrozen: None,
) -> None:
    rss = [100]
    heap = FrozenHeap(growth=2.0, slack_bytes=10, rss=lambda: rss[0])
    heap.settle()
    cycle = Cyclic()
    dead = weakref.ref(cycle)
    heap.settle()  # frozen with the cycle in it
    del cycle
    gc.collect()
    assert dead() is not None  # no collection reaches the permanent generation
    rss[0] = 210  # the bound: 2 x 100 + 10
    heap.settle()
    assert dead() is not None and heap.collections == 0
    rss[0] = 211
    heap.settle()
    assert dead() is None and heap.collections == 1 and heap.baseline == 211


def test_resident_bytes_reads_this_process() -> None:
    assert 1 << 20 < resident_bytes() < 1 << 40
