"""What kind of machine a worker runs on, as the coordinator needs it for placement and
routing: the node's kind, memory and llama.cpp backends, detected once at start.

Live readings (temperatures, power, GPU utilisation) belong to telemetry; this is only the
fixed description of the node.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path

import psutil

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
_BACKEND = re.compile(r"(?:^|\|\s)([A-Za-z][A-Za-z0-9_]*) : ")


@dataclass(frozen=True)
class HardwareInfo:
    kind: str
    model: str
    cpu_cores: int
    memory_total: int
    gpu_memory_total: int
    backends: tuple[str, ...]


def backends_from_system_info(info: str, rpc: bool) -> tuple[str, ...]:
    """llama.cpp backends compiled in, from llama_print_system_info (`CPU : ... | CUDA : ...`)."""
    names = list(dict.fromkeys(_BACKEND.findall(info)))
    if rpc and "RPC" not in names:
        names.append("RPC")
    return tuple(names)


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


def detect(system_info: str, rpc: bool) -> HardwareInfo:
    backends = backends_from_system_info(system_info, rpc)
    board = jetson_model()
    return HardwareInfo(
        kind=node_kind(platform.machine(), board, backends),
        model=board or cpu_model(),
        cpu_cores=psutil.cpu_count(logical=False) or psutil.cpu_count() or 1,
        memory_total=psutil.virtual_memory().total,
        # Discrete GPU memory comes with NVML telemetry; until then CUDA nodes report 0 and
        # placement uses system memory, which is right for Jetson's unified memory.
        gpu_memory_total=0,
        backends=backends,
    )
