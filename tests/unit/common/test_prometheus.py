from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from common.hardware import HardwareInfo
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig, ModelSource
from common.prometheus import (
    MetricSet,
    add_models,
    add_node_facts,
    add_node_sample,
)
from common.status import DownloadProgress, EngineFigures, ModelState, ModelStatus
from orchestrator.gateway.metrics import render
from tests.support.samples_factory import GIB, dgpu, jetson_sample, node_sample


def exposition(metrics: MetricSet) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels: value}, parsed back from the text format as Prometheus would."""
    text = render(metrics.families()).decode()
    parsed: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            parsed.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return parsed


def test_host_figures_in_base_units_with_the_prefix() -> None:
    metrics = MetricSet()
    add_node_sample(metrics, node_sample())
    out = exposition(metrics)
    assert out["llamaherd_memory_total_bytes"][()] == 8 * GIB
    assert out["llamaherd_cpu_usage_ratio"][()] == 0.25
    assert out["llamaherd_cpu_core_usage_ratio"][(("core", "0"),)] == 0.5
    assert out["llamaherd_load1"][()] == 1.5 and out["llamaherd_load15"][()] == 0.5
    assert out["llamaherd_disk_free_bytes"][(("path", "/models"),)] == 40 * GIB
    sensor = (("sensor", "coretemp/Package id 0"), ("source", "host"))
    assert out["llamaherd_temperature_celsius"][sensor] == 51.0
    assert all(name.startswith("llamaherd_") for name in out)


def test_gpu_figures_per_gpu_and_absent_where_unsupported() -> None:
    metrics = MetricSet()
    add_node_sample(metrics, node_sample())
    out = exposition(metrics)
    gpu0 = (("gpu", "0"), ("name", "NVIDIA GeForce RTX 4090"))
    gpu1 = (("gpu", "1"), ("name", "NVIDIA GeForce RTX 4090"))
    assert out["llamaherd_gpu_memory_used_bytes"][gpu0] == 18 * GIB
    assert out["llamaherd_gpu_power_watts"] == {gpu0: 301.5}  # gpu1 has no power reading
    assert out["llamaherd_gpu_clock_hertz"][(("domain", "graphics"), *gpu0)] == 2.52e9
    throttle = out["llamaherd_gpu_throttle_active"]
    assert throttle == {(gpu0[0], gpu0[1], ("reason", "sw_power_cap")): 1.0}
    assert gpu1 in out["llamaherd_gpu_utilization_ratio"]


def test_jetson_rails_zones_fans_and_mode() -> None:
    metrics = MetricSet()
    add_node_sample(metrics, node_sample(gpus=(), jetson=jetson_sample()))
    out = exposition(metrics)
    assert out["llamaherd_power_watts"][(("rail", "VDD_GPU_SOC"),)] == 12.4
    assert out["llamaherd_power_volts"] == {(("rail", "VDD_GPU_SOC"),): 5.0}  # VIN: no volts
    assert out["llamaherd_power_total_watts"][()] == 30.1
    assert out["llamaherd_temperature_celsius"][(("sensor", "tj"), ("source", "jetson"))] == 57.5
    assert out["llamaherd_fan_rpm"] == {(("fan", "pwmfan0"),): 2210.0}
    assert out["llamaherd_fan_speed_ratio"][(("fan", "pwmfan1"),)] == 0.0
    (info_labels,) = out["llamaherd_jetson_info"]
    assert dict(info_labels)["nvpmodel"] == "MAXN" and dict(info_labels)["jetpack"] == "6.2"
    assert "llamaherd_jetson_clocks_enabled" not in out  # unknown, so not exported


def test_models_and_facts_counters_end_in_total() -> None:
    metrics = MetricSet()
    hardware = HardwareInfo(
        "x86-cuda", "Ryzen", backends=("CPU", "CUDA"), unified_memory=False,
        compute_capability="8.9", reference_decode_tps=46.5,
    )  # fmt: skip
    add_node_facts(metrics, hardware, GIB)
    figures = EngineFigures(slots_total=4, queued=1, active=2, completed=17, decode_tps=38.0)
    gemma = ModelConfig(alias="gemma", path="/m.gguf")
    estimate = MemoryEstimate(GIB // 2, 0, 0)
    add_models(metrics, [ModelStatus("gemma", gemma, ModelState.READY, estimate=estimate,
                                     engine=figures)])  # fmt: skip
    out = exposition(metrics)
    assert out["llamaherd_model_requests_completed_total"][(("model", "gemma"),)] == 17
    assert out["llamaherd_model_state"] == {(("model", "gemma"), ("state", "ready")): 1.0}
    assert "llamaherd_model_prompt_tokens_per_second" not in out  # 0 = not measured yet
    assert out["llamaherd_reference_decode_tokens_per_second"][()] == 46.5
    (info,) = out["llamaherd_node_info"]
    assert dict(info)["backends"] == "CPU,CUDA" and dict(info)["unified_memory"] == "false"


def test_many_nodes_share_one_family_per_metric() -> None:
    # The text format allows each family once: the gateway's nodes must merge into it.
    metrics = MetricSet(base_labels=("node",))
    add_node_sample(metrics, node_sample(), ("a",))
    add_node_sample(metrics, node_sample(gpus=(dgpu(memory_used_bytes=GIB),)), ("b",))
    text = render(metrics.families()).decode()
    assert text.count("# TYPE llamaherd_gpu_memory_used_bytes gauge") == 1
    out = exposition(metrics)
    used = out["llamaherd_gpu_memory_used_bytes"]
    assert used[(("gpu", "0"), ("name", "NVIDIA GeForce RTX 4090"), ("node", "b"))] == GIB
    assert used[(("gpu", "0"), ("name", "NVIDIA GeForce RTX 4090"), ("node", "a"))] == 18 * GIB


def test_a_downloading_model_exports_its_progress() -> None:
    source = ModelSource(name="g", sha256="ab" * 32, size_bytes=1000, urls=("http://h:1",))
    status = ModelStatus(
        alias="g", config=ModelConfig(alias="g", path="store:g", source=source),
        state=ModelState.DOWNLOADING,
        download=DownloadProgress(bytes_done=250, bytes_total=1000, bytes_per_second=50.0,
                                  eta_s=15.0, source="h:1", attempt=1),
    )  # fmt: skip
    metrics = MetricSet()
    add_models(metrics, [status])
    out = exposition(metrics)
    g = (("model", "g"),)
    assert out["llamaherd_model_download_bytes"][g] == 250
    assert out["llamaherd_model_download_total_bytes"][g] == 1000
    assert out["llamaherd_model_download_bytes_per_second"][g] == 50.0
    ready = MetricSet()
    add_models(ready, [dataclasses.replace(status, state=ModelState.READY, download=None)])
    assert "llamaherd_model_download_bytes" not in exposition(ready)
