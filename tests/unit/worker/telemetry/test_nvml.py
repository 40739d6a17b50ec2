"""The NVML source against recorded library answers (tests/support/fake_nvml.py): the
normalised samples, the skip reasons, unsupported metrics, a lost GPU and closing."""

from __future__ import annotations

import logging

import pynvml
import pytest
from support.fake_nvml import FakeNvml

from common.telemetry import Clock, GpuSample
from worker.telemetry.nvml import NvmlSource
from worker.telemetry.source import SourceError

MiB = 1024 * 1024


def _not_jetson() -> bool:
    return False


def _jetson() -> bool:
    return True


def _opened(fake: FakeNvml, on_jetson=_not_jetson) -> NvmlSource:
    source = NvmlSource(fake.module, on_jetson=on_jetson)
    probe = source.probe()
    assert probe.available, probe.reason
    return source


def _skip_reason(fake: FakeNvml, on_jetson=_not_jetson) -> str:
    probe = NvmlSource(fake.module, on_jetson=on_jetson).probe()
    assert not probe.available
    return probe.reason


# -- normalised samples ----------------------------------------------------------------------


def test_rtx4090_sample_is_in_base_units():
    (gpu,) = _opened(FakeNvml.from_fixture("x86-rtx4090")).sample().gpus

    assert gpu == GpuSample(
        index=0,
        name="NVIDIA GeForce RTX 4090",
        unified=False,
        compute_capability="8.9",
        memory_total_bytes=24564 * MiB,
        memory_used_bytes=18948 * MiB,
        memory_free_bytes=(24564 - 18948) * MiB,
        utilization_ratio=0.97,
        temperature_celsius=71.0,
        power_watts=418.734,
        power_limit_watts=450.0,
        clocks=(
            Clock("graphics", 2610e6),
            Clock("sm", 2610e6),
            Clock("memory", 10501e6),
            Clock("video", 2160e6),
        ),
        throttle_reasons=("sw_power_cap",),
    )


def test_two_gpus_each_normalised_and_unsupported_power_is_none():
    gpus = _opened(FakeNvml.from_fixture("x86-2gpu-rtx3090-rtx3060")).sample().gpus

    assert [g.index for g in gpus] == [0, 1]
    rtx3090, rtx3060 = gpus
    assert (rtx3090.name, rtx3090.compute_capability) == ("NVIDIA GeForce RTX 3090", "8.6")
    assert rtx3090.memory_total_bytes == 24576 * MiB == 25_769_803_776
    assert rtx3090.memory_free_bytes == 3_539_992_576
    assert rtx3090.utilization_ratio == 0.88
    assert (rtx3090.power_watts, rtx3090.power_limit_watts) == (347.512, 350.0)
    assert rtx3090.throttle_reasons == ("sw_power_cap", "sw_thermal_slowdown")

    assert rtx3060.name == "NVIDIA GeForce RTX 3060"
    assert (rtx3060.memory_total_bytes, rtx3060.memory_used_bytes) == (12288 * MiB, 8070 * MiB)
    assert rtx3060.utilization_ratio == 0.0  # a real zero, not a missing reading
    assert rtx3060.temperature_celsius == 46.0
    assert rtx3060.power_watts is None and rtx3060.power_limit_watts is None
    assert rtx3060.clocks[0] == Clock("graphics", 210e6)
    assert rtx3060.throttle_reasons == ()  # GpuIdle only: idle is not throttling


def test_memory_used_and_free_add_up_to_total():
    for gpu in _opened(FakeNvml.from_fixture("x86-2gpu-rtx3090-rtx3060")).sample().gpus:
        assert gpu.memory_used_bytes + gpu.memory_free_bytes == gpu.memory_total_bytes


def test_samples_follow_the_device():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    source = _opened(fake)
    device = fake.fixture["devices"][0]
    device["nvmlDeviceGetMemoryInfo"] = {
        "total": 24564 * MiB,
        "free": 20 * MiB,
        "used": 24544 * MiB,
    }
    device["nvmlDeviceGetTemperature"]["NVML_TEMPERATURE_GPU"] = 83

    (gpu,) = source.sample().gpus

    assert (gpu.memory_free_bytes, gpu.temperature_celsius) == (20 * MiB, 83.0)


