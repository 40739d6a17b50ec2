"""What a model needs in memory, as a worker estimates it and the coordinator plans with it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MiB = 1024**2
GiB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    # What one repeating layer adds to the device holding it (the largest layer), and the
    # compute buffer of a device that holds layers but not the output: for layer splits.
    n_layers: int = 0
    layer_weights_bytes: int = 0
    layer_kv_cache_bytes: int = 0
    layer_compute_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes

    @property
    def layer_bytes(self) -> int:
        return self.layer_weights_bytes + self.layer_kv_cache_bytes

    def without_layers(self, n: int) -> MemoryEstimate:
        """What is left on this node when `n` layers live on other nodes' devices."""
        n = max(0, min(n, self.n_layers))
        return dataclasses.replace(
            self,
            weights_bytes=max(0, self.weights_bytes - n * self.layer_weights_bytes),
            kv_cache_bytes=max(0, self.kv_cache_bytes - n * self.layer_kv_cache_bytes),
        )


def format_bytes(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"
