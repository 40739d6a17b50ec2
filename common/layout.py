"""Which device llama.cpp gives each offloaded layer: one rule for the worker's memory
estimate (worker.config) and the coordinator's status (orchestrator.status_table)."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence


def offloaded_layers(n_gpu_layers: int, n_layer: int) -> int:
    """The layers llama.cpp moves off the CPU: the last n_gpu_layers (-1: all)."""
    return n_layer if n_gpu_layers < 0 else min(n_gpu_layers, n_layer)


def device_layer_counts(offloaded: int, shares: Sequence[float]) -> list[int]:
    """Layers per device when `offloaded` layers spread over devices in `shares`
    proportions (positive sum), as llama.cpp assigns them: each layer to the first device
    whose cumulative share is above the layer's place among the offloaded ones."""
    total = sum(shares)
    bounds = [c / total for c in itertools.accumulate(shares)]
    counts = [0] * len(shares)
    for i in range(offloaded):
        counts[min(bisect.bisect_right(bounds, i / offloaded), len(shares) - 1)] += 1
    return counts