def test_name_as_bytes_from_old_bindings_is_decoded():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    fake.module.nvmlDeviceGetName = lambda handle: b"NVIDIA GeForce RTX 4090"

    (gpu,) = _opened(fake).sample().gpus

    assert gpu.name == "NVIDIA GeForce RTX 4090"


def test_unknown_compute_capability_is_empty():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    fake.fixture["devices"][0]["nvmlDeviceGetCudaComputeCapability"] = {
        "error": "NVML_ERROR_NOT_SUPPORTED"
    }

    (gpu,) = _opened(fake).sample().gpus

    assert gpu.compute_capability == ""


# -- throttle reasons ------------------------------------------------------------------------


def _with_event_mask(mask: int) -> tuple[str, ...]:
    fake = FakeNvml.from_fixture("x86-rtx4090")
    fake.fixture["devices"][0]["nvmlDeviceGetCurrentClocksEventReasons"] = mask
    (gpu,) = _opened(fake).sample().gpus
    return gpu.throttle_reasons


def test_every_throttle_bit_is_named_and_idle_and_app_clocks_are_not():
    # The older names' "All" has two bits more than the event names' (board limit, reliability).
    every_bit = pynvml.nvmlClocksThrottleReasonAll

    assert _with_event_mask(every_bit) == (
        "sw_power_cap",
        "hw_slowdown",
        "sync_boost",
        "sw_thermal_slowdown",
        "hw_thermal_slowdown",
        "hw_power_brake_slowdown",
        "display_clock_setting",
        "board_limit",
        "reliability",
    )


@pytest.mark.parametrize(
    ("constant", "name"),
    [("BoardLimit", "board_limit"), ("Reliability", "reliability")],
)
def test_board_limit_and_reliability_are_reported(constant, name):
    # nvidia-ml-py names these bits only under the older "ThrottleReason" names.
    mask = getattr(pynvml, f"nvmlClocksThrottleReason{constant}")
    assert _with_event_mask(mask | pynvml.nvmlClocksEventReasonSwPowerCap) == (
        "sw_power_cap",
        name,
    )


@pytest.mark.parametrize(
    ("constant", "name"),
    [
        ("SwPowerCap", "sw_power_cap"),
        ("HwSlowdown", "hw_slowdown"),
        ("SyncBoost", "sync_boost"),
        ("SwThermalSlowdown", "sw_thermal_slowdown"),
        ("HwThermalSlowdown", "hw_thermal_slowdown"),
        ("HwPowerBrakeSlowdown", "hw_power_brake_slowdown"),
        ("DisplayClockSetting", "display_clock_setting"),
    ],
)
def test_each_reason_matches_the_librarys_bit(constant, name):
    mask = getattr(pynvml, f"nvmlClocksEventReason{constant}")
    assert _with_event_mask(mask | pynvml.nvmlClocksEventReasonGpuIdle) == (name,)


def test_idle_and_application_clocks_are_not_throttling():
    mask = (
        pynvml.nvmlClocksEventReasonGpuIdle | pynvml.nvmlClocksEventReasonApplicationsClocksSetting
    )
    assert _with_event_mask(mask) == ()


def test_old_bindings_without_the_event_call_use_the_throttle_call():
    fake = FakeNvml.from_fixture("x86-rtx4090", without=["nvmlDeviceGetCurrentClocksEventReasons"])

    (gpu,) = _opened(fake).sample().gpus

    assert gpu.throttle_reasons == ("sw_power_cap",)
    assert fake.count("nvmlDeviceGetCurrentClocksThrottleReasons") == 1


def test_old_driver_without_the_event_symbol_falls_back_and_stops_asking_for_it():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    device = fake.fixture["devices"][0]
    device["nvmlDeviceGetCurrentClocksEventReasons"] = {"error": "NVML_ERROR_FUNCTION_NOT_FOUND"}
    device["nvmlDeviceGetCurrentClocksThrottleReasons"] = pynvml.nvmlClocksThrottleReasonHwSlowdown
    source = _opened(fake)

    samples = [source.sample().gpus[0] for _ in range(3)]

    assert [s.throttle_reasons for s in samples] == [("hw_slowdown",)] * 3
    assert fake.count("nvmlDeviceGetCurrentClocksEventReasons") == 1
    assert fake.count("nvmlDeviceGetCurrentClocksThrottleReasons") == 3


