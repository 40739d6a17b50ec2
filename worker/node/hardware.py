"""A worker's capability profile, as the coordinator needs it for placement and routing:
the node's kind, memory, GPUs, llama.cpp backends and CPU features, detected once at start,
plus its measured reference speed (worker.node.reference_speed).

Live readings (temperatures, power, GPU utilisation) belong to telemetry; this is the fixed
description of the node, completed from the first telemetry sample (GPU names and memory).
"""

from __future__ import annotations

import platform
import re
from collections.abc import Sequence
from pathlib import Path

import psutil

from common.hardware import HardwareInfo
from common.telemetry import NodeSample

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
_BACKEND = re.compile(r"(?:^|\|\s)([A-Za-z][A-Za-z0-9_]*) : ")
_FEATURE = re.compile(r"([A-Z][A-Z0-9_]*) = 1")


def backends_from_system_info(info: str, rpc: bool) -> tuple[str, ...]:
    """llama.cpp backends compiled in, from llama_print_system_info (`CPU : ... | CUDA : ...`)."""
    names = list(dict.fromkeys(_BACKEND.findall(info)))
    if rpc and "RPC" not in names:
        names.append("RPC")
    return tuple(names)


def cpu_features_from_system_info(info: str) -> tuple[str, ...]:
    """What llama.cpp's CPU backend was built to use (`... | CPU : AVX2 = 1 | FMA = 1 | ...`)."""
    features: list[str] = []
    section = ""
    for entry in info.split("|"):
        if " : " in entry:
            section, entry = (part.strip() for part in entry.split(" : ", 1))
        found = _FEATURE.fullmatch(entry.strip())
        if section == "CPU" and found:
            features.append(found.group(1))
    return tuple(dict.fromkeys(features))


def node_kind(machine: str, jetson_model: str | None, backends: tuple[str, ...]) -> str:
    """jetson-orin / jetson, else <arch>-cuda when llama.cpp has CUDA, else <arch>-cpu."""
    if jetson_model is not None:
        return "jetson-orin" if "orin" in jetson_model.lower() else "jetson"
    arch = {"x86_64": "x86", "amd64": "x86", "aarch64": "aarch64", "arm64": "aarch64"}.get(
        machine.lower(), machine.lower() or "unknown"
    )
    return f"{arch}-cuda" if "CUDA" in backends else f"{arch}-cpu"


def jetson_model(
    tegra_release: Path = TEGRA_RELEASE, model: Path = DEVICE_TREE_MODEL
) -> str | None:
    """The board's name on a Jetson (L4T writes /etc/nv_tegra_release), else None."""
    if not tegra_release.exists():
        return None
    try:
        return model.read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip() or "Jetson"
    except OSError:
        return "Jetson"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def detect(
    system_info: str,
    rpc: bool,
    sample: NodeSample | None = None,
    sources: Sequence[str] = (),
    skipped: Sequence[str] = (),
) -> HardwareInfo:
    backends = backends_from_system_info(system_info, rpc)
    board = jetson_model()
    gpus = sample.gpus if sample is not None else ()
    jetson = sample.jetson if sample is not None else None
    unified = jetson is not None or any(g.unified for g in gpus)
    return HardwareInfo(
        kind=node_kind(platform.machine(), board, backends),
        model=board or cpu_model(),
        cpu_cores=psutil.cpu_count(logical=False) or psutil.cpu_count() or 1,
        memory_total=psutil.virtual_memory().total,
        # Jetson GPUs allocate from RAM: placement counts system memory there, not twice.
        gpu_memory_total=sum(g.memory_total_bytes for g in gpus if not g.unified),
        backends=backends,
        unified_memory=unified,
        compute_capability=next((g.compute_capability for g in gpus if g.compute_capability), ""),
        cpu_features=cpu_features_from_system_info(system_info),
        gpus=tuple(g.name for g in gpus),
        jetson_module=jetson.module if jetson else "",
        jetpack=jetson.jetpack if jetson else "",
        l4t=jetson.l4t if jetson else "",
        telemetry_sources=tuple(sources),
        telemetry_skipped=tuple(skipped),
    )
