"""The Grafana dashboard (deploy/grafana/llamaherd.json) imports as Grafana expects and
queries only metrics a gateway's /metrics really exports: a cluster with a Jetson and a
two-GPU PC, models ready and downloading, and recorded traffic, exported by the real
cluster_metrics and parsed back as Prometheus parses it."""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.hardware import HardwareInfo
from common.model_settings import ModelConfig
from common.status import DownloadProgress, EngineFigures, ModelState, ModelStatus, NodeStatus
from orchestrator.cluster.types import ClusterSnapshot, Node
from orchestrator.dashboard.traffic import Traffic
from orchestrator.gateway.metrics import cluster_metrics
from orchestrator.gateway.router import Router
from orchestrator.routing.policies import RoundRobin
from orchestrator.worker_client import WorkerClients
from tests.support.samples_factory import jetson_sample, node_sample

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "llamaherd.json"
METRIC = re.compile(r"\bllamaherd_[a-z0-9_]+")
HISTOGRAM_SERIES = re.compile(r"_(bucket|count|sum)$")
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())  # a collapsed row holds its own


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL text: panel targets and the templating variables' queries."""
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", ())]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]
        exprs.append(query if isinstance(query, str) else query["query"])
    return exprs


def queried_metrics(dashboard: dict[str, Any]) -> set[str]:
    return {
        HISTOGRAM_SERIES.sub("", name) for q in queries(dashboard) for name in METRIC.findall(q)
    }


def exported_metrics() -> set[str]:
    """Family and sample names of a gateway's /metrics over a cluster that has every kind of
    reading: a Jetson (rails, zones, power mode), a PC with two GPUs (one throttled), a
    ready model, a downloading one, and traffic with an error."""
    jetson_hw = HardwareInfo("jetson-orin", "NVIDIA Jetson AGX Orin", unified_memory=True)
    pc_hw = HardwareInfo("x86-cuda", "Ryzen 9", backends=("CPU", "CUDA"), reference_decode_tps=90)
    config = ModelConfig(alias="gemma", path="/models/gemma.gguf")
    ready = ModelStatus(
        "gemma", config, ModelState.READY,
        engine=EngineFigures(slots_total=4, active=2, queued=1, decode_tps=40.0, prompt_tps=900.0),
    )  # fmt: skip
    fetching = ModelStatus(
        "big", ModelConfig(alias="big", path="/models/big.gguf"), ModelState.DOWNLOADING,
        download=DownloadProgress(bytes_done=10, bytes_total=100, bytes_per_second=5.0),
    )  # fmt: skip
    nodes = (
        Node(NodeStatus("orin", "10.0.0.2:50051", jetson_hw, (ready,),
                        telemetry=node_sample(gpus=(), jetson=jetson_sample()))),
        Node(NodeStatus("pc", "10.0.0.3:50051", pc_hw, (ready, fetching),
                        telemetry=node_sample())),
    )  # fmt: skip
    traffic = Traffic(rng=random.Random(0))
    for node, outcome in (("orin", "ok"), ("pc", "ok"), ("", "unavailable")):
        trace = traffic.begin("gemma")
        if node:
            trace.chunk(node, 1)
            trace.chunk(node, 2)
        trace.finish(outcome, node)
    router = Router(RoundRobin(), WorkerClients(), retries=1, traffic=traffic)
    router.update(ClusterSnapshot(version=1, taken_at=0.0, nodes=nodes))
    names: set[str] = set()
    for family in text_string_to_metric_families(cluster_metrics(router).decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_the_dashboard_imports_with_a_prometheus_datasource_input():
    dashboard = load()
    assert dashboard["schemaVersion"] >= 38 and dashboard["uid"] == "llamaherd"
    [source] = dashboard["__inputs"]
    assert source["name"] == "DS_PROMETHEUS" and source["pluginId"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"] and all(t["datasource"] == DATASOURCE for t in panel["targets"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"node", "model"}
    assert variables["node"]["query"] == "label_values(llamaherd_node_up, node)"
    assert variables["model"]["query"].startswith("label_values(") and variables["model"]["multi"]


def test_panels_have_unique_ids_and_do_not_overlap():
    dashboard = load()
    every = list(panels(dashboard))
    assert len({p["id"] for p in every}) == len(every)
    cells: set[tuple[int, int]] = set()
    for panel in every:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_rows_cover_cluster_latency_nodes_and_models():
    dashboard = load()
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Cluster", "Latency", "Nodes", "Models"]
    titles = {p["title"] for p in panels(dashboard)}
    for wanted in (
        "Nodes up", "Requests/s by model", "Errors by outcome", "Time to first token",
        "Inter-token latency", "CPU", "Memory", "GPU utilization", "GPU memory",
        "Hottest temperature", "Power", "Jetson power per rail", "GPU throttling",
        "Slots busy / total", "Requests queued", "Decode tokens/s per sequence", "Model state",
    ):  # fmt: skip
        assert wanted in titles


def test_every_metric_the_dashboard_queries_is_one_the_gateway_exports():
    queried = queried_metrics(load())
    # Sanity: the regex finds the families of each part, so the check below is not empty.
    for family in (
        "llamaherd_gateway_requests_total", "llamaherd_gateway_time_to_first_token_seconds",
        "llamaherd_power_watts", "llamaherd_gpu_throttle_active", "llamaherd_model_slots_busy",
    ):  # fmt: skip
        assert family in queried
    assert queried - exported_metrics() == set()


def test_a_misspelt_metric_is_caught():
    dashboard = copy.deepcopy(load())
    target = next(p for p in panels(dashboard) if p["title"] == "CPU")["targets"][0]
    target["expr"] = target["expr"].replace(
        "llamaherd_cpu_usage_ratio", "llamaherd_cpu_usage_ratoi"
    )
    assert queried_metrics(dashboard) - exported_metrics() == {"llamaherd_cpu_usage_ratoi"}


@pytest.mark.parametrize("expr", queries(load()))
def test_every_query_is_balanced(expr: str) -> None:
    """A cheap syntax check (promtool parsed them all when the dashboard was written)."""
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    for char in re.sub(r'"[^"]*"', '""', expr):
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            assert depth[closing[char]] >= 0, expr
    assert depth == {"(": 0, "{": 0, "[": 0}, expr
    assert expr.count('"') % 2 == 0
