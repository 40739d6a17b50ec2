"""How much new work a node should take given its heat and power state: a weight in (0, 1].

A pure function of one node's latest telemetry sample (common.telemetry.NodeSample) and the
clock reading `now` (unix seconds, the clock of the sample's `taken_at`). Routing multiplies
a candidate's expected decode rate by it, so a node near its thermal limit, or one that says
its clocks are held down, takes proportionally less new work, and takes its share again as
it cools: nothing here remembers the past, each sample decides alone.

What counts:

- Temperature: the hottest zone that limits inference. On a Jetson its CPU, GPU, SoC, CV
  and junction zones (not PMIC, board or Wi-Fi sensors: a Xavier's PMIC-Die reads a
  constant 100 degrees). jtop knows no limits for these SoC zones, so JETSON_LIMITS is a
  documented default below the BPMP's own throttling trip points (about 99 degrees on
  Orin). On a discrete GPU its NVML temperature against DGPU_LIMITS (NVML's slowdown
  temperature, mostly 87-93 degrees, is not in the sample). The host's own sensors do not
  count: a CPU-only node's rate is measured as it runs, and laptop and VM sensors are too
  unreliable to steer traffic by.
  Below `soft_celsius` the factor is 1; it falls linearly to HARD_FACTOR at `hard_celsius`
  and stays there above it.
- Throttling the node reports now (GpuSample.throttle_reasons): thermal (NVML's
  hw_slowdown, sw_thermal_slowdown, hw_thermal_slowdown; a Jetson zone at its own 'max',
  "thermal:<zone>") multiplies by THERMAL_THROTTLE_FACTOR; power (NVML's sw_power_cap and
  hw_power_brake_slowdown; a Jetson rail at its over-current warning, "power:<rail>") by
  POWER_THROTTLE_FACTOR, milder because a GPU at full load often sits at its power cap while
  still doing its best, and its measured rate already shows the capped clocks. Other NVML
  reasons (sync_boost, display_clock_setting, board_limit, reliability) are not heat.

No sample, or a sample older than MAX_AGE_S (or from further in the future, a clock set
wrong), is unmeasured: weight 1, routing exactly as without telemetry. The weight never
falls below MIN_WEIGHT, so a hot node is derated, never starved outright: it still takes
work when every other node is far busier.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.telemetry import NodeSample


@dataclass(frozen=True)
class Limits:
    """Where heat starts to count (`soft_celsius`) and where it counts fully (`hard_celsius`)."""

    soft_celsius: float
    hard_celsius: float


# Jetson CPU/GPU/SoC zones: BPMP throttles Orin at about 99 degrees; start giving way well
# before it, so the board never reaches it under the cluster's load.
JETSON_LIMITS = Limits(soft_celsius=85.0, hard_celsius=95.0)
# Discrete GPUs: NVML's slowdown temperature is mostly 87-93 degrees.
DGPU_LIMITS = Limits(soft_celsius=80.0, hard_celsius=90.0)

HARD_FACTOR = 0.3  # at or above the hard limit: about a third of the work it would take
THERMAL_THROTTLE_FACTOR = 0.2  # clocks held down for heat: sharply less
POWER_THROTTLE_FACTOR = 0.5  # clocks held at a power cap
MIN_WEIGHT = 0.05
MAX_AGE_S = 30.0  # a heartbeat carries a new sample every second or so

# Jetson thermal zones that limit inference, by lower-cased prefix: JetPack 6 names (cpu,
# gpu, soc0-2, cv0-2, tj) and JetPack 4/5 ones (CPU, GPU, SOC, CV). AO, PLL, Tboard, Tdiode,
# PMIC, "thermal" and iwlwifi do not count.
_JETSON_ZONE_PREFIXES = ("cpu", "gpu", "soc", "cv", "tj")
_THERMAL_REASONS = frozenset({"hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown"})
_POWER_REASONS = frozenset({"sw_power_cap", "hw_power_brake_slowdown"})


@dataclass(frozen=True)
class Heat:
    """A node's heat as routing reads it: the weight and what made it, for logs and tests."""

    weight: float = 1.0
    hottest_celsius: float | None = None  # the hottest zone that counts
    hottest_zone: str = ""
    thermal_throttle: bool = False
    power_throttle: bool = False

    @property
    def measured(self) -> bool:
        return self.hottest_celsius is not None or self.thermal_throttle or self.power_throttle


COOL = Heat()


def fresh(sample: NodeSample | None, now: float, max_age_s: float = MAX_AGE_S) -> bool:
    """Whether `sample` is recent enough to act on (within `max_age_s` of `now`, either way)."""
    return sample is not None and abs(now - sample.taken_at) <= max_age_s