# -- temperature: the versioned call first ---------------------------------------------------


def test_a_binding_without_the_deprecated_temperature_call_still_samples():
    # A binding that dropped nvmlDeviceGetTemperature (deprecated, gone with CUDA 14): asking
    # for it raised AttributeError out of sample(), which killed the sampler at start.
    fake = FakeNvml.from_fixture("x86-rtx4090", without=["nvmlDeviceGetTemperature"])

    (gpu,) = _opened(fake).sample().gpus

    assert gpu.temperature_celsius == 71.0
    assert fake.count("nvmlDeviceGetTemperatureV") == 1


def test_the_versioned_temperature_call_is_preferred():
    fake = FakeNvml.from_fixture("x86-rtx4090")

    (gpu,) = _opened(fake).sample().gpus

    assert gpu.temperature_celsius == 71.0
    assert (fake.count("nvmlDeviceGetTemperatureV"), fake.count("nvmlDeviceGetTemperature")) == (
        1,
        0,
    )


def test_old_bindings_without_the_versioned_call_use_the_old_one():
    fake = FakeNvml.from_fixture("x86-rtx4090", without=["nvmlDeviceGetTemperatureV"])

    (gpu,) = _opened(fake).sample().gpus

    assert gpu.temperature_celsius == 71.0


def test_a_driver_without_the_versioned_symbol_falls_back_and_stops_asking_for_it():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    fake.fixture["devices"][0]["nvmlDeviceGetTemperatureV"] = {
        "error": "NVML_ERROR_FUNCTION_NOT_FOUND"
    }
    source = _opened(fake)

    temperatures = [source.sample().gpus[0].temperature_celsius for _ in range(3)]

    assert temperatures == [71.0] * 3
    assert fake.count("nvmlDeviceGetTemperatureV") == 1
    assert fake.count("nvmlDeviceGetTemperature") == 3


# -- one failing metric never stops the others ---------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [TypeError("nvmlDeviceGetPowerUsage() takes 0 arguments"), AttributeError("_nvmlLib")],
)
def test_any_exception_from_one_metric_leaves_it_out_and_keeps_the_others(error, caplog):
    fake = FakeNvml.from_fixture("x86-rtx4090")
    calls = []

    def broken(handle):
        calls.append(handle)
        raise error

    fake.module.nvmlDeviceGetPowerUsage = broken
    source = _opened(fake)

    with caplog.at_level(logging.WARNING, logger="worker.telemetry.nvml"):
        first, second = source.sample().gpus[0], source.sample().gpus[0]

    assert first.power_watts is None and second.power_watts is None
    assert (first.temperature_celsius, first.power_limit_watts) == (71.0, 450.0)
    assert first.utilization_ratio == 0.97 and len(first.clocks) == 4
    assert len(calls) == 1  # a binding fault does not mend itself: not asked again
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "nvmlDeviceGetPowerUsage" in warning and type(error).__name__ in warning


def test_a_binding_fault_in_the_memory_read_is_a_source_error():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    source = _opened(fake)

    def broken(handle):
        raise AttributeError("function pointer not found")

    fake.module.nvmlDeviceGetMemoryInfo = broken

    with pytest.raises(SourceError, match="memory read failed: function pointer not found"):
        source.sample()


# -- unsupported metrics ---------------------------------------------------------------------


def test_unsupported_metrics_are_not_asked_again():
    fake = FakeNvml.from_fixture("x86-2gpu-rtx3090-rtx3060")
    source = _opened(fake)

    for _ in range(5):
        source.sample()

    assert fake.count("nvmlDeviceGetPowerUsage", 1) == 1
    assert fake.count("nvmlDeviceGetEnforcedPowerLimit", 1) == 1
    # The other GPU's power, and the unsupported GPU's other metrics, are read every time.
    assert fake.count("nvmlDeviceGetPowerUsage", 0) == 5
    assert fake.count("nvmlDeviceGetTemperatureV", 1) == 5


