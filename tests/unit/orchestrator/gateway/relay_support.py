"""Routers over Worker services in this process, for the gateway's unit tests: the real
servicer, registry, engine and models on the fake llama.cpp backend
(tests/unit/worker/api/serving.py), and snapshots that list them as nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from common.hardware import HardwareInfo
from common.model_settings import ModelConfig
from common.status import EngineFigures, ModelState, ModelStatus, NodeStatus
from orchestrator.cluster.types import ClusterSnapshot, Node
from orchestrator.gateway.router import Router
from orchestrator.routing.policies import RoundRobin
from orchestrator.worker_client import WorkerClients
from tests.unit.worker.api.serving import Worker, serving


def worker_node(node_id: str, address: str, *, load: int = 0, max_queue: int = 64) -> Node:
    config = ModelConfig(alias="m", path="/models/m.gguf", max_queue=max_queue)
    engine = EngineFigures(slots_total=1, active=min(load, 1), queued=max(load - 1, 0))
    replica = ModelStatus("m", config, ModelState.READY, engine=engine)
    return Node(NodeStatus(node_id, address, HardwareInfo("x86-cpu"), (replica,)))


def make_router(*nodes: Node, retries: int = 2, stall_timeout_s: float = 30.0) -> Router:
    router = Router(RoundRobin(), WorkerClients(), retries, stall_timeout_s=stall_timeout_s)
    router.update(ClusterSnapshot(version=1, taken_at=0.0, nodes=nodes))
    return router


@asynccontextmanager
async def two_workers(tmp_path: Path, step_delay: float = 0.01) -> AsyncIterator[list[Worker]]:
    async with AsyncExitStack() as stack:
        workers = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            worker = await stack.enter_async_context(serving(tmp_path / name, {"alias": "m"}))
            worker.models.backends["m"].step_delay = step_delay
            workers.append(worker)
        yield workers


def busy(worker: Worker) -> int:
    engine = worker.registry.info("m").engine
    return engine.active + engine.queued