def heat(sample: NodeSample | None, now: float, max_age_s: float = MAX_AGE_S) -> Heat:
    """The heat of the node whose latest sample is `sample`, at `now` (unix seconds)."""
    if sample is None or not fresh(sample, now, max_age_s):
        return COOL
    zones: list[tuple[str, float, Limits]] = []
    if sample.jetson is not None:
        zones.extend(
            (t.sensor, t.celsius, JETSON_LIMITS)
            for t in sample.jetson.temperatures
            if t.sensor.lower().startswith(_JETSON_ZONE_PREFIXES)
        )
    reasons: set[str] = set()
    for gpu in sample.gpus:
        reasons.update(gpu.throttle_reasons)
        # A Jetson's integrated GPU reports its "gpu" zone, already counted above.
        if not gpu.unified and gpu.temperature_celsius is not None:
            zones.append((f"gpu{gpu.index}", gpu.temperature_celsius, DGPU_LIMITS))
    factor = 1.0
    hottest: tuple[str, float] | None = None
    for name, celsius, limits in zones:
        zone_factor = _temperature_factor(celsius, limits)
        factor = min(factor, zone_factor)
        if hottest is None or celsius > hottest[1]:
            hottest = (name, celsius)
    thermal = any(r in _THERMAL_REASONS or r.startswith("thermal:") for r in reasons)
    power = any(r in _POWER_REASONS or r.startswith("power:") for r in reasons)
    if thermal:
        factor *= THERMAL_THROTTLE_FACTOR
    if power:
        factor *= POWER_THROTTLE_FACTOR
    return Heat(
        weight=max(factor, MIN_WEIGHT),
        hottest_celsius=hottest[1] if hottest else None,
        hottest_zone=hottest[0] if hottest else "",
        thermal_throttle=thermal,
        power_throttle=power,
    )


def heat_weight(sample: NodeSample | None, now: float, max_age_s: float = MAX_AGE_S) -> float:
    """The routing weight in (0, 1] of the node whose latest sample is `sample` (heat())."""
    return heat(sample, now, max_age_s).weight


class WeightCache:
    """heat_weight() per node, computed once per sample: a node's sample changes once per
    heartbeat while the gateway may route thousands of requests in between, and the weight
    costs microseconds. A hit needs the very same sample object (frozen, held here, so its
    identity cannot be reused); freshness is checked on every call. Holds at most
    `max_nodes` entries, dropped all at once when full (nodes that left, at most a heartbeat
    of recomputing for those that stay)."""

    def __init__(self, max_age_s: float = MAX_AGE_S, max_nodes: int = 65_536) -> None:
        self._max_age_s = max_age_s
        self._max_nodes = max_nodes
        self._weights: dict[str, tuple[NodeSample, float]] = {}

    def weight(self, node_id: str, sample: NodeSample | None, now: float) -> float:
        """heat_weight(sample, now) for the node `node_id`."""
        if sample is None or not fresh(sample, now, self._max_age_s):
            return 1.0
        cached = self._weights.get(node_id)
        if cached is not None and cached[0] is sample:
            return cached[1]
        weight = heat(sample, now, self._max_age_s).weight
        if len(self._weights) >= self._max_nodes:
            self._weights.clear()
        self._weights[node_id] = (sample, weight)
        return weight


def node_watts(sample: NodeSample | None, now: float, max_age_s: float = MAX_AGE_S) -> float | None:
    """What the node draws now, in watts, or None where it does not say (or said too long ago).

    A Jetson's board total (its input rail where measured, else its rails' sum); otherwise
    the sum of its discrete GPUs' draw when every GPU reports one (a node's GPUs run one
    model together; half of them is no figure). A CPU-only node reports none.
    """
    if sample is None or not fresh(sample, now, max_age_s):
        return None
    if sample.jetson is not None and sample.jetson.power_total_watts is not None:
        return sample.jetson.power_total_watts if sample.jetson.power_total_watts > 0 else None
    draws = [g.power_watts for g in sample.gpus if not g.unified]
    if not draws or any(d is None for d in draws):
        return None
    total = sum(d for d in draws if d is not None)
    return total if total > 0 else None


def _temperature_factor(celsius: float, limits: Limits) -> float:
    """1 below the soft limit, HARD_FACTOR at and above the hard one, linear between."""
    if celsius <= limits.soft_celsius:
        return 1.0
    if celsius >= limits.hard_celsius:
        return HARD_FACTOR
    span = limits.hard_celsius - limits.soft_celsius
    return 1.0 - (1.0 - HARD_FACTOR) * (celsius - limits.soft_celsius) / span