@pytest.mark.parametrize("error", ["NVML_ERROR_NO_PERMISSION", "NVML_ERROR_NOT_SUPPORTED"])
def test_one_unsupported_clock_domain_leaves_the_others(error):
    fake = FakeNvml.from_fixture("x86-rtx4090")
    fake.fixture["devices"][0]["nvmlDeviceGetClockInfo"]["NVML_CLOCK_VIDEO"] = {"error": error}
    source = _opened(fake)

    first, second = source.sample().gpus[0], source.sample().gpus[0]

    assert [c.domain for c in first.clocks] == ["graphics", "sm", "memory"]
    assert second.clocks == first.clocks
    assert fake.count("nvmlDeviceGetClockInfo") == 4 + 3


def test_a_passing_error_gives_none_once_and_is_asked_again():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    device = fake.fixture["devices"][0]
    device["nvmlDeviceGetUtilizationRates"] = {"error": "NVML_ERROR_TIMEOUT"}
    source = _opened(fake)

    assert source.sample().gpus[0].utilization_ratio is None
    device["nvmlDeviceGetUtilizationRates"] = {"gpu": 40, "memory": 10}
    assert source.sample().gpus[0].utilization_ratio == 0.4


# -- skips -----------------------------------------------------------------------------------


def test_missing_module_says_to_install_nvidia_ml_py():
    def opener():
        raise ImportError("No module named 'pynvml'")

    probe = NvmlSource(opener=opener, on_jetson=_not_jetson).probe()

    assert not probe.available
    assert "pip install nvidia-ml-py" in probe.reason


def test_library_not_found():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    fake.fixture["nvmlInit"] = {"error": "NVML_ERROR_LIBRARY_NOT_FOUND"}

    assert _skip_reason(fake) == "no NVIDIA driver (libnvidia-ml.so not found)"
    assert fake.count("nvmlDeviceGetCount") == 0


def test_driver_not_loaded():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    fake.fixture["nvmlInit"] = {"error": "NVML_ERROR_DRIVER_NOT_LOADED"}

    assert "driver is not loaded" in _skip_reason(fake)


def test_any_other_init_error_is_named():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    fake.fixture["nvmlInit"] = {"error": "NVML_ERROR_LIB_RM_VERSION_MISMATCH"}

    reason = _skip_reason(fake)

    assert "NVML/RM version mismatch" in reason and "NVML error 18" in reason


def test_zero_gpus_skips_and_shuts_nvml_down():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    fake.fixture["devices"] = []
    source = NvmlSource(fake.module, on_jetson=_not_jetson)

    probe = source.probe()
    source.close()

    assert probe.reason.startswith("no NVIDIA GPU")
    assert fake.count("nvmlShutdown") == 1


def test_jetson_orin_on_jetpack_6_points_to_jtop():
    fake = FakeNvml.from_fixture("jetson-orin")

    # The name alone tells, even where L4T's files are not visible (a container).
    reason = _skip_reason(fake, on_jetson=_not_jetson)

    assert "Orin (nvgpu)" in reason and "jtop" in reason
    assert fake.count("nvmlShutdown") == 1


def test_jetson_on_jetpack_5_without_nvml_points_to_jtop():
    fake = FakeNvml.from_fixture("jetson-orin")
    fake.fixture["nvmlInit"] = {"error": "NVML_ERROR_LIBRARY_NOT_FOUND"}

    reason = _skip_reason(fake, on_jetson=_jetson)

    assert "libnvidia-ml.so not found" in reason and "jtop" in reason


def test_a_jetson_whose_nvml_reports_memory_is_still_left_to_jtop():
    fake = FakeNvml.from_fixture("x86-rtx4090")  # as a Thor-like board might answer
    fake.fixture["devices"][0]["nvmlDeviceGetName"] = "NVIDIA Thor"

    assert "jtop" in _skip_reason(fake, on_jetson=_jetson)


def test_a_discrete_gpu_on_a_jetson_style_board_is_read_beside_the_integrated_one():
    # IGX Orin with an RTX card: NVML lists the card (and, in iGPU mode, the Orin GPU too).
    fake = FakeNvml.from_fixture("jetson-orin")
    fake.fixture["devices"].append(FakeNvml.from_fixture("x86-rtx4090").fixture["devices"][0])

    (gpu,) = _opened(fake, on_jetson=_jetson).sample().gpus

    assert (gpu.index, gpu.name, gpu.unified) == (1, "NVIDIA GeForce RTX 4090", False)
    assert gpu.memory_total_bytes == 24564 * MiB and gpu.temperature_celsius == 71.0


