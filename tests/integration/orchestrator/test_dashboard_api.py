"""The dashboard's API on a real coordinator (with an API key) and one real worker: the page
open, its data behind the key, the live stream following the cluster (history growing, a
refused registration, the worker killed: down within 3 s)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from llamaherd.v1 import cluster_pb2_grpc
from support.auth import token_metadata
from support.cluster import Coordinator, start_coordinator, start_node, wait_for
from support.worker_process import WorkerProcess

from common.cluster_auth import NODE_KEY_KEY
from common.hardware import HardwareInfo
from common.status import NodeStatus
from common.wire.status import node_status_to_report

KEY = "dashboard-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Coordinator, WorkerProcess]]:
    workdir = tmp_path_factory.mktemp("dashboard")
    coordinator = start_coordinator(
        workdir, [], "--dashboard-interval-s", "0.5",
        env={"LLAMAHERD_COORDINATOR_API_KEY": KEY},
    )  # fmt: skip
    worker: WorkerProcess | None = None
    try:
        worker = start_node(workdir, coordinator, "w1")
        wait_for(lambda: _state(coordinator)["cluster"]["nodes"], 30, "w1 in the dashboard")
        yield coordinator, worker
    finally:
        if worker is not None:
            worker.stop()
        code = coordinator.stop()
    assert code == 0, coordinator.log_tail()
    assert KEY not in coordinator.log_path.read_text(errors="replace")


def _root(coordinator: Coordinator) -> str:
    return f"http://127.0.0.1:{coordinator.http_port}"


def _state(coordinator: Coordinator) -> dict[str, Any]:
    reply = httpx.get(f"{_root(coordinator)}/v1/dashboard/state", headers=AUTH, timeout=10)
    reply.raise_for_status()
    document: dict[str, Any] = reply.json()
    return document


def test_the_page_is_open_and_its_data_needs_the_key(guarded) -> None:
    coordinator, _ = guarded
    root = _root(coordinator)
    page = httpx.get(f"{root}/dashboard/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    home = httpx.get(f"{root}/", timeout=10)
    assert home.status_code == 307 and home.headers["location"] == "/dashboard/"
    for path in ("/v1/dashboard/state", "/v1/dashboard/stream"):
        assert httpx.get(f"{root}{path}", timeout=10).status_code == 401, path
        wrong = {"authorization": "Bearer not-the-key"}
        assert httpx.get(f"{root}{path}", headers=wrong, timeout=10).status_code == 401, path
    state = _state(coordinator)
    assert state["full"] is True and state["gateway"]["api_key_required"] is True
    assert [n["status"]["node_id"] for n in state["cluster"]["nodes"]] == ["w1"]


def _messages(reply: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    event = ""
    for line in reply.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])


def _until(
    messages: Iterator[tuple[str, dict[str, Any]]], check: Any, timeout: float, what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    for _, update in messages:
        if check(update):
            return update
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no update within {timeout} s: {what}")


def _forge_registration(coordinator: Coordinator) -> None:
    """A cluster member's heartbeat under w1's id with another node key: refused."""
    report = node_status_to_report(NodeStatus("w1", "127.0.0.1:1", HardwareInfo("x86-cpu")), 0)
    metadata = (*token_metadata(), (NODE_KEY_KEY, "not-w1's-key"))
    with grpc.insecure_channel(coordinator.registry) as channel:
        stub = cluster_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Heartbeat(iter([report]), metadata=metadata, timeout=5))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _kinds(update: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in update["events"]]


def test_the_stream_follows_the_cluster(guarded) -> None:
    coordinator, worker = guarded
    url = f"{_root(coordinator)}/v1/dashboard/stream"
    with httpx.stream("GET", url, headers=AUTH, timeout=10) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        messages = _messages(reply)
        event, snapshot = next(messages)
        assert event == "snapshot" and snapshot["full"] is True
        # The history samples every 2 s: w1 may have no point yet, though it is in the cluster.
        points = len(snapshot["history"]["nodes"].get("w1", {}).get("t", []))
        grown = _until(
            messages, lambda u: u["history"]["nodes"].get("w1", {}).get("up") == [1], 5,
            "a new history point of w1",
        )  # fmt: skip
        assert grown["full"] is False and grown["history"]["nodes"]["w1"]["cpu"][0] is not None
        assert len(_state(coordinator)["history"]["nodes"]["w1"]["t"]) > points

        _forge_registration(coordinator)
        refused = _until(messages, lambda u: "registration_refused" in _kinds(u), 5, "refusal")
        (event,) = [e for e in refused["events"] if e["kind"] == "registration_refused"]
        assert event["node"] == "w1" and "another node key" in event["message"]
        assert "not-w1's-key" not in event["message"]

        worker.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        down = _until(messages, lambda u: "node_down" in _kinds(u), 3, "w1 down")
        assert time.monotonic() - killed < 3.0
        (node,) = down["cluster"]["nodes"]
        assert node["up"] is False and node["down_reason"]
        assert [e["node"] for e in down["events"] if e["kind"] == "node_down"] == ["w1"]
