"""A node's capability profile: what it is and can do, fixed for the life of its worker
(detected by worker.node.hardware; the coordinator places and routes by it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HardwareInfo:
    kind: str  # jetson-orin, jetson, x86-cuda, aarch64-cuda, x86-cpu, aarch64-cpu
    model: str = ""  # the board's or the CPU's name
    cpu_cores: int = 0  # physical
    memory_total: int = 0  # system RAM (on Jetson: shared with the GPU)
    gpu_memory_total: int = 0  # discrete GPU memory, all GPUs; 0 where memory is unified
    backends: tuple[str, ...] = ()  # llama.cpp backends compiled in: CPU, CUDA, RPC, ...
    unified_memory: bool = False
    compute_capability: str = ""
    cpu_features: tuple[str, ...] = ()
    gpus: tuple[str, ...] = ()
    jetson_module: str = ""
    jetpack: str = ""
    l4t: str = ""
    reference_decode_tps: float = 0.0
    telemetry_sources: tuple[str, ...] = ()
    telemetry_skipped: tuple[str, ...] = ()
    labels: frozenset[str] = frozenset()  # the operator's, from the worker's config