def test_a_jetson_with_only_its_integrated_gpu_says_so_not_unreadable():
    reason = _skip_reason(FakeNvml.from_fixture("jetson-orin"), on_jetson=_jetson)

    assert reason == (
        "GPU 0 (Orin (nvgpu)) is a Jetson's integrated GPU; Jetson GPUs are read through jtop "
        "(pip install jetson-stats), not NVML"
    )


def test_unified_memory_gpu_without_memory_figures_is_skipped():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    device = fake.fixture["devices"][0]
    device["nvmlDeviceGetName"] = "NVIDIA GB10"
    device["nvmlDeviceGetMemoryInfo"] = {"error": "NVML_ERROR_NOT_SUPPORTED"}

    reason = _skip_reason(fake)

    assert "NVIDIA GB10" in reason and "does not report its memory" in reason


def test_an_unreadable_gpu_is_left_out_and_the_others_kept():
    fake = FakeNvml.from_fixture("x86-2gpu-rtx3090-rtx3060")
    fake.fixture["devices"][0]["nvmlDeviceGetName"] = {"error": "NVML_ERROR_NO_PERMISSION"}

    gpus = _opened(fake).sample().gpus

    assert [g.name for g in gpus] == ["NVIDIA GeForce RTX 3060"]
    assert gpus[0].index == 1


def test_probe_does_not_raise_on_the_unexpected():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    del fake.fixture["devices"][0]["nvmlDeviceGetMemoryInfo"]  # the fake raises LookupError

    probe = NvmlSource(fake.module, on_jetson=_not_jetson).probe()

    assert not probe.available and "LookupError" in probe.reason
    assert fake.count("nvmlShutdown") == 1


# -- failures and closing --------------------------------------------------------------------


def test_lost_gpu_raises_source_error_naming_it():
    fake = FakeNvml.from_fixture("x86-2gpu-rtx3090-rtx3060")
    source = _opened(fake)
    source.sample()

    fake.lose_gpu(1)

    with pytest.raises(SourceError, match=r"GPU 1 .*GPU is lost"):
        source.sample()


def test_lost_gpu_on_a_metric_read_raises_too():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    source = _opened(fake)
    fake.fixture["devices"][0]["nvmlDeviceGetTemperature"] = {"error": "NVML_ERROR_GPU_IS_LOST"}

    with pytest.raises(SourceError, match="GPU 0"):
        source.sample()


def test_unexpected_memory_error_raises_source_error():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    source = _opened(fake)
    fake.fixture["devices"][0]["nvmlDeviceGetMemoryInfo"] = {"error": "NVML_ERROR_UNKNOWN"}

    with pytest.raises(SourceError, match=r"GPU 0 \(NVIDIA GeForce RTX 4090\).*Unknown Error"):
        source.sample()


def test_close_shuts_nvml_down_once():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    source = _opened(fake)

    source.close()
    source.close()

    assert fake.count("nvmlShutdown") == 1
    assert not fake.initialized
    with pytest.raises(SourceError):
        source.sample()


def test_close_without_init_does_nothing_and_a_failing_shutdown_does_not_raise():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    fake.fixture["nvmlInit"] = {"error": "NVML_ERROR_LIBRARY_NOT_FOUND"}
    skipped = NvmlSource(fake.module, on_jetson=_not_jetson)
    skipped.probe()
    skipped.close()
    assert fake.count("nvmlShutdown") == 0

    other = FakeNvml.from_fixture("x86-rtx4090")
    working = _opened(other)

    def failing_shutdown():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    other.module.nvmlShutdown = failing_shutdown
    working.close()  # does not raise


def test_probing_twice_keeps_init_and_shutdown_balanced():
    fake = FakeNvml.from_fixture("x86-rtx4090")
    source = _opened(fake)

    assert source.probe().available
    source.close()

    assert fake.count("nvmlInit") == fake.count("nvmlShutdown") == 2
