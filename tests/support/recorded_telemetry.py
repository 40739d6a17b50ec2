"""Recorded boards driven through their thermal and power ranges, for the tests of routing,
placement and admission by heat and power.

A RecordedJetson replays a jtop fixture (tests/fixtures/telemetry/jetson) through the real
Jetson telemetry source, a RecordedGpuBox an NVML fixture (tests/fixtures/telemetry/nvml)
through the real NVML source; each edit changes what the library reports next, scaled as a
board heating up or drawing more under load keeps its zones' and rails' proportions, and
`sample(now)` is the NodeSample a heartbeat would carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.fake_jtop import FakeJtop
from support.fake_nvml import FakeNvml

from common.telemetry import NodeSample
from worker.telemetry.jetson import JetsonSource
from worker.telemetry.nvml import NvmlSource

GiB = 1024**3
TEGRA_RELEASE = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64"


class RecordedJetson:
    """A Jetson board (fixture stem, e.g. "agx-orin-64gb") read by the real JetsonSource.
    `tegra_release` is where its /etc/nv_tegra_release is written."""

    def __init__(self, name: str, tegra_release: Path) -> None:
        tegra_release.write_text(TEGRA_RELEASE)
        self.fake = FakeJtop.from_fixture(name)
        self.source = JetsonSource(
            open_jtop=self.fake.opener, tegra_release=tegra_release, mem_available=lambda: 4 * GiB
        )
        if not self.source.probe().available:
            raise AssertionError(f"the recorded {name} did not probe")
        self.recorded_watts = self.watts
        self.recorded_hottest = self.hottest

    @property
    def fixture(self) -> dict[str, Any]:
        return self.fake.fixture

    @property
    def watts(self) -> float:
        """The board total jtop reports now (its 'tot'), in watts."""
        return float(self.fixture["power"]["tot"]["power"]) / 1000

    @property
    def hottest(self) -> float:
        return max(float(z["temp"]) for z in self.fixture["temperature"].values() if z["online"])

    def heat_to(self, celsius: float) -> RecordedJetson:
        """Scales every online zone so the hottest reads `celsius`."""
        top = self.hottest
        for zone in self.fixture["temperature"].values():
            if zone["online"]:
                zone["temp"] = zone["temp"] * celsius / top
        return self

    def throttle(self, on: bool = True) -> RecordedJetson:
        """The GPU zone at (or back below) its own limit: jtop's 'max' for the zone, which the
        source reports as "thermal:gpu"."""
        gpu = self.fixture["temperature"]["gpu"]
        if on:
            gpu["max"] = gpu["temp"]
        else:
            gpu.pop("max", None)
        return self

    def draw(self, watts: float) -> RecordedJetson:
        """Scales every rail's current and power, and the total, so the board draws `watts`
        (idle to loaded: the rails keep their proportions, volts stay)."""
        ratio = watts / self.watts
        power = self.fixture["power"]
        for row in (*power["rail"].values(), power["tot"]):
            for key in ("curr", "power", "avg"):
                if key in row:
                    row[key] = round(row[key] * ratio)
        return self

    def sample(self, now: float) -> NodeSample:
        reading = self.source.sample()
        return NodeSample(now, None, reading.gpus, reading.jetson, ("jetson",))

    def close(self) -> None:
        self.source.close()


class RecordedGpuBox:
    """A PC with discrete GPUs (fixture stem, e.g. "x86-rtx4090") read by the real NvmlSource."""

    def __init__(self, name: str) -> None:
        self.fake = FakeNvml.from_fixture(name)
        self.source = NvmlSource(self.fake.module, on_jetson=lambda: False)
        if not self.source.probe().available:
            raise AssertionError(f"the recorded {name} did not probe")

    def draw(self, watts: float) -> RecordedGpuBox:
        """Every GPU's draw scaled so they draw `watts` together."""
        devices = self.fake.fixture["devices"]
        total = sum(d["nvmlDeviceGetPowerUsage"] for d in devices)
        for device in devices:
            device["nvmlDeviceGetPowerUsage"] = round(
                device["nvmlDeviceGetPowerUsage"] * watts * 1000 / total
            )
        return self

    def heat_to(self, celsius: int) -> RecordedGpuBox:
        """Every GPU reads `celsius` (NVML reports whole degrees)."""
        for device in self.fake.fixture["devices"]:
            device["nvmlDeviceGetTemperature"] = {"NVML_TEMPERATURE_GPU": celsius}
        return self

    def clocks_held(self, *reasons: int) -> RecordedGpuBox:
        """Every GPU reports these clock event reasons (pynvml.nvmlClocksEventReason*); none
        for clocks running free."""
        mask = 0
        for reason in reasons:
            mask |= reason
        for device in self.fake.fixture["devices"]:
            device["nvmlDeviceGetCurrentClocksEventReasons"] = mask
        return self

    def sample(self, now: float) -> NodeSample:
        reading = self.source.sample()
        return NodeSample(now, None, reading.gpus, None, ("nvml",))

    def close(self) -> None:
        self.source.close()
