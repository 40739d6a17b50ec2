from __future__ import annotations

import psutil

from tests.support.samples_factory import GIB, dgpu, jetson_sample, node_sample
from worker.node.hardware import (
    backends_from_system_info,
    cpu_features_from_system_info,
    detect,
    node_kind,
)

X86_INFO = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
)
ORIN_INFO = (
    "CUDA : ARCHS = 870 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : NEON = 1 | "
    "ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | AVX512 = 0 | OPENMP = 1 | REPACK = 1 |"
)


def test_cpu_features_are_the_cpu_sections_enabled_flags() -> None:
    assert cpu_features_from_system_info(X86_INFO)[:6] == (
        "SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA",
    )  # fmt: skip
    orin = cpu_features_from_system_info(ORIN_INFO)
    assert orin[:4] == ("NEON", "ARM_FMA", "FP16_VA", "DOTPROD")
    assert "AVX512" not in orin  # = 0
    assert "USE_GRAPHS" not in orin  # a CUDA flag, not a CPU one


def test_backends_and_kind() -> None:
    backends = backends_from_system_info(ORIN_INFO, rpc=True)
    assert backends == ("CUDA", "CPU", "RPC")
    assert node_kind("aarch64", "NVIDIA Jetson AGX Orin Developer Kit", backends) == "jetson-orin"
    assert node_kind("x86_64", None, backends) == "x86-cuda"
    assert node_kind("x86_64", None, ("CPU",)) == "x86-cpu"


def test_profile_from_discrete_gpus_sums_their_memory() -> None:
    rtx3060 = dgpu(1, name="NVIDIA GeForce RTX 3060", memory_total_bytes=12 * GIB,
                   compute_capability="8.6")  # fmt: skip
    sample = node_sample(gpus=(dgpu(0), rtx3060))
    profile = detect(X86_INFO, True, sample, ("nvml", "host"), ("jetson: not a Jetson",))
    assert profile.gpu_memory_total == 36 * GIB
    assert profile.gpus == ("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3060")
    assert profile.compute_capability == "8.9"
    assert not profile.unified_memory
    assert profile.memory_total == psutil.virtual_memory().total
    assert profile.telemetry_skipped == ("jetson: not a Jetson",)
    assert "AVX2" in profile.cpu_features


def test_profile_of_a_jetson_counts_its_memory_once() -> None:
    orin_gpu = dgpu(name="Orin (nvgpu)", unified=True, compute_capability="8.7",
                    memory_total_bytes=64 * GIB)  # fmt: skip
    profile = detect(ORIN_INFO, True, node_sample(gpus=(orin_gpu,), jetson=jetson_sample()))
    assert profile.unified_memory
    assert profile.gpu_memory_total == 0  # the GPU's memory is the RAM already counted
    assert profile.compute_capability == "8.7"
    assert (profile.jetpack, profile.l4t) == ("6.2", "36.4.3")
    assert profile.jetson_module == "NVIDIA Jetson AGX Orin (64GB ram)"


def test_profile_without_telemetry_is_cpu_only() -> None:
    profile = detect(X86_INFO, False)
    assert profile.gpus == () and profile.gpu_memory_total == 0 and not profile.unified_memory
    assert profile.reference_decode_tps == 0.0
