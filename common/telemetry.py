"""What a node reports about itself each second, in base units (bytes, ratios 0..1, degrees
Celsius, watts, hertz), whatever library it came from.

Sources normalise their library's units into these types; everything downstream (heartbeat,
Prometheus, `llamaherd status`) reads only these. A reading a device does not support is None,
never a made-up zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Temperature:
    sensor: str  # e.g. "coretemp/Package id 0", "cpu", "gpu", "tj"
    celsius: float


@dataclass(frozen=True)
class HostSample:
    """The machine as the OS sees it (psutil); present on every node."""

    cpu_usage_ratio: float  # all cores together, 0..1
    cpu_core_usage_ratio: tuple[float, ...]  # per logical core, 0..1
    load_average: tuple[float, float, float]  # 1, 5 and 15 minutes
    memory_total_bytes: int
    memory_used_bytes: int
    memory_available_bytes: int
    swap_total_bytes: int
    swap_used_bytes: int
    disk_path: str  # where models live
    disk_total_bytes: int
    disk_free_bytes: int
    temperatures: tuple[Temperature, ...]  # empty where the OS exposes none
    process_rss_bytes: int  # the worker process itself


@dataclass(frozen=True)
class Clock:
    domain: str  # "graphics", "sm", "memory", "video" (NVML); "gpu" (Jetson)
    hertz: float


@dataclass(frozen=True)
class GpuSample:
    """One NVIDIA GPU: discrete (NVML) or a Jetson's integrated GPU (jtop).

    On a Jetson the GPU has no memory of its own: memory_* describe the unified RAM that
    llama.cpp can allocate from (total RAM, used, available), and `unified` is True.
    """

    index: int
    name: str
    unified: bool
    compute_capability: str  # CUDA compute capability, e.g. "8.9"; "" where unknown
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    utilization_ratio: float | None = None  # 0..1
    temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    clocks: tuple[Clock, ...] = ()
    # Active reasons the clocks are held down, snake_case: "sw_power_cap", "hw_slowdown",
    # "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "sync_boost",
    # "display_clock_setting", "board_limit", "reliability" (NVML). On Jetson they are
    # derived from limits, not reported by the hardware: "thermal:<zone>" at its max,
    # "power:<rail>" at its warn.
    # Idle and user-set application clocks are not throttling and are not listed.
    throttle_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class PowerRail:
    name: str  # e.g. "VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"
    watts: float
    average_watts: float | None = None
    volts: float | None = None
    amps: float | None = None


@dataclass(frozen=True)
class Fan:
    name: str  # e.g. "pwmfan0"
    speed_ratio: float  # 0..1
    rpm: float | None = None


@dataclass(frozen=True)
class JetsonSample:
    """What only a Jetson has: board identity, power mode, rails, EMC, fans (jtop)."""

    model: str  # "NVIDIA Jetson AGX Orin Developer Kit"
    module: str  # "NVIDIA Jetson AGX Orin (64GB ram)"
    soc: str  # "tegra234"
    cuda_arch: str  # "8.7"
    l4t: str  # "36.4.3"
    jetpack: str  # "6.2"
    nvpmodel: str | None  # power mode name, e.g. "MAXN"; None where the board has none
    jetson_clocks: bool | None  # clocks pinned at maximum; None where unknown
    emc_utilization_ratio: float | None  # external memory controller bandwidth used, 0..1
    emc_hertz: float | None
    gpu_shared_bytes: int  # RAM the GPU holds now (NvMap)
    temperatures: tuple[Temperature, ...]  # every online thermal zone
    power_rails: tuple[PowerRail, ...]  # every online rail jtop reports (INA3221, INA238, ...)
    power_total_watts: float | None  # board input (VDD_IN) where measured, else rail sum
    fans: tuple[Fan, ...]


@dataclass(frozen=True)
class NodeSample:
    """One moment of one node: host always (None only if psutil itself failed this time);
    GPUs and Jetson where a source provides them."""

    taken_at: float  # unix time
    host: HostSample | None
    gpus: tuple[GpuSample, ...] = ()
    jetson: JetsonSample | None = None
    sources: tuple[str, ...] = field(default=())  # which sources contributed: host, nvml, jetson
