"""The NVIDIA discrete-GPU source: memory, utilisation, temperature, power, clocks and
throttle reasons of every GPU the driver lists, read through NVML (nvidia-ml-py's `pynvml`).

A Jetson's integrated GPU is not read here: it shares the board's RAM, and NVML there is
either absent (JetPack 5) or answers NotSupported for memory (JetPack 6), so the jtop source
reads it. A discrete GPU on a Jetson-style board (IGX Orin with an RTX card) is read here,
beside the jtop source.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.telemetry import Clock, GpuSample
from worker.telemetry.source import Probe, Reading, SourceError, TelemetrySource

log = logging.getLogger(__name__)

_HERTZ_PER_MHZ = 1_000_000.0
_MILLIWATTS_PER_WATT = 1000.0
_PERCENT = 100.0

# (our domain name, the pynvml constant naming the clock type)
_CLOCK_DOMAINS = (
    ("graphics", "NVML_CLOCK_GRAPHICS"),
    ("sm", "NVML_CLOCK_SM"),
    ("memory", "NVML_CLOCK_MEM"),
    ("video", "NVML_CLOCK_VIDEO"),
)

# The bits of nvml.h's clocks event reasons, which are ABI and identical under the older
# "ThrottleReason" names. GpuIdle (0x1) and ApplicationsClocksSetting (0x2) are absent on
# purpose: an idle GPU or clocks an operator pinned are not clocks being held down.
_THROTTLE_BITS = (
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
    # Only under the older "ThrottleReason" names in the bindings (nvidia-ml-py 13 has no
    # ClocksEventReason constant for them); the bit is the same in either call's mask.
    (0x200, "board_limit"),
    (0x400, "reliability"),
)

# Newest name first: bindings from 12.535 on have both (the old one deprecated), older
# bindings only the second, and a driver older than R535 lacks the first's C symbol.
_EVENT_REASON_CALLS = (
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
)

# nvmlDeviceGetTemperature is deprecated (to be removed with CUDA 14); the versioned call
# replaces it from R535. Bindings and drivers may have either, both or (newest) only the first.
_TEMPERATURE_CALLS = ("nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature")

# A metric failing with one of these will fail the same way every second: the device or
# driver lacks it, or this user may not read it. It is remembered and not asked again.
_ABSENT_ERRORS = (
    "NVML_ERROR_NOT_SUPPORTED",
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_FUNCTION_NOT_FOUND",
)

# The GPU (or NVML) stopped answering altogether: no reading of it can be trusted.
_LOST_ERRORS = ("NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_RESET_REQUIRED", "NVML_ERROR_UNINITIALIZED")

_JETSON_HINT = "Jetson GPUs are read through jtop (pip install jetson-stats), not NVML"

# How NVML names a Jetson's integrated GPU ("Orin (nvgpu)" on JetPack 6, "NVIDIA Thor"): on a
# Jetson these are left to jtop, while a discrete GPU beside them (IGX Orin, IGX Thor with an
# RTX card) is read here.
_INTEGRATED_NAMES = ("nvgpu", "thor", "orin", "xavier", "tegra")


class _Unavailable(Exception):
    """Raised inside probe() to end it with a skip reason."""


class _LeftOut(Exception):
    """Raised inside probe() for one GPU this source does not read; the others still count."""


@dataclass
class _Gpu:
    """What probe() learnt once about a device, and which of its calls are unsupported."""

    index: int
    handle: Any
    name: str
    compute_capability: str
    memory_total_bytes: int
    unsupported: set[str] = field(default_factory=set)


def _import_pynvml() -> Any:
    return importlib.import_module("pynvml")


def _running_on_jetson() -> bool:
    # L4T writes nv_tegra_release; containers may lack it but still see the device tree.
    if Path("/etc/nv_tegra_release").exists():
        return True
    try:
        return b"nvidia,tegra" in Path("/proc/device-tree/compatible").read_bytes()
    except OSError:
        return False


class NvmlSource(TelemetrySource):
    """Every NVIDIA GPU the driver lists, through NVML.

    `nvml` is the `pynvml` module or a stand-in with the same functions, constants and
    exception classes; None imports pynvml (via `opener`) when probe() runs, so a worker
    without nvidia-ml-py still constructs this source and learns why it is skipped.
    `on_jetson` says whether this machine is a Jetson; by default it looks at L4T's files.

    A metric a device does not support is None in its samples and is not asked for again;
    a lost GPU, or a memory read that fails, raises SourceError.
    """

    name = "nvml"

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        opener: Callable[[], Any] = _import_pynvml,
        on_jetson: Callable[[], bool] = _running_on_jetson,
    ) -> None:
        self._nvml: Any = nvml  # the module once probe() has it; None before
        self._opener = opener
        self._on_jetson = on_jetson
        self._initialized = False
        self._gpus: tuple[_Gpu, ...] = ()

    # -- probe ---------------------------------------------------------------------------

    def probe(self) -> Probe:
        self.close()  # a second probe must not leave NVML's init refcount one too high
        try:
            self._gpus = self._open()
        except _Unavailable as skip:
            self.close()
            return Probe.skip(str(skip))
        except Exception as exc:
            # The contract is that probe() never raises; an odd binding version or driver
            # must cost this node its GPU figures, not the worker.
            self.close()
            return Probe.skip(f"NVML could not be read: {exc!r}")
        return Probe.ok()

    def _open(self) -> tuple[_Gpu, ...]:
        nvml = self._load_module()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise _Unavailable(self._init_failure(nvml, exc)) from exc
        self._initialized = True
        count = nvml.nvmlDeviceGetCount()
        if count == 0:
            raise _Unavailable("no NVIDIA GPU (the driver is loaded but lists no devices)")
        gpus: list[_Gpu] = []
        not_ours: list[str] = []
        unreadable: list[str] = []
        on_jetson = self._on_jetson()
        for index in range(count):
            try:
                gpus.append(self._open_gpu(nvml, index, on_jetson))
            except _LeftOut as skip:
                # Not a GPU for this source (a Jetson's own, or one without memory figures).
                not_ours.append(str(skip))
                log.info("nvml: leaving GPU %d out: %s", index, skip)
            except nvml.NVMLError as exc:
                # One bad GPU should not hide the others; it is named in the log instead.
                unreadable.append(f"GPU {index}: {exc}")
                log.warning("nvml: leaving GPU %d out: %s", index, exc)
        if not gpus:
            if unreadable:
                raise _Unavailable(
                    "no readable NVIDIA GPU (" + "; ".join([*unreadable, *not_ours]) + ")"
                )
            raise _Unavailable("; ".join(not_ours))
        return tuple(gpus)

    def _load_module(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = self._opener()
            except ImportError as exc:
                reason = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
                raise _Unavailable(self._maybe_jetson(reason)) from exc
        return self._nvml

    def _init_failure(self, nvml: Any, exc: Any) -> str:
        code = _code(exc)
        if code == nvml.NVML_ERROR_LIBRARY_NOT_FOUND:
            return self._maybe_jetson("no NVIDIA driver (libnvidia-ml.so not found)")
        if code == nvml.NVML_ERROR_DRIVER_NOT_LOADED:
            return (
                "the NVIDIA driver is not loaded (libnvidia-ml.so is there, its kernel module not)"
            )
        return f"NVML failed to start: {exc} (NVML error {code})"

    def _maybe_jetson(self, reason: str) -> str:
        return f"{reason}; {_JETSON_HINT}" if self._on_jetson() else reason

    def _open_gpu(self, nvml: Any, index: int, on_jetson: bool) -> _Gpu:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = _text(nvml.nvmlDeviceGetName(handle))
        # JetPack 6's NVML names the integrated GPU "Orin (nvgpu)". Either way a Jetson's GPU
        # is unified RAM, which the jtop source reports as such; reading it here too would
        # report the same GPU twice, once with wrong memory semantics. A discrete GPU on a
        # Jetson-style board (IGX) is not the jtop source's, and is read here.
        if "nvgpu" in name or (on_jetson and _integrated_name(name)):
            raise _LeftOut(f"GPU {index} ({name}) is a Jetson's integrated GPU; {_JETSON_HINT}")
        try:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except nvml.NVMLError as exc:
            if _code(exc) == nvml.NVML_ERROR_NOT_SUPPORTED:
                # e.g. GB10 (DGX Spark): the GPU has no memory of its own for NVML to count.
                raise _LeftOut(
                    f"GPU {index} ({name}): NVML does not report its memory "
                    "(an integrated or unified-memory GPU)"
                ) from exc
            raise
        return _Gpu(
            index=index,
            handle=handle,
            name=name,
            compute_capability=_compute_capability(nvml, handle),
            memory_total_bytes=int(memory.total),
        )

    # -- sample --------------------------------------------------------------------------

    def sample(self) -> Reading:
        if not self._initialized:
            raise SourceError("NVML is not open (probe() did not succeed or close() ran)")
        return Reading(gpus=tuple(self._sample_gpu(gpu) for gpu in self._gpus))

    def _sample_gpu(self, gpu: _Gpu) -> GpuSample:
        nvml = self._nvml
        memory = self._memory(gpu)
        utilization = self._read(gpu, "nvmlDeviceGetUtilizationRates")
        temperature = self._first(gpu, _TEMPERATURE_CALLS, nvml.NVML_TEMPERATURE_GPU)
        power = self._read(gpu, "nvmlDeviceGetPowerUsage")
        limit = self._read(gpu, "nvmlDeviceGetEnforcedPowerLimit")
        return GpuSample(
            index=gpu.index,
            name=gpu.name,
            unified=False,
            compute_capability=gpu.compute_capability,
            memory_total_bytes=int(memory.total),
            # v1's `used` counts the driver's reserved memory too, which llama.cpp cannot
            # allocate either, so total = used + free holds for placement.
            memory_used_bytes=int(memory.used),
            memory_free_bytes=int(memory.free),
            utilization_ratio=None if utilization is None else utilization.gpu / _PERCENT,
            temperature_celsius=None if temperature is None else float(temperature),
            power_watts=None if power is None else power / _MILLIWATTS_PER_WATT,
            power_limit_watts=None if limit is None else limit / _MILLIWATTS_PER_WATT,
            clocks=self._clocks(gpu),
            throttle_reasons=self._throttle_reasons(gpu),
        )

    def _memory(self, gpu: _Gpu) -> Any:
        # The one reading placement cannot do without: any failure fails the sample.
        # v1 of the call, not _v2: every driver has it, and its `used` is what we want.
        try:
            return self._nvml.nvmlDeviceGetMemoryInfo(gpu.handle)
        except Exception as exc:  # NVMLError or a binding fault: SourceError either way
            raise SourceError(f"GPU {gpu.index} ({gpu.name}): memory read failed: {exc}") from exc

    def _clocks(self, gpu: _Gpu) -> tuple[Clock, ...]:
        clocks = []
        for domain, constant in _CLOCK_DOMAINS:
            mhz = self._read(
                gpu, "nvmlDeviceGetClockInfo", getattr(self._nvml, constant), key=domain
            )
            if mhz is not None:
                clocks.append(Clock(domain, mhz * _HERTZ_PER_MHZ))
        return tuple(clocks)

    def _throttle_reasons(self, gpu: _Gpu) -> tuple[str, ...]:
        mask = self._first(gpu, _EVENT_REASON_CALLS)
        return () if mask is None else _decode_throttle(int(mask))

    def _first(self, gpu: _Gpu, calls: tuple[str, ...], *args: Any) -> Any:
        """The answer of the first of `calls` (newest name first) that the binding has and the
        device supports; None where none does, or the one asked failed only for now (the
        older name would not do better then)."""
        for call in calls:
            if not hasattr(self._nvml, call):
                continue  # a binding too old, or so new it dropped the deprecated name
            value = self._read(gpu, call, *args)
            if value is not None:
                return value
            if call not in gpu.unsupported:
                return None
        return None

    def _read(self, gpu: _Gpu, call: str, *args: Any, key: str = "") -> Any:
        """`call(handle, *args)`, or None where the device cannot answer it. Only a lost GPU
        raises: one failing metric must not cost the others."""
        remembered = f"{call}:{key}" if key else call
        if remembered in gpu.unsupported:
            return None
        nvml = self._nvml
        try:
            return getattr(nvml, call)(gpu.handle, *args)
        except nvml.NVMLError as exc:
            code = _code(exc)
            if code in _codes(nvml, _LOST_ERRORS):
                raise SourceError(f"GPU {gpu.index} ({gpu.name}): {exc}") from exc
            if code in _codes(nvml, _ABSENT_ERRORS):
                gpu.unsupported.add(remembered)
            # Anything else (a timeout, an unknown error) may pass: None now, ask again.
            return None
        except Exception as exc:  # the binding itself is at fault
            # An AttributeError (a binding without the call), a TypeError (another signature)
            # or a ctypes error: not the device's answer, and it will not change. Said once,
            # then the metric is left out for good.
            gpu.unsupported.add(remembered)
            log.warning(
                "nvml: GPU %d (%s): %s failed (%r); leaving that metric out",
                gpu.index, gpu.name, call, exc,
            )  # fmt: skip
            return None

    # -- close ---------------------------------------------------------------------------

    def close(self) -> None:
        if not self._initialized:
            return
        self._initialized = False
        self._gpus = ()
        # close() runs while a worker shuts down; a failing nvmlShutdown must not hide why.
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()


def _code(exc: Any) -> Any:
    """The NVML_ERROR_* value an NVMLError carries."""
    return getattr(exc, "value", None)


def _codes(nvml: Any, names: tuple[str, ...]) -> set[int]:
    # By name from the module in use: bindings older than a code simply lack its name.
    return {getattr(nvml, name) for name in names if hasattr(nvml, name)}


def _text(value: str | bytes) -> str:
    # nvidia-ml-py before 11.515 returned names as bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _compute_capability(nvml: Any, handle: Any) -> str:
    try:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    except Exception:  # NVMLError or a binding fault alike
        return ""  # "unknown" in GpuSample's terms; nothing else depends on it here
    return f"{major}.{minor}"


def _integrated_name(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in _INTEGRATED_NAMES)


def _decode_throttle(mask: int) -> tuple[str, ...]:
    return tuple(name for bit, name in _THROTTLE_BITS if mask & bit)
