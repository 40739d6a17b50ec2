"""The one interface every telemetry source implements, and how sources are chosen.

A source wraps one library (psutil, NVML, jtop). `probe()` opens it and says whether it can
be used here, with the reason when not; `sample()` returns its normalised part of a
NodeSample. A missing library or device is not an error: the source is skipped and the
reason logged once.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from common.telemetry import GpuSample, HostSample, JetsonSample


@dataclass(frozen=True)
class Probe:
    available: bool
    reason: str = ""  # why not, in words an operator can act on

    @classmethod
    def ok(cls) -> Probe:
        return cls(True)

    @classmethod
    def skip(cls, reason: str) -> Probe:
        return cls(False, reason)


@dataclass(frozen=True)
class Reading:
    """One source's part of a NodeSample."""

    host: HostSample | None = None
    gpus: tuple[GpuSample, ...] = ()
    jetson: JetsonSample | None = None


class SourceError(Exception):
    """A source that worked before failed to read; the sampler keeps its last good reading
    out of the sample and says so once."""


class TelemetrySource(abc.ABC):
    name: str  # "host", "nvml", "jetson"

    @abc.abstractmethod
    def probe(self) -> Probe:
        """Opens the library/device; called once before any sample()."""

    @abc.abstractmethod
    def sample(self) -> Reading:
        """Reads the current values; raises SourceError when the device stops answering."""

    def close(self) -> None:  # noqa: B027 - most sources hold nothing open
        """Releases what probe() opened."""
