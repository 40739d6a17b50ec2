"""Chooses the telemetry sources a node can use and samples them on a background thread.

Sources, in order: Jetson (jtop), NVIDIA GPUs (NVML), host (psutil), the host always on.
Every GPU source that works is kept: a Jetson's integrated GPU is read through jtop (NVML
reports NotSupported for it, and the NVML source leaves it out), and a discrete GPU on a
Jetson-style board (IGX Orin) through NVML beside it. Every skip is logged once with its
reason and reported in the capability profile, so an operator can see why a node has no GPU
figures.

A source that fails while sampling (SourceError, or anything else it raises) is left out of
that sample and the others still count; the failure is logged once, and the recovery once
with the length of the gap.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.telemetry import GpuSample, HostSample, JetsonSample, NodeSample
from worker.telemetry.host import HostSource
from worker.telemetry.source import SourceError, TelemetrySource

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class Selection:
    sources: tuple[TelemetrySource, ...]
    skipped: tuple[str, ...]  # "nvml: no NVIDIA driver (...)"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sources)


def select_sources(gpu_sources: Sequence[TelemetrySource], host: TelemetrySource) -> Selection:
    """Probes every one of `gpu_sources` and keeps each that works (they read different
    GPUs: the NVML source leaves a Jetson's own GPU to the jtop source)."""
    chosen: list[TelemetrySource] = []
    skipped: list[str] = []
    for source in gpu_sources:
        probe = source.probe()
        if probe.available:
            chosen.append(source)
        else:
            skipped.append(f"{source.name}: {probe.reason}")
    host.probe()
    for reason in skipped:
        log.info("telemetry source skipped: %s", reason)
    return Selection((*chosen, host), tuple(skipped))


def default_gpu_sources(interval_s: float) -> list[TelemetrySource]:
    # Imported here so a worker without these libraries still imports this module.
    from worker.telemetry.jetson import JetsonSource
    from worker.telemetry.nvml import NvmlSource

    return [JetsonSource(interval_s=interval_s), NvmlSource()]


class TelemetrySampler:
    """Keeps the latest NodeSample of this node, refreshed every `interval_s` on its own
    thread so slow library calls never stall the gRPC event loop."""

    def __init__(
        self,
        selection: Selection,
        interval_s: float,
        wall_clock: Clock = time.time,
    ) -> None:
        self.selection = selection
        self._interval = interval_s
        self._clock = wall_clock
        self._latest: NodeSample | None = None
        self._failing: dict[str, float] = {}  # source name -> when it first failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[NodeSample], None]] = []

    @property
    def latest(self) -> NodeSample | None:
        return self._latest

    def on_sample(self, listener: Callable[[NodeSample], None]) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self.sample_now()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for source in self.selection.sources:
            source.close()

    def sample_now(self) -> NodeSample:
        host: HostSample | None = None
        gpus: list[GpuSample] = []
        jetson: JetsonSample | None = None
        names = []
        for source in self.selection.sources:
            try:
                reading = source.sample()
            except SourceError as exc:
                self._report_failure(source.name, str(exc))
                continue
            except Exception as exc:  # a source's bug must not stop the others
                self._report_failure(source.name, f"{type(exc).__name__}: {exc}")
                continue
            self._report_recovery(source.name)
            names.append(source.name)
            host = reading.host or host
            gpus.extend(_unique_indices(gpus, reading.gpus))
            jetson = reading.jetson or jetson
        sample = NodeSample(
            taken_at=self._clock(),
            host=host,
            gpus=tuple(gpus),
            jetson=jetson,
            sources=tuple(names),
        )
        self._latest = sample
        for listener in self._listeners:
            listener(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample_now()

    def _report_failure(self, name: str, reason: str) -> None:
        if name not in self._failing:
            self._failing[name] = self._clock()
            log.warning("telemetry source %s failed: %s; leaving its readings out", name, reason)
        else:
            # Each further reason (a reconnection attempt that failed, say) at debug level:
            # the warning above already said the readings are gone.
            log.debug("telemetry source %s still failing: %s", name, reason)

    def _report_recovery(self, name: str) -> None:
        since = self._failing.pop(name, None)
        if since is not None:
            log.info(
                "telemetry source %s is reading again after a %.1f s gap in its readings",
                name, max(self._clock() - since, 0.0),
            )  # fmt: skip


def _unique_indices(taken: Sequence[GpuSample], new: Sequence[GpuSample]) -> tuple[GpuSample, ...]:
    """`new` with indices unique on the node: a source keeps its own index (NVML's) unless an
    earlier source has it (a Jetson's GPU is 0 and so is an IGX board's card in dGPU mode);
    then the GPU takes the next free one."""
    used = {gpu.index for gpu in taken}
    renumbered = []
    for gpu in new:
        index = gpu.index
        if index in used:
            index = max(used) + 1
        used.add(index)
        renumbered.append(gpu if index == gpu.index else dataclasses.replace(gpu, index=index))
    return tuple(renumbered)


def start_sampler(model_dirs: Sequence[Path], interval_s: float) -> TelemetrySampler:
    """The sampler a worker runs: every source that works here, host always."""
    host = HostSource(model_dirs)
    sampler = TelemetrySampler(select_sources(default_gpu_sources(interval_s), host), interval_s)
    sampler.start()
    return sampler
