"""The worker's coordinator link against a real registry in this process: it registers with
the token and its node key, says clearly when it is refused, and gives up on a coordinator
that is gone (or refusing) after coordinator_lost_exit_s instead of retrying forever."""

from __future__ import annotations

import asyncio
import logging
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from common.hardware import HardwareInfo
from common.memory import GiB
from orchestrator.cluster.registry import WorkerRegistry
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
    async def scenario() -> None:
        registry = WorkerRegistry(0.2, 1.0, 60.0, TOKEN)
        port = await registry.start("127.0.0.1", 0)
        try:
            wrong = link(tmp_path, f"127.0.0.1:{port}", SecretStr("old-token"),
                         coordinator_lost_exit_s=0.8)  # fmt: skip
            await asyncio.wait_for(wrong.run(), 10)
            assert not wrong.registered.is_set() and registry.snapshot().nodes == ()
        finally:
            await registry.stop()

    with caplog.at_level(logging.INFO, logger="worker.api.heartbeat"):
        asyncio.run(scenario())
    refusals = [m for m in caplog.messages if "refused this worker's cluster token" in m]
    assert len(refusals) == 1, "said once, not at every retry"
    assert "LLAMAHERD_CLUSTER_TOKEN" in refusals[0] and "old-token" not in caplog.text
    assert any("coordinator_lost_exit_s" in m for m in caplog.messages)


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
