"""The fleet simulator (tests/bench/simulate_fleet.py) at a tiny scale: it drives the real
registry, routing and placement, and its figures and outputs hold together."""

from __future__ import annotations

import importlib.util
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "simulate_fleet.py"
TINY = [
    "--nodes", "12", "40", "--models", "3", "--heartbeat-rounds", "2", "--route-samples", "30",
    "--repeats", "1", "--sim-nodes", "5", "--sim-requests", "200", "--loads", "0.5", "0.9",
    "--gateways", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def simulator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("simulate_fleet", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(simulator: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("fleet")
    figures: dict[str, Any] = simulator.main(
        [*TINY, "--out", str(out / "fleet.json"), "--plot", str(out / "fleet.svg")]
    )
    figures["_dir"] = out
    return figures


def test_every_report_reaches_the_registry(result: dict[str, Any]) -> None:
    for size in ("12", "40"):
        beats = result["sizes"][size]["heartbeats"]
        assert len(beats["round_s"]) == 2 and beats["reports_per_s"] > 0
        assert beats["report_bytes"] > 100  # a full report: hardware, telemetry, models


def test_the_snapshot_holds_every_node(result: dict[str, Any]) -> None:
    small, large = result["sizes"]["12"]["snapshot"], result["sizes"]["40"]["snapshot"]
    assert large["pickle_bytes"] > 2 * small["pickle_bytes"]  # grows with the nodes
    assert large["json_bytes"] > large["proto_bytes"] > 0


def test_the_feed_sends_a_following_gateway_only_the_nodes_that_changed(
    result: dict[str, Any],
) -> None:
    for size in ("12", "40"):
        snapshot = result["sizes"][size]["snapshot"]
        assert snapshot["feed_delta_nodes"] == int(size) // 2  # half the fleet reported
        assert snapshot["feed_whole_bytes"] >= snapshot["pickle_bytes"] * 0.9  # every node
        assert snapshot["feed_delta_bytes"] < 0.75 * snapshot["feed_whole_bytes"]
        assert snapshot["feed_delta_take_ms"] > 0 and snapshot["feed_whole_take_ms"] > 0


def test_every_policy_routes_every_request(result: dict[str, Any], simulator: ModuleType) -> None:
    for size in ("12", "40"):
        routing = result["sizes"][size]["routing"]
        assert set(routing) == set(simulator.POLICY_NAMES)
        for figures in routing.values():
            assert figures["requests"] == 30 and 0 < figures["p50_us"] <= figures["p99_us"]


def test_placement_places_the_whole_catalog(result: dict[str, Any]) -> None:
    placement = result["sizes"]["40"]["placement"]
    # 4% of 40 nodes: 2 replicas of each of 3 models, all on an empty fleet
    assert placement["replicas_per_model"] == 2
    assert placement["fresh_loads"] == 6 and placement["fresh_problems"] == 0


def test_the_simulation_measures_each_policy_at_each_load(
    result: dict[str, Any], simulator: ModuleType
) -> None:
    policies = result["simulation"]["policies"]
    assert set(policies) == set(simulator.POLICY_NAMES)
    for by_load in policies.values():
        assert set(by_load) == {"0.5", "0.9"}
        for figures in by_load.values():
            assert figures["rejected"] == 0
            assert figures["measured"] == 200 - 200 // 10  # all but the warm-up
            assert figures["ttft_p50_s"] > figures["queue_p50_s"] >= 0
            assert figures["ttft_p99_s"] >= figures["ttft_p50_s"]
        # More load, more waiting (the same arrivals, only closer together).
        assert by_load["0.9"]["queue_p99_s"] >= by_load["0.5"]["queue_p99_s"]


def test_the_same_seed_simulates_the_same_requests(simulator: ModuleType) -> None:
    def run() -> dict[str, float]:
        figures: dict[str, float] = simulator.simulate(4, 0.8, "power-of-two", 200, 2, 1.0, 7)
        return figures

    assert run() == run()


def test_the_outputs_are_written(result: dict[str, Any]) -> None:
    written = json.loads((result["_dir"] / "fleet.json").read_text())
    assert written["format"] == "llamaherd-fleet-sim/1" and written["sizes"].keys() == {"12", "40"}
    svg = ET.fromstring((result["_dir"] / "fleet.svg").read_text())
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(svg.findall(".//{http://www.w3.org/2000/svg}polyline")) == 2 * len(
        written["simulation"]["policies"]
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--loads", "1.2"], "--loads"), (["--nodes", "0"], "--nodes")],
)
def test_bad_arguments_are_refused_in_one_line(
    simulator: ModuleType, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        simulator.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
