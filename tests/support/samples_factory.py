"""Complete NodeSamples for tests that need every field set (and some deliberately None)."""

from __future__ import annotations

from common.telemetry import (
    Clock,
    Fan,
    GpuSample,
    HostSample,
    JetsonSample,
    NodeSample,
    PowerRail,
    Temperature,
)

GIB = 1024**3


def host_sample(**overrides: object) -> HostSample:
    values: dict[str, object] = dict(
        cpu_usage_ratio=0.25,
        cpu_core_usage_ratio=(0.5, 0.0),
        load_average=(1.5, 1.0, 0.5),
        memory_total_bytes=8 * GIB,
        memory_used_bytes=3 * GIB,
        memory_available_bytes=5 * GIB,
        swap_total_bytes=2 * GIB,
        swap_used_bytes=0,
        disk_path="/models",
        disk_total_bytes=100 * GIB,
        disk_free_bytes=40 * GIB,
        temperatures=(Temperature("coretemp/Package id 0", 51.0),),
        process_rss_bytes=300 * 1024**2,
    )
    values.update(overrides)
    return HostSample(**values)  # type: ignore[arg-type]


def dgpu(index: int = 0, **overrides: object) -> GpuSample:
    values: dict[str, object] = dict(
        index=index,
        name="NVIDIA GeForce RTX 4090",
        unified=False,
        compute_capability="8.9",
        memory_total_bytes=24 * GIB,
        memory_used_bytes=18 * GIB,
        memory_free_bytes=6 * GIB,
        utilization_ratio=0.97,
        temperature_celsius=66.0,
        power_watts=301.5,
        power_limit_watts=450.0,
        clocks=(Clock("graphics", 2.52e9), Clock("memory", 1.05e10)),
        throttle_reasons=("sw_power_cap",),
    )
    values.update(overrides)
    return GpuSample(**values)  # type: ignore[arg-type]


def jetson_sample() -> JetsonSample:
    return JetsonSample(
        model="NVIDIA Jetson AGX Orin Developer Kit",
        module="NVIDIA Jetson AGX Orin (64GB ram)",
        soc="tegra234",
        cuda_arch="8.7",
        l4t="36.4.3",
        jetpack="6.2",
        nvpmodel="MAXN",
        jetson_clocks=None,
        emc_utilization_ratio=0.31,
        emc_hertz=3.199e9,
        gpu_shared_bytes=6 * GIB,
        temperatures=(Temperature("tj", 57.5), Temperature("gpu", 55.0)),
        power_rails=(PowerRail("VDD_GPU_SOC", 12.4, 11.9, 5.0, 2.48), PowerRail("VIN", 30.1)),
        power_total_watts=30.1,
        fans=(Fan("pwmfan0", 0.45, 2210.0), Fan("pwmfan1", 0.0)),
    )


def node_sample(**overrides: object) -> NodeSample:
    values: dict[str, object] = dict(
        taken_at=1_764_000_000.5,
        host=host_sample(),
        gpus=(dgpu(0), dgpu(1, power_watts=None, power_limit_watts=None, throttle_reasons=())),
        jetson=None,
        sources=("nvml", "host"),
    )
    values.update(overrides)
    return NodeSample(**values)  # type: ignore[arg-type]
