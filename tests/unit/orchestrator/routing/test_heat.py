"""Heat weights from real-shaped samples: the recorded Jetson boards read through the real
Jetson source (a jtop stand-in replays the fixtures), driven through their thermal ranges
and throttle flags; NVML-shaped GPUs from the samples factory; staleness and power."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fake_jtop import FakeJtop
from support.samples_factory import dgpu, host_sample, jetson_sample, node_sample

from common.telemetry import NodeSample, Temperature
from orchestrator.routing.heat import (
    DGPU_LIMITS,
    HARD_FACTOR,
    JETSON_LIMITS,
    MAX_AGE_S,
    MIN_WEIGHT,
    POWER_THROTTLE_FACTOR,
    THERMAL_THROTTLE_FACTOR,
    WeightCache,
    heat,
    heat_weight,
    node_watts,
)
from worker.telemetry.jetson import JetsonSource

NOW = 1_764_000_000.0
GiB = 1024**3

Sampler = Callable[[Callable[[dict[str, Any]], None]], NodeSample]


@pytest.fixture
def tegra_release(tmp_path: Path) -> Path:
    path = tmp_path / "nv_tegra_release"
    path.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64")
    return path


def _board(name: str, tegra_release: Path) -> Iterator[Sampler]:
    """A sampler of the recorded board `name`: edit(fixture) changes what jtop reports next,
    then the real Jetson source reads it into the NodeSample a heartbeat would carry."""
    fake = FakeJtop.from_fixture(name)
    source = JetsonSource(
        open_jtop=fake.opener, tegra_release=tegra_release, mem_available=lambda: 4 * GiB
    )
    assert source.probe().available

    def sample(edit: Callable[[dict[str, Any]], None] = lambda _: None) -> NodeSample:
        edit(fake.fixture)
        reading = source.sample()
        return NodeSample(NOW, None, reading.gpus, reading.jetson, ("jetson",))

    yield sample
    source.close()


@pytest.fixture
def agx(tegra_release: Path) -> Iterator[Sampler]:
    yield from _board("agx-orin-64gb", tegra_release)


@pytest.fixture
def nano(tegra_release: Path) -> Iterator[Sampler]:
    yield from _board("orin-nano-8gb", tegra_release)


def hottest_at(celsius: float) -> Callable[[dict[str, Any]], None]:
    """Scales every online zone so the hottest reads `celsius`, as a board heating up
    under load keeps its zones' spread."""

    def edit(fixture: dict[str, Any]) -> None:
        online = [z for z in fixture["temperature"].values() if z["online"]]
        top = max(z["temp"] for z in online)
        for zone in online:
            zone["temp"] = zone["temp"] * celsius / top

    return edit


def _expected(celsius: float) -> float:
    soft, hard = JETSON_LIMITS.soft_celsius, JETSON_LIMITS.hard_celsius
    if celsius <= soft:
        return 1.0
    if celsius >= hard:
        return HARD_FACTOR
    return 1.0 - (1.0 - HARD_FACTOR) * (celsius - soft) / (hard - soft)


# ---- Jetson boards, as recorded and driven through their range ------------------------------


@pytest.mark.parametrize("board", ["agx", "nano"])
def test_recorded_boards_are_cool_and_unthrottled(
    board: str, request: pytest.FixtureRequest
) -> None:
    sampler: Sampler = request.getfixturevalue(board)
    found = heat(sampler(lambda _: None), NOW)
    assert found.weight == 1.0
    assert found.measured  # the zones were read: cool, not unknown
    assert not found.thermal_throttle and not found.power_throttle
    # AGX: gpu and tj both at 61.437, gpu listed first; Nano: gpu and tj at 53.468.
    assert (found.hottest_zone, found.hottest_celsius) == (
        ("gpu", 61.437) if board == "agx" else ("gpu", 53.468)
    )


@pytest.mark.parametrize("celsius", [40.0, 70.0, 85.0, 87.5, 90.0, 92.5, 95.0, 99.0, 105.0])
def test_agx_weight_follows_its_hottest_zone(agx: Sampler, celsius: float) -> None:
    found = heat(agx(hottest_at(celsius)), NOW)
    assert found.hottest_celsius == pytest.approx(celsius)
    assert found.weight == pytest.approx(_expected(celsius))


