"""Energy per output token from power samples, and power read from the real /v1/cluster
document (serialised by the gateway's own view_to_json)."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.bench.metrics import PowerSample, RequestRecord, energy_figures, node_power
from orchestrator.cluster.view import NodeView, cluster_view, view_to_json
from tests.support.samples_factory import dgpu, host_sample, jetson_sample, node_sample
from tests.unit.orchestrator.factories import NOW, node, snapshot


def served(node_id: str | None, out: int, sent: float = 0.0, done: float = 10.0, **kw):
    return RequestRecord(
        level=0, index=kw.pop("index", 0), warmup=kw.pop("warmup", False), sent_s=sent,
        chunk_s=(sent + 0.5,), done_s=done, output_tokens=out, prompt_tokens=128,
        node=node_id, **kw,
    )  # fmt: skip


def test_joules_per_output_token_per_node_and_in_total():
    records = [served("a", 100), served("a", 100), served("b", 50, done=8.0)]  # window 10 s
    samples = [
        PowerSample(0, "a", 1.0, 10.0, "board"), PowerSample(0, "a", 2.0, 14.0, "board"),
        PowerSample(0, "a", 2.0, 14.0, "board"),  # the same sample polled twice counts once
        PowerSample(0, "b", 1.5, 300.0, "gpu"),
    ]  # fmt: skip
    energy = energy_figures(samples, records)
    assert energy is not None
    a, b = energy.nodes["a"], energy.nodes["b"]
    assert (a.mean_watts, a.samples, a.source) == (12.0, 2, "board")
    assert a.joules == pytest.approx(120.0) and a.output_tokens == 200
    assert a.joules_per_output_token == pytest.approx(0.6)
    assert b.joules == pytest.approx(3000.0) and b.joules_per_output_token == pytest.approx(60.0)
    assert energy.joules == pytest.approx(3120.0)
    assert energy.joules_per_output_token == pytest.approx(3120 / 250)


def test_requests_of_nodes_without_power_and_warm_up_are_left_out():
    records = [served("a", 100), served("x", 400), served("a", 999, warmup=True, done=50.0),
               served("a", 10, error="timeout")]  # fmt: skip
    energy = energy_figures([PowerSample(0, "a", 1.0, 5.0, "board")], records)
    assert energy is not None and set(energy.nodes) == {"a"}
    assert energy.nodes["a"].output_tokens == 100  # the failed and warm-up ones do not count
    assert energy.joules_per_output_token == pytest.approx(5.0 * 10 / 100)


def test_a_node_with_power_that_served_nothing_has_no_joules_per_token():
    energy = energy_figures([PowerSample(0, "b", 1.0, 5.0, "gpu")], [served("a", 10)])
    assert energy is not None and energy.nodes["b"].joules_per_output_token is None
    assert energy.joules == pytest.approx(50.0) and energy.joules_per_output_token is None


def test_no_power_means_no_energy_figures():
    assert energy_figures([], [served("a", 10)]) is None
    assert energy_figures([PowerSample(0, "a", 1.0, 5.0, "gpu")], []) is None


def _document(*samples):
    nodes = [node(name) for name, _ in samples]
    view = cluster_view(snapshot(*nodes), NOW, lambda n: 0, "round-robin")
    with_telemetry = tuple(
        NodeView(dataclasses.replace(v.status, telemetry=sample), up=True)
        for v, (_, sample) in zip(view.nodes, samples, strict=True)
    )
    return view_to_json(dataclasses.replace(view, nodes=with_telemetry))


def test_power_from_the_cluster_document():
    document = _document(
        ("jetson", node_sample(jetson=jetson_sample())),  # board input wins over GPU power
        ("pc", node_sample(taken_at=7.0)),  # two GPUs, one without power
        ("cpu-only", node_sample(gpus=(), jetson=None, host=host_sample())),
        ("quiet", None),
    )
    power = node_power(document)
    assert power["jetson"][1:] == (30.1, "board")
    assert power["pc"] == (7.0, dgpu(0).power_watts, "gpu")
    assert set(power) == {"jetson", "pc"}


def test_power_from_a_document_of_another_shape_is_empty():
    assert node_power({"nodes": [{"status": None}, 3]}) == {}
    assert node_power({"error": "not found"}) == {} and node_power([]) == {}
