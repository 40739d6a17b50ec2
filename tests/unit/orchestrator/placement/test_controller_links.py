"""The controller splits over the nodes the coordinator's link_rtts make nearest."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from orchestrator.config import CatalogEntry, CoordinatorSettings
from tests.unit.orchestrator.factories import MiB, entry, rpc_node
from tests.unit.orchestrator.placement.test_controller import (
    BIG,
    Harness,
)
from tests.unit.orchestrator.placement.test_controller import (
    run as run_controller,
)

# a and b decode the model at 100 tokens/s, c and d at 60; each holds half of it.
NODES = (
    rpc_node("a", reference_tps=100, memory_free=1200 * MiB, labels=("wifi",)),
    rpc_node("b", reference_tps=100, memory_free=1200 * MiB, labels=("wifi",)),
    rpc_node("c", reference_tps=60, memory_free=1200 * MiB),
    rpc_node("d", reference_tps=60, memory_free=1200 * MiB),
)


def run(
    catalog: list[CatalogEntry],
    settings: CoordinatorSettings,
    scenario: Callable[[Harness], Awaitable[None]],
) -> None:
    """`scenario` against a controller with the link settings of `settings`."""
    run_controller(
        catalog,
        scenario,
        link_rtt_ms=settings.link_rtt_ms(),
        split_min_tokens_per_second=settings.split_min_tokens_per_second,
    )


@pytest.mark.parametrize(
    ("link_rtts", "expected"),
    [
        ((), ["b: lend m@a to a", "a: load m over b:50100"]),  # the fastest pair
        # Wi-Fi at 10 ms: 10 ms of compute + 20 ms of round trip lose to 16.7 + 0 ms.
        (("wifi=10",), ["d: lend m@c to c", "c: load m over d:50100"]),
        (("wifi=1",), ["b: lend m@a to a", "a: load m over b:50100"]),  # 12 ms still wins
    ],
)
def test_the_split_goes_to_the_nodes_the_link_rtts_make_nearest(
    link_rtts: tuple[str, ...], expected: list[str]
) -> None:
    async def scenario(h: Harness) -> None:
        h.workers.need(BIG, *"abcd")
        await h.round(*NODES)
        assert h.workers.actions() == expected

    run([entry("m")], CoordinatorSettings(link_rtts=link_rtts), scenario)


def test_no_split_is_made_below_the_floor_and_the_problem_says_why() -> None:
    async def scenario(h: Harness) -> None:
        h.workers.need(BIG, *"ab")
        await h.round(*NODES[:2])
        assert h.workers.actions() == []
        (problems,) = h.published
        assert "is below the 20 tokens/s a split must reach" in problems[0].reason

    settings = CoordinatorSettings(link_rtts=("wifi=30",), split_min_tokens_per_second=20)
    run([entry("m")], settings, scenario)


@pytest.mark.parametrize("item", ["wifi", "=3", "wifi=-1", "wifi=fast", "wifi=nan"])
def test_a_malformed_link_rtt_is_refused_by_name(item: str) -> None:
    with pytest.raises(ValueError, match=f"link_rtts: '{item}' is not NODE_OR_LABEL=MS"):
        CoordinatorSettings(link_rtts=(item,))


def test_link_rtts_read_as_milliseconds_by_node_or_label() -> None:
    settings = CoordinatorSettings(link_rtts=("wifi=4", " jetson-3 =0.25"))
    assert settings.link_rtt_ms() == {"wifi": 4.0, "jetson-3": 0.25}