def test_nano_weight_falls_monotonically_as_it_heats_and_recovers_as_it_cools(
    nano: Sampler,
) -> None:
    rising = [heat_weight(nano(hottest_at(float(c))), NOW) for c in range(50, 106)]
    assert all(a >= b for a, b in itertools.pairwise(rising))
    assert rising[0] == 1.0 and rising[-1] == HARD_FACTOR
    # Cooling back down gives the whole share back: the weight has no memory.
    assert heat_weight(nano(hottest_at(60.0)), NOW) == 1.0


def test_offline_zones_do_not_count(nano: Sampler) -> None:
    # The Nano's cv0-cv2 read -256 with online false; turning them "hot" but offline is ignored.
    def offline_hot(fixture: dict[str, Any]) -> None:
        fixture["temperature"]["cv0"].update(temp=120.0, online=False)

    assert heat_weight(nano(offline_hot), NOW) == 1.0


def test_a_jetson_zone_at_its_own_limit_is_thermal_throttling(agx: Sampler) -> None:
    # jtop gives hwmon zones a 'max'; the source reports "thermal:<zone>" at or above it.
    # 70 degrees is cool by the default limits: the board's own limit is what counts.
    def at_limit(fixture: dict[str, Any]) -> None:
        hottest_at(70.0)(fixture)
        fixture["temperature"]["gpu"]["max"] = 70.0

    found = heat(agx(at_limit), NOW)
    assert found.thermal_throttle and not found.power_throttle
    assert found.weight == pytest.approx(THERMAL_THROTTLE_FACTOR)


def test_a_rail_over_its_current_warning_is_power_throttling(agx: Sampler) -> None:
    # VDD_GPU_SOC draws 3412 mA; a 3000 mA warning limit makes it "power:VDD_GPU_SOC".
    def over_warn(fixture: dict[str, Any]) -> None:
        fixture["power"]["rail"]["VDD_GPU_SOC"]["warn"] = 3000

    found = heat(agx(over_warn), NOW)
    assert found.power_throttle and not found.thermal_throttle
    assert found.weight == pytest.approx(POWER_THROTTLE_FACTOR)


def test_heat_and_throttling_multiply_down_to_the_floor(agx: Sampler) -> None:
    def everything(fixture: dict[str, Any]) -> None:
        hottest_at(100.0)(fixture)
        fixture["temperature"]["gpu"]["max"] = 90.0
        fixture["power"]["rail"]["VDD_GPU_SOC"]["warn"] = 3000

    hot = heat(agx(everything), NOW)
    assert hot.thermal_throttle and hot.power_throttle
    assert hot.weight == MIN_WEIGHT  # 0.3 * 0.2 * 0.5 = 0.03, floored: never starved

    def recovered(fixture: dict[str, Any]) -> None:
        hottest_at(60.0)(fixture)
        del fixture["temperature"]["gpu"]["max"]
        fixture["power"]["rail"]["VDD_GPU_SOC"]["warn"] = 81900

    assert heat_weight(agx(recovered), NOW) == 1.0


def test_zones_that_do_not_limit_inference_are_ignored() -> None:
    # A Xavier's PMIC-Die reads a constant 100 degrees; board and Wi-Fi sensors do not limit
    # the SoC either.
    jetson = dataclasses.replace(
        jetson_sample(),
        temperatures=(
            Temperature("PMIC", 100.0),
            Temperature("Tboard", 96.0),
            Temperature("iwlwifi_1", 99.0),
            Temperature("CPU", 60.0),
        ),
    )
    found = heat(node_sample(taken_at=NOW, gpus=(), jetson=jetson), NOW)
    assert (found.weight, found.hottest_zone) == (1.0, "CPU")


# ---- discrete GPUs (NVML) and the host ---------------------------------------------------------


def _gpu_node(**gpu: object) -> NodeSample:
    return node_sample(taken_at=NOW, gpus=(dgpu(0, **gpu),))


@pytest.mark.parametrize(
    ("reasons", "weight"),
    [
        ((), 1.0),
        (("sw_power_cap",), POWER_THROTTLE_FACTOR),
        (("hw_power_brake_slowdown",), POWER_THROTTLE_FACTOR),
        (("sw_thermal_slowdown",), THERMAL_THROTTLE_FACTOR),
        (("hw_thermal_slowdown",), THERMAL_THROTTLE_FACTOR),
        (("hw_slowdown",), THERMAL_THROTTLE_FACTOR),
        (("sync_boost", "display_clock_setting", "board_limit", "reliability"), 1.0),
        (("sw_power_cap", "sw_thermal_slowdown"), POWER_THROTTLE_FACTOR * THERMAL_THROTTLE_FACTOR),
    ],
)
def test_nvml_throttle_reasons(reasons: tuple[str, ...], weight: float) -> None:
    assert heat_weight(_gpu_node(throttle_reasons=reasons), NOW) == pytest.approx(weight)


