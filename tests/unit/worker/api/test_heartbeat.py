"""The worker's coordinator link against a real registry in this process: it registers with
the token and its node key, says clearly when it is refused, and gives up on a coordinator
that is gone (or refusing) after coordinator_lost_exit_s instead of retrying forever."""

from __future__ import annotations

import asyncio
import logging
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from llamaherd.v1 import cluster_pb2_grpc
from pydantic import SecretStr

from common.hardware import HardwareInfo
from common.memory import GiB
from orchestrator.cluster.registry import WorkerRegistry
from worker.api import heartbeat
from worker.api.heartbeat import CoordinatorLink
from worker.config import WorkerSettings
from worker.models.estimate import MemoryBudget
from worker.models.registry import ModelRegistry

TOKEN = SecretStr("the-cluster-token")


async def _no_model(*_: Any) -> Any:
    raise AssertionError("no models here")


def link(
    tmp_path: Path, coordinator: str, token: SecretStr = TOKEN, **settings: Any
) -> CoordinatorLink:
    config = WorkerSettings(
        coordinator=coordinator, cluster_token=token, node_id="node-a",
        node_key_dir=tmp_path / "keys", model_dirs=(tmp_path,), **settings,
    )  # fmt: skip
    budget = MemoryBudget(limit_bytes=8 * GiB, reserve_bytes=0, available=lambda: 8 * GiB)
    models = ModelRegistry(config, budget, _no_model, _no_model)
    return CoordinatorLink(config, models, budget, HardwareInfo("x86-cpu"), 50051, token)


def test_the_link_registers_with_the_token_and_a_private_node_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = WorkerRegistry(0.2, 1.0, 60.0, TOKEN)
        port = await registry.start("127.0.0.1", 0)
        worker = link(tmp_path, f"127.0.0.1:{port}")
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.registered.wait(), 5)
            assert [n.node_id for n in registry.snapshot().nodes] == ["node-a"]
        finally:
            task.cancel()
            await registry.stop()

    asyncio.run(scenario())
    assert stat.S_IMODE((tmp_path / "keys" / "node-a").stat().st_mode) == 0o600


def test_a_worker_without_a_coordinator_gives_up_after_the_bounded_time(tmp_path: Path) -> None:
    async def scenario() -> float:
        started = time.monotonic()
        # Nothing listens on port 9 of loopback: like a cluster whose coordinator died.
        await asyncio.wait_for(link(tmp_path, "127.0.0.1:9", coordinator_lost_exit_s=0.6).run(), 10)
        return time.monotonic() - started

    assert 0.5 <= asyncio.run(scenario()) < 3


def test_a_refused_token_is_said_once_then_the_worker_gives_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="worker.api.heartbeat"):
        asyncio.run(_run_with_the_wrong_token(tmp_path))
    refusals = [m for m in caplog.messages if "refused this worker's cluster token" in m]
    assert len(refusals) == 1, "said once, not at every retry"
    assert "LLAMAHERD_CLUSTER_TOKEN" in refusals[0] and "old-token" not in caplog.text
    assert any("coordinator_lost_exit_s" in m for m in caplog.messages)


class _LosesTheServersStatus(cluster_pb2_grpc.CoordinatorStub):
    """The real stub, except that its first `lose` Heartbeat calls end with what grpcio's
    asyncio client reports when its write of a report loses the race with the server's end
    of the call (grpc/grpc#36066): INTERNAL "Internal error from Core" in place of the
    server's status. The race itself is about 1 refused stream in 1,000; this makes it
    every time."""

    lose = 1
    calls = 0

    def __init__(self, channel: aio.Channel) -> None:
        super().__init__(channel)
        real = self.Heartbeat  # the stub's methods are attributes it sets

        def heartbeat(requests: Any, metadata: Any = None) -> Any:
            call = real(requests, metadata=metadata)
            type(self).calls += 1
            return _status_lost(call) if type(self).calls <= type(self).lose else call

        self.Heartbeat = heartbeat


