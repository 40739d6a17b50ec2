"""A stand-in for the `pynvml` module that replays a recorded fixture instead of calling the
driver, for the NVML telemetry source's tests.

Shapes follow nvidia-ml-py 13.x (the version in the venv): names come back as str, memory and
utilisation as the real ctypes structs (v1 memory only), handles as real `c_nvmlDevice_t`
pointers, and errors as the real `pynvml.NVMLError(code)`, so the library's own mapping of a
code to its `NVMLError_*` subclass is what the code under test sees. Every constant, struct
and exception class is the real module's; only the calls that would reach the driver are
replaced, and any other pynvml function is absent so an unexpected call fails loudly.

The fixture format is described in the `_about` of tests/fixtures/telemetry/nvml/*.json.
"""

from __future__ import annotations

import copy
import ctypes
import inspect
import json
import types
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pynvml

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "telemetry" / "nvml"

# The calls replayed from a fixture; everything else that calls the driver is left out.
REPLAYED = (
    "nvmlInit",
    "nvmlShutdown",
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetNVMLVersion",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetName",
    "nvmlDeviceGetCudaComputeCapability",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetTemperatureV",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
)

_REAL_PREFIXES = ("NVML_", "nvml", "c_nvml", "NVMLError")


def load_fixture(name: str) -> dict[str, Any]:
    """A fixture by file stem, e.g. "x86-rtx4090"; a fresh copy each time, free to edit."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


class FakeNvml:
    """Replays one fixture. `module` is what to hand to NvmlSource in place of pynvml.

    `without` names replayed calls to leave out of `module`, as an older nvidia-ml-py
    would (e.g. "nvmlDeviceGetCurrentClocksEventReasons" before 12.535).
    `calls` counts every replayed call as (name, device index or None).
    """

    def __init__(self, fixture: dict[str, Any], *, without: Iterable[str] = ()) -> None:
        self.fixture = copy.deepcopy(fixture)
        self.calls: Counter[tuple[str, int | None]] = Counter()
        self.initialized = False
        self._lost: set[int] = set()
        self.module = self._build_module(set(without))

    @classmethod
    def from_fixture(cls, name: str, *, without: Iterable[str] = ()) -> FakeNvml:
        return cls(load_fixture(name), without=without)

    def _build_module(self, without: set[str]) -> types.ModuleType:
        module = types.ModuleType("pynvml", "fake_nvml replaying a recorded fixture")
        for name, value in vars(pynvml).items():
            if name.startswith(_REAL_PREFIXES) and not inspect.isfunction(value):
                setattr(module, name, value)
        for name in REPLAYED:
            if name not in without:
                setattr(module, name, getattr(self, name))
        return module

    # -- test controls -------------------------------------------------------------------

    def lose_gpu(self, index: int) -> None:
        """From now on every call about GPU `index` raises NVML_ERROR_GPU_IS_LOST."""
        self._lost.add(index)

    def count(self, name: str, index: int | None = None) -> int:
        """How many times `name` was called (for GPU `index`, or in all)."""
        if index is not None:
            return self.calls[(name, index)]
        return sum(n for (call, _), n in self.calls.items() if call == name)

    # -- library-wide calls --------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls[("nvmlInit", None)] += 1
        _raise_recorded(self.fixture.get("nvmlInit"))
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.calls[("nvmlShutdown", None)] += 1
        self._require_init()
        self.initialized = False

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self._system("nvmlSystemGetDriverVersion"))

    def nvmlSystemGetNVMLVersion(self) -> str:
        return str(self._system("nvmlSystemGetNVMLVersion"))

    def nvmlDeviceGetCount(self) -> int:
        self.calls[("nvmlDeviceGetCount", None)] += 1
        self._require_init()
        return len(self.fixture["devices"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self.calls[("nvmlDeviceGetHandleByIndex", index)] += 1
        self._require_init()
        if not 0 <= index < len(self.fixture["devices"]):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index in self._lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        # A real handle type whose address is index + 1 (not NULL), so it maps back.
        return ctypes.cast(ctypes.c_void_p(index + 1), pynvml.c_nvmlDevice_t)

    # -- per-device calls ----------------------------------------------------------------

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return str(self._device_call("nvmlDeviceGetName", handle))

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]:
        major, minor = self._device_call("nvmlDeviceGetCudaComputeCapability", handle)
        return (major, minor)

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        if version:
            raise NotImplementedError("the fixtures record the v1 memory call only")
        recorded = self._device_call("nvmlDeviceGetMemoryInfo", handle)
        return pynvml.c_nvmlMemory_t(**recorded)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        recorded = self._device_call("nvmlDeviceGetUtilizationRates", handle)
        return pynvml.c_nvmlUtilization_t(**recorded)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        return int(self._device_call("nvmlDeviceGetTemperature", handle, sensor))

    def nvmlDeviceGetTemperatureV(
        self, handle: Any, sensor: int, version: int = pynvml.nvmlTemperature_v1
    ) -> int:
        # The versioned call (R535+) reads the same sensor; a fixture records it separately
        # only to say the two differ (a driver lacking the new C symbol).
        if version != pynvml.nvmlTemperature_v1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        name = "nvmlDeviceGetTemperatureV"
        device = self._device(handle, name)
        key = name if name in device else "nvmlDeviceGetTemperature"
        return int(_replay(device, key, sensor))

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return int(self._device_call("nvmlDeviceGetPowerUsage", handle))

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        return int(self._device_call("nvmlDeviceGetEnforcedPowerLimit", handle))

    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int) -> int:
        return int(self._device_call("nvmlDeviceGetClockInfo", handle, clock_type))

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        return int(self._device_call("nvmlDeviceGetCurrentClocksEventReasons", handle))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
        # The deprecated name reads the same bitmask; a fixture records it separately only
        # to say the two differ (an older driver lacking the new C symbol).
        name = "nvmlDeviceGetCurrentClocksThrottleReasons"
        device = self._device(handle, name)
        key = name if name in device else "nvmlDeviceGetCurrentClocksEventReasons"
        return int(_replay(device, key))

    # -- replay --------------------------------------------------------------------------

    def _system(self, name: str) -> Any:
        self.calls[(name, None)] += 1
        self._require_init()
        return _replay(self.fixture, name)

    def _device_call(self, name: str, handle: Any, argument: int | None = None) -> Any:
        return _replay(self._device(handle, name), name, argument)

    def _device(self, handle: Any, name: str) -> dict[str, Any]:
        index = _index(handle)
        self.calls[(name, index)] += 1
        self._require_init()
        if index in self._lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        device: dict[str, Any] = self.fixture["devices"][index]
        return device

    def _require_init(self) -> None:
        if not self.initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)


def _index(handle: Any) -> int:
    address = ctypes.cast(handle, ctypes.c_void_p).value
    if not address:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    return int(address) - 1


def _replay(record: dict[str, Any], name: str, argument: int | None = None) -> Any:
    """The recorded result of `name`, raising it where the recording is an error."""
    if name not in record:
        raise LookupError(f"the fixture does not record {name}")
    value = record[name]
    _raise_recorded(value)
    if argument is None:
        return value
    # Keyed by constant name; several NVML_* constants share a value, so the recorded
    # names, not the value, decide which one was meant.
    for constant, result in value.items():
        if getattr(pynvml, constant) == argument:
            _raise_recorded(result)
            return result
    raise LookupError(f"the fixture does not record {name} for argument {argument}")


def _raise_recorded(value: Any) -> None:
    if isinstance(value, dict) and "error" in value:
        raise pynvml.NVMLError(getattr(pynvml, value["error"]))
