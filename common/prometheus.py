"""Node telemetry, capability and model load as Prometheus metric families.

One vocabulary for both exporters: a worker's `/metrics` describes itself, and a gateway's
`/metrics` describes every node of the cluster with the same families plus a `node` label.
Names follow Prometheus conventions: prefix `llamaherd_`, base units in the name (`_bytes`,
`_celsius`, `_watts`, `_hertz`, `_ratio`), counters end in `_total`. A reading a device does
not provide is absent from the output, never exported as zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from common.hardware import HardwareInfo
from common.status import ModelStatus
from common.telemetry import GpuSample, HostSample, JetsonSample, NodeSample

PREFIX = "llamaherd_"
Family = GaugeMetricFamily | CounterMetricFamily


class MetricSet:
    """Collects samples into families; families keep one label schema each, so samples of
    many nodes (the gateway) land in one family as the text format requires."""

    def __init__(self, base_labels: Sequence[str] = ()) -> None:
        self._base = tuple(base_labels)
        self._families: dict[str, Family] = {}

    # Positional-only, so a label may be called `name` (the GPU's name is one).
    def gauge(
        self,
        metric: str,
        doc: str,
        value: float | None,
        base: Sequence[str] = (),
        /,
        **labels: str,
    ) -> None:
        if value is None:
            return
        family = self._family(metric, doc, tuple(labels), GaugeMetricFamily)
        family.add_metric([*base, *labels.values()], float(value))

    def counter(
        self, metric: str, doc: str, value: float, base: Sequence[str] = (), /, **labels: str
    ) -> None:
        family = self._family(metric, doc, tuple(labels), CounterMetricFamily)
        family.add_metric([*base, *labels.values()], float(value))

    def families(self) -> Iterator[Metric]:
        return iter(self._families.values())

    def _family(
        self, name: str, doc: str, label_names: tuple[str, ...], kind: type[Family]
    ) -> Family:
        full = PREFIX + name
        family = self._families.get(full)
        if family is None:
            family = kind(full, doc, labels=[*self._base, *label_names])
            self._families[full] = family
        return family


def add_node_sample(metrics: MetricSet, sample: NodeSample, base: Sequence[str] = ()) -> None:
    metrics.gauge(
        "telemetry_timestamp_seconds", "Unix time of the latest telemetry sample",
        sample.taken_at, base,
    )  # fmt: skip
    if sample.host is not None:
        _add_host(metrics, sample.host, base)
    for gpu in sample.gpus:
        _add_gpu(metrics, gpu, base)
    if sample.jetson is not None:
        _add_jetson(metrics, sample.jetson, base)


def _add_host(m: MetricSet, host: HostSample, base: Sequence[str]) -> None:
    m.gauge("cpu_usage_ratio", "CPU busy time, all cores, 0..1", host.cpu_usage_ratio, base)
    for core, ratio in enumerate(host.cpu_core_usage_ratio):
        m.gauge("cpu_core_usage_ratio", "CPU busy time per core, 0..1", ratio, base, core=str(core))
    for window, value in zip(("1", "5", "15"), host.load_average, strict=False):
        m.gauge(f"load{window}", f"{window}-minute load average", value, base)
    m.gauge("memory_total_bytes", "System RAM", host.memory_total_bytes, base)
    m.gauge("memory_used_bytes", "RAM in use (total - available)", host.memory_used_bytes, base)
    m.gauge("memory_available_bytes", "RAM available", host.memory_available_bytes, base)
    m.gauge("swap_total_bytes", "Swap space", host.swap_total_bytes, base)
    m.gauge("swap_used_bytes", "Swap in use", host.swap_used_bytes, base)
    m.gauge("disk_total_bytes", "Size of the model disk", host.disk_total_bytes, base,
            path=host.disk_path)  # fmt: skip
    m.gauge("disk_free_bytes", "Free space on the model disk", host.disk_free_bytes, base,
            path=host.disk_path)  # fmt: skip
    for t in host.temperatures:
        m.gauge("temperature_celsius", "Temperature of a sensor", t.celsius, base,
                source="host", sensor=t.sensor)  # fmt: skip
    m.gauge("process_resident_memory_bytes", "Resident memory of the worker process",
            host.process_rss_bytes, base)  # fmt: skip


def _add_gpu(m: MetricSet, gpu: GpuSample, base: Sequence[str]) -> None:
    who = {"gpu": str(gpu.index), "name": gpu.name}
    m.gauge("gpu_memory_total_bytes", "GPU memory (unified: system RAM)",
            gpu.memory_total_bytes, base, **who)  # fmt: skip
    m.gauge("gpu_memory_used_bytes", "GPU memory in use", gpu.memory_used_bytes, base, **who)
    m.gauge("gpu_memory_free_bytes", "GPU memory llama.cpp can still allocate",
            gpu.memory_free_bytes, base, **who)  # fmt: skip
    m.gauge("gpu_utilization_ratio", "GPU busy time, 0..1", gpu.utilization_ratio, base, **who)
    m.gauge("gpu_temperature_celsius", "GPU temperature", gpu.temperature_celsius, base, **who)
    m.gauge("gpu_power_watts", "GPU power draw", gpu.power_watts, base, **who)
    m.gauge("gpu_power_limit_watts", "GPU power limit", gpu.power_limit_watts, base, **who)
    for clock in gpu.clocks:
        m.gauge("gpu_clock_hertz", "GPU clock", clock.hertz, base, **who, domain=clock.domain)
    for reason in gpu.throttle_reasons:
        m.gauge("gpu_throttle_active", "1 for each reason the GPU clocks are held down now",
                1, base, **who, reason=reason)  # fmt: skip


def _add_jetson(m: MetricSet, j: JetsonSample, base: Sequence[str]) -> None:
    m.gauge("jetson_info", "Jetson board identity and power mode", 1, base,
            model=j.model, module=j.module, soc=j.soc, cuda_arch=j.cuda_arch, l4t=j.l4t,
            jetpack=j.jetpack, nvpmodel=j.nvpmodel or "")  # fmt: skip
    if j.jetson_clocks is not None:
        m.gauge("jetson_clocks_enabled", "1 when jetson_clocks pins clocks at maximum",
                int(j.jetson_clocks), base)  # fmt: skip
    m.gauge("emc_utilization_ratio", "External memory controller bandwidth in use, 0..1",
            j.emc_utilization_ratio, base)  # fmt: skip
    m.gauge("emc_clock_hertz", "External memory controller clock", j.emc_hertz, base)
    m.gauge("gpu_shared_memory_bytes", "RAM held by the integrated GPU", j.gpu_shared_bytes, base)
    for t in j.temperatures:
        m.gauge("temperature_celsius", "Temperature of a sensor", t.celsius, base,
                source="jetson", sensor=t.sensor)  # fmt: skip
    for rail in j.power_rails:
        m.gauge("power_watts", "Power on a rail", rail.watts, base, rail=rail.name)
        m.gauge("power_average_watts", "Average power on a rail", rail.average_watts, base,
                rail=rail.name)  # fmt: skip
        m.gauge("power_volts", "Voltage of a rail", rail.volts, base, rail=rail.name)
        m.gauge("power_amperes", "Current on a rail", rail.amps, base, rail=rail.name)
    m.gauge("power_total_watts", "Board power", j.power_total_watts, base)
    for fan in j.fans:
        m.gauge("fan_speed_ratio", "Fan speed, 0..1", fan.speed_ratio, base, fan=fan.name)
        m.gauge("fan_rpm", "Fan revolutions per minute", fan.rpm, base, fan=fan.name)


def add_node_facts(
    m: MetricSet, hw: HardwareInfo, memory_free: int, base: Sequence[str] = ()
) -> None:
    m.gauge("node_info", "What the node is (capability profile)", 1, base,
            kind=hw.kind, model=hw.model, backends=",".join(hw.backends),
            unified_memory=str(hw.unified_memory).lower(),
            compute_capability=hw.compute_capability)  # fmt: skip
    if hw.reference_decode_tps > 0:
        m.gauge("reference_decode_tokens_per_second",
                "Decode rate of the reference model, measured once per build and hardware",
                hw.reference_decode_tps, base)  # fmt: skip
    m.gauge("memory_free_for_models_bytes", "Memory models may still use on the node",
            memory_free, base)  # fmt: skip


def add_models(m: MetricSet, models: Iterable[ModelStatus], base: Sequence[str] = ()) -> None:
    for status in models:
        g = status.engine
        model = {"model": status.alias}
        m.gauge("model_state", "1 for the model's current state", 1, base, **model,
                state=status.state.value)  # fmt: skip
        m.gauge("model_slots", "Sequences the engine decodes together", g.slots_total, base,
                **model)  # fmt: skip
        m.gauge("model_slots_busy", "Slots generating now", g.active, base, **model)
        m.gauge("model_requests_queued", "Requests waiting for a slot", g.queued, base, **model)
        m.gauge("model_requests_running", "Requests in a slot", g.active, base, **model)
        m.counter("model_requests_completed", "Requests finished", g.completed, base, **model)
        m.gauge("model_decode_tokens_per_second", "Recent per-sequence decode rate",
                g.decode_tps or None, base, **model)  # fmt: skip
        m.gauge("model_prompt_tokens_per_second", "Recent prompt processing rate",
                g.prompt_tps or None, base, **model)  # fmt: skip
        m.gauge("model_memory_bytes", "Estimated memory of the model (weights, KV, compute)",
                status.memory_bytes, base, **model)  # fmt: skip
        if status.download is not None:
            d = status.download
            m.gauge("model_download_bytes", "Bytes of the model's file fetched so far",
                    d.bytes_done, base, **model)  # fmt: skip
            m.gauge("model_download_total_bytes", "Size of the model's file being fetched",
                    d.bytes_total, base, **model)  # fmt: skip
            m.gauge("model_download_bytes_per_second", "Recent rate of the model's fetch",
                    d.bytes_per_second, base, **model)  # fmt: skip
