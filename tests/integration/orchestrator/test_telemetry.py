"""Telemetry and the capability profile, end to end on this machine: the real workers sample
psutil (the only source this host has), stream it with their heartbeats to the real
coordinator, and serve it on /metrics; the gateway's /metrics and `llamaherd status` show
every node."""

from __future__ import annotations

import subprocess
import time

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from support.cluster import wait_for
from support.models import GEMMA
from support.worker_process import LLAMAHERD

from .conftest import Cluster


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


def test_heartbeats_carry_host_telemetry_and_the_capability_profile(cluster: Cluster) -> None:
    nodes = {n.status.node_id: n.status for n in cluster.coordinator.status().nodes}
    for name in ("worker-a", "worker-b"):
        node = nodes[name]
        host = node.telemetry.host
        assert host.memory_total_bytes == psutil.virtual_memory().total
        assert 0 < host.memory_available_bytes <= host.memory_total_bytes
        assert len(host.cpu_core_usage_ratio) == psutil.cpu_count()
        assert host.process_rss_bytes > 50 * 1024**2  # a worker with llama.cpp and a model
        assert list(node.telemetry.sources) == ["host"]
        hw = node.hardware
        assert "AVX2" in hw.cpu_features  # what this build of llama.cpp uses here
        assert hw.reference_decode_tokens_per_second > 5
        assert not hw.unified_memory and not hw.gpus
        skipped = "\n".join(hw.telemetry_skipped)
        assert "jetson: not a Jetson" in skipped
        assert "nvml: " in skipped  # no NVIDIA driver on this machine, with the reason


def test_samples_keep_streaming(cluster: Cluster) -> None:
    first = {
        n.status.node_id: n.status.telemetry.taken_at for n in cluster.coordinator.status().nodes
    }
    assert all(first.values())
    time.sleep(1.5)  # the default interval is 1 s
    later = {
        n.status.node_id: n.status.telemetry.taken_at for n in cluster.coordinator.status().nodes
    }
    assert all(later[node] > first[node] for node in first)
    assert all(abs(time.time() - t) < 5 for t in later.values())


def test_worker_serves_its_own_metrics(cluster: Cluster) -> None:
    worker = cluster.workers["worker-a"]
    metrics = scrape(worker.metrics_url)
    ((labels, total),) = metrics["llamaherd_memory_total_bytes"]
    assert labels == {} and total == psutil.virtual_memory().total
    ((info, _),) = metrics["llamaherd_node_info"]
    assert info["kind"] == "x86-cpu" and "RPC" in info["backends"].split(",")
    states = {(s["model"], s["state"]) for s, _ in metrics["llamaherd_model_state"]}
    assert (GEMMA, "ready") in states
    assert metrics["llamaherd_reference_decode_tokens_per_second"][0][1] > 5
    assert not any(name.startswith("llamaherd_gpu_") for name in metrics)  # no GPU here


def test_gateway_metrics_cover_every_node(cluster: Cluster) -> None:
    url = cluster.coordinator.base_url.removesuffix("/v1") + "/metrics"
    metrics = scrape(url)
    up = {labels["node"]: value for labels, value in metrics["llamaherd_node_up"]}
    assert up == {"worker-a": 1.0, "worker-b": 1.0}
    memory = {labels["node"]: v for labels, v in metrics["llamaherd_memory_total_bytes"]}
    assert memory == {"worker-a": psutil.virtual_memory().total} | {
        "worker-b": psutil.virtual_memory().total
    }
    ready = {
        labels["node"]
        for labels, _ in metrics["llamaherd_model_state"]
        if labels["model"] == GEMMA and labels["state"] == "ready"
    }
    assert ready == {"worker-a", "worker-b"}


def test_gateway_metrics_count_the_requests_it_relays(cluster: Cluster) -> None:
    """The gateway's traffic recorder (orchestrator.dashboard.traffic) is wired in: a real
    request and a request for a model nobody serves show in its /metrics."""
    base = cluster.coordinator.base_url
    body = {"model": GEMMA, "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}
    reply = httpx.post(f"{base}/completions", json=body, timeout=60)
    node = reply.headers["x-llamaherd-node"]
    missing = httpx.post(f"{base}/completions", json={**body, "model": "no-such"}, timeout=60)
    assert missing.status_code == 404
    metrics = scrape(base.removesuffix("/v1") + "/metrics")
    requests = {
        (s["model"], s["node"], s["outcome"]): v
        for s, v in metrics["llamaherd_gateway_requests_total"]
    }
    assert requests[(GEMMA, node, "ok")] >= 1
    assert requests[("unknown", "", "not_found")] >= 1
    tokens = {
        (s["model"], s["node"]): v for s, v in metrics["llamaherd_gateway_generated_tokens_total"]
    }
    assert tokens[(GEMMA, node)] >= 4
    ttft = metrics["llamaherd_gateway_time_to_first_token_seconds_count"]
    assert any(s["node"] == node and v >= 1 for s, v in ttft)


def test_status_shows_key_figures_per_node(cluster: Cluster) -> None:
    def rendered() -> str | None:
        out = subprocess.run(
            [LLAMAHERD, "status", "--gateway", cluster.coordinator.gateway],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        return out if out.count("tok/s (reference)") == 2 else None

    text = wait_for(rendered, 30, "status with both nodes' figures")
    assert "cpu " in text and "ram " in text
