"""Admission under the cluster power budget (admission.power_admission): the hysteresis, the
refusal's words, and the recorded boards' draw from idle to loaded through the real Jetson
source."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.recorded_telemetry import RecordedJetson

from orchestrator.cluster.types import NodeId
from orchestrator.routing.admission import (
    POWER_RETRY_AFTER_S,
    RESUME_RATIO,
    ClusterDraw,
    cluster_draw,
    power_admission,
)
from tests.unit.orchestrator.factories import NOW, node


def draw(watts: float, unmeasured: tuple[str, ...] = ()) -> ClusterDraw:
    return ClusterDraw({NodeId("a"): watts}, tuple(NodeId(n) for n in unmeasured))


def test_refuses_over_the_budget_and_admits_again_only_below_95_percent() -> None:
    refusing = False
    admitted = []
    for watts in (90.0, 100.0, 100.1, 99.0, 95.0, 94.9, 99.0, 100.0, 120.0, 50.0):
        decision = power_admission(draw(watts), 100.0, refusing)
        refusing = decision.refusing
        admitted.append(decision.admitted)
    assert admitted == [True, True, False, False, False, True, True, True, False, True]
    assert RESUME_RATIO == 0.95


def test_a_refusal_names_the_budget_the_draw_and_the_nodes_without_power() -> None:
    decision = power_admission(draw(412.4, ("cpu-1", "cpu-2")), 400.0, refusing=False)
    assert not decision.admitted and decision.retry_after_s == POWER_RETRY_AFTER_S
    assert decision.reason == (
        "the cluster is over its power budget of 400 W: it draws 412 W (2 unmeasured: "
        "cpu-1, cpu-2 report no power); new requests are admitted again below 380 W"
    )


@pytest.fixture
def agx(tmp_path: Path) -> Iterator[RecordedJetson]:
    board = RecordedJetson("agx-orin-64gb", tmp_path / "nv_tegra_release")
    yield board
    board.close()


def test_the_recorded_agx_driven_from_idle_to_loaded_and_back(agx: RecordedJetson) -> None:
    # A 20 W budget on one AGX Orin: idle (6 W) admits, the recorded load (26.8 W) refuses,
    # and on the way down it admits again only below 19 W.
    bare = node("agx")
    refusing = False
    seen = []
    for watts in (6.0, 12.0, 18.0, 22.0, 26.824, 22.0, 19.5, 18.5, 6.0):
        sample = agx.draw(watts).sample(NOW)
        reporting = dataclasses.replace(
            bare, status=dataclasses.replace(bare.status, telemetry=sample)
        )
        measured = cluster_draw([reporting], NOW)
        assert measured.watts == pytest.approx(watts, abs=0.01)
        decision = power_admission(measured, 20.0, refusing)
        refusing = decision.refusing
        seen.append(decision.admitted)
    assert seen == [True, True, True, False, False, False, False, True, True]
