"""The host source: CPU, load, memory, swap, disk, temperatures and the worker's own RSS,
from psutil. Available on every platform llamaherd runs on; it is never skipped."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import psutil

from common.telemetry import HostSample, Temperature
from worker.telemetry.source import Probe, Reading, SourceError, TelemetrySource


class HostSource(TelemetrySource):
    name = "host"

    def __init__(self, model_dirs: Sequence[Path] = ()) -> None:
        self._disk_path = _existing_path(model_dirs)
        self._process = psutil.Process()
        self._has_sensors = hasattr(psutil, "sensors_temperatures")

    def probe(self) -> Probe:
        # cpu_percent(None) measures since the previous call; the first call only sets the
        # baseline, so it happens here rather than in the first sample.
        psutil.cpu_percent(percpu=True)
        return Probe.ok()

    def sample(self) -> Reading:
        try:
            return Reading(host=self._read())
        except (OSError, psutil.Error) as exc:
            raise SourceError(f"host readings failed: {exc}") from exc

    def _read(self) -> HostSample:
        cores = tuple(p / 100.0 for p in psutil.cpu_percent(percpu=True))
        memory = psutil.virtual_memory()
        swap = psutil.swap_memory()
        disk = psutil.disk_usage(str(self._disk_path))
        one, five, fifteen = os.getloadavg()
        return HostSample(
            cpu_usage_ratio=sum(cores) / len(cores) if cores else 0.0,
            cpu_core_usage_ratio=cores,
            load_average=(one, five, fifteen),
            memory_total_bytes=memory.total,
            # total - available, not psutil's `used`: page cache the kernel would drop for a
            # model load is not "used" for placement.
            memory_used_bytes=memory.total - memory.available,
            memory_available_bytes=memory.available,
            swap_total_bytes=swap.total,
            swap_used_bytes=swap.used,
            disk_path=str(self._disk_path),
            disk_total_bytes=disk.total,
            disk_free_bytes=disk.free,
            temperatures=self._temperatures(),
            process_rss_bytes=self._process.memory_info().rss,
        )

    def _temperatures(self) -> tuple[Temperature, ...]:
        if not self._has_sensors:
            return ()
        found = []
        for chip, readings in sorted(psutil.sensors_temperatures().items()):
            for index, reading in enumerate(readings):
                label = reading.label or str(index)
                found.append(Temperature(f"{chip}/{label}", float(reading.current)))
        return tuple(found)


def _existing_path(candidates: Sequence[Path]) -> Path:
    """The first model directory that exists, else its nearest existing parent: disk_usage
    needs a real path, and the directory may be created only at the first download."""
    for candidate in candidates:
        if candidate.exists():
            return candidate
    path = candidates[0] if candidates else Path.home()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