async def _status_lost(call: Any) -> AsyncIterator[Any]:
    try:
        async for reply in call:
            yield reply
    except aio.AioRpcError as exc:
        raise aio.AioRpcError(
            grpc.StatusCode.INTERNAL, exc.initial_metadata(), aio.Metadata(),
            details="Internal error from Core",
            debug_error_string='Failed "execute_batch": (SendMessageOperation,)',
        ) from None  # fmt: skip


def _refused_with_lost_statuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lose: int) -> int:
    """A worker with the wrong token, run until it gives up, whose first `lose` streams
    end with grpcio's made-up INTERNAL; returns how many streams it opened."""
    monkeypatch.setattr(_LosesTheServersStatus, "lose", lose)
    monkeypatch.setattr(_LosesTheServersStatus, "calls", 0)
    monkeypatch.setattr(heartbeat.cluster_pb2_grpc, "CoordinatorStub", _LosesTheServersStatus)

    asyncio.run(_run_with_the_wrong_token(tmp_path))
    return _LosesTheServersStatus.calls


async def _run_with_the_wrong_token(tmp_path: Path) -> None:
    """A worker with the wrong cluster token against a real registry, run until it gives
    up; it must never have registered."""
    registry = WorkerRegistry(0.2, 1.0, 60.0, TOKEN)
    port = await registry.start("127.0.0.1", 0)
    try:
        wrong = link(tmp_path, f"127.0.0.1:{port}", SecretStr("old-token"),
                     coordinator_lost_exit_s=0.8)  # fmt: skip
        await asyncio.wait_for(wrong.run(), 10)
        assert not wrong.registered.is_set() and registry.snapshot().nodes == ()
    finally:
        await registry.stop()


def test_a_refusal_whose_status_grpc_lost_is_still_said_not_taken_for_an_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="worker.api.heartbeat"):
        _refused_with_lost_statuses(tmp_path, monkeypatch, lose=1)
    assert not [m for m in caplog.messages if "unreachable" in m], caplog.text
    refusals = [m for m in caplog.messages if "refused this worker's cluster token" in m]
    assert len(refusals) == 1, caplog.text


def test_a_status_grpc_keeps_losing_is_reported_after_a_few_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="worker.api.heartbeat"):
        streams = _refused_with_lost_statuses(tmp_path, monkeypatch, lose=1_000_000)
    assert streams >= heartbeat.WRITE_LOST_RETRIES + 1
    assert any("unreachable (INTERNAL: Internal error from Core)" in m for m in caplog.messages)


def test_zero_means_retry_forever(tmp_path: Path) -> None:
    async def scenario() -> bool:
        task = asyncio.create_task(link(tmp_path, "127.0.0.1:9", coordinator_lost_exit_s=0).run())
        await asyncio.sleep(1.0)
        still_trying = not task.done()
        task.cancel()
        return still_trying

    assert asyncio.run(scenario())


def test_a_report_carries_the_verified_store_files_disk_free_and_files_port(
    tmp_path: Path,
) -> None:
    config = WorkerSettings(coordinator="127.0.0.1:9", cluster_token=TOKEN, node_id="node-a",
                            node_key_dir=tmp_path / "keys", model_dirs=(tmp_path,))  # fmt: skip
    budget = MemoryBudget(limit_bytes=8 * GiB, reserve_bytes=0, available=lambda: 8 * GiB)
    models = ModelRegistry(config, budget, _no_model, _no_model)
    store = models.store
    assert store is not None
    store.ensure()
    store.path("ab" * 32).write_bytes(b"GGUF....")
    store.record_verified("ab" * 32, "tiny")
    store.path("cd" * 32).write_bytes(b"unverified")  # never listed, never served
    store.part("ef" * 32).write_bytes(b"half")

    async def scenario() -> Any:
        hardware = HardwareInfo("x86-cpu")
        worker = CoordinatorLink(config, models, budget, hardware, 50051, TOKEN, files_port=51051)
        return worker.report(0)

    report = asyncio.run(scenario())
    files = [(f.sha256, f.size_bytes, f.name) for f in report.stored_files]
    assert files == [("ab" * 32, 8, "tiny")]
    assert report.model_disk_free_bytes > 0 and report.files_port == 51051