def test_a_discrete_gpu_nears_its_slowdown_temperature() -> None:
    soft, hard = DGPU_LIMITS.soft_celsius, DGPU_LIMITS.hard_celsius
    middle = (soft + hard) / 2
    weights = [
        heat_weight(_gpu_node(temperature_celsius=c, throttle_reasons=()), NOW)
        for c in (soft - 10, soft, middle, hard, hard + 5)
    ]
    assert weights == pytest.approx([1.0, 1.0, (1 + HARD_FACTOR) / 2, HARD_FACTOR, HARD_FACTOR])


def test_the_hottest_of_several_gpus_counts() -> None:
    sample = node_sample(
        taken_at=NOW,
        gpus=(
            dgpu(0, temperature_celsius=50.0, throttle_reasons=()),
            dgpu(1, temperature_celsius=95.0, throttle_reasons=()),
        ),
    )
    found = heat(sample, NOW)
    assert (found.hottest_zone, found.weight) == ("gpu1", HARD_FACTOR)


def test_host_sensors_do_not_count() -> None:
    hot_host = host_sample(temperatures=(Temperature("coretemp/Package id 0", 99.0),))
    sample = node_sample(taken_at=NOW, host=hot_host, gpus=())
    found = heat(sample, NOW)
    assert found.weight == 1.0 and not found.measured


# ---- unmeasured and stale: today's routing ---------------------------------------------------


def test_no_sample_is_weight_one() -> None:
    assert heat_weight(None, NOW) == 1.0
    assert not heat(None, NOW).measured


@pytest.mark.parametrize("age", [MAX_AGE_S + 0.1, -(MAX_AGE_S + 0.1), 3600.0])
def test_a_stale_or_future_sample_is_weight_one(age: float) -> None:
    throttled = node_sample(
        taken_at=NOW - age, gpus=(dgpu(0, throttle_reasons=("hw_thermal_slowdown",)),)
    )
    assert heat_weight(throttled, NOW) == 1.0
    # The same sample, fresh, is throttled.
    assert heat_weight(throttled, NOW - age + 1.0) == pytest.approx(THERMAL_THROTTLE_FACTOR)


def test_weight_cache_recomputes_for_a_new_sample_and_checks_freshness_each_time() -> None:
    cache = WeightCache()
    hot = _gpu_node(throttle_reasons=("sw_thermal_slowdown",))
    cool = _gpu_node(throttle_reasons=())
    assert cache.weight("a", hot, NOW) == pytest.approx(THERMAL_THROTTLE_FACTOR)
    assert cache.weight("a", hot, NOW + 1) == pytest.approx(THERMAL_THROTTLE_FACTOR)
    assert cache.weight("a", cool, NOW + 1) == 1.0  # the next heartbeat's sample
    assert cache.weight("a", hot, NOW + MAX_AGE_S + 1) == 1.0  # stale, even though cached
    small = WeightCache(max_nodes=2)
    for node in "abc":
        small.weight(node, hot, NOW)
    assert small.weight("a", cool, NOW) == 1.0


# ---- power -------------------------------------------------------------------------------------


def test_jetson_power_is_the_board_total(agx: Sampler, nano: Sampler) -> None:
    # AGX: no input sensor, jtop's rail sum 26824 mW; Nano: its VDD_IN, 8500 mW.
    assert node_watts(agx(lambda _: None), NOW) == pytest.approx(26.824)
    assert node_watts(nano(lambda _: None), NOW) == pytest.approx(8.5)


def test_pc_power_is_its_gpus_draw_when_every_gpu_reports() -> None:
    both = node_sample(taken_at=NOW, gpus=(dgpu(0), dgpu(1, power_watts=120.0)))
    assert node_watts(both, NOW) == pytest.approx(301.5 + 120.0)
    half = node_sample(taken_at=NOW)  # the factory's second GPU reports no power
    assert node_watts(half, NOW) is None
    assert node_watts(node_sample(taken_at=NOW, gpus=()), NOW) is None  # CPU only
    assert node_watts(node_sample(taken_at=NOW - 2 * MAX_AGE_S, gpus=(dgpu(0),)), NOW) is None
    assert node_watts(None, NOW) is None
