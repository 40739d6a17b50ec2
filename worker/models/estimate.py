"""How much memory a worker's models may use: the budget that refuses a load before it
could overcommit. The estimate itself (from GGUF metadata) is common.estimate, shared with
the coordinator; its names are re-exported here for the worker's modules.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from common.errors import ResourceExhausted
from common.estimate import (
    FLOAT_BYTES,
    KV_BYTES_PER_ELEMENT,
    KV_CELL_PADDING,
    LLAMA_MAX_EXPERTS,
    LLAMA_MAX_LAYERS,
    ModelShape,
    estimate_compute,
    estimate_kv_cache,
    estimate_memory,
    kv_cells,
)
from common.memory import MemoryEstimate, format_bytes

__all__ = [
    "FLOAT_BYTES",
    "KV_BYTES_PER_ELEMENT",
    "KV_CELL_PADDING",
    "LLAMA_MAX_EXPERTS",
    "LLAMA_MAX_LAYERS",
    "MemoryBudget",
    "ModelShape",
    "estimate_compute",
    "estimate_kv_cache",
    "estimate_memory",
    "kv_cells",
]


class MemoryBudget:
    """Hands out memory to models so that loads are refused before they can overcommit.

    What a new model may use is the smaller of (a) the budget minus what loaded or loading
    models reserved, and (b) what the host reports available minus the reserve. (a) matters
    because mmap-ed weights count as reclaimable cache in (b): without it, two large models
    would each see the same free memory.
    """

    def __init__(self, limit_bytes: int, reserve_bytes: int, available: Callable[[], int]) -> None:
        self._limit = limit_bytes
        self._reserve = reserve_bytes
        self._available = available  # injected: psutil in the worker, a fixed figure in tests
        self._reserved: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def reserved_bytes(self) -> int:
        with self._lock:
            return sum(self._reserved.values())

    def free_bytes(self) -> int:
        with self._lock:
            return self._free_locked()

    def _free_locked(self) -> int:
        host_free = self._available() - self._reserve
        budget_free = self._limit - sum(self._reserved.values())
        return max(0, min(host_free, budget_free))

    def reserve(self, owner: str, estimate: MemoryEstimate) -> None:
        what = (
            f"model {owner!r} needs about {format_bytes(estimate.total_bytes)} "
            f"(weights {format_bytes(estimate.weights_bytes)}, KV cache "
            f"{format_bytes(estimate.kv_cache_bytes)}, compute "
            f"{format_bytes(estimate.compute_bytes)})"
        )
        self._take(owner, estimate.total_bytes, what, "lower n_ctx or n_batch, ")

    def reserve_bytes(self, owner: str, need: int, purpose: str) -> None:
        self._take(owner, need, f"{purpose} needs {format_bytes(need)}", "")

    def _take(self, owner: str, need: int, what: str, advice: str) -> None:
        with self._lock:
            free = self._free_locked()
            if need > free:
                raise ResourceExhausted(
                    f"{what} but this worker has {format_bytes(free)} free; "
                    f"{advice}unload a model, or raise memory_limit"
                )
            self._reserved[owner] = need

    def release(self, owner: str) -> None:
        with self._lock:
            self._reserved.pop(owner, None)
