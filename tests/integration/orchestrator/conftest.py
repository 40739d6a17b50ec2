"""A real cluster for the gateway tests: `llamaherd coordinator` (local Ray, registry,
placement, gateway) and two workers that register with it and get their models placed.

Catalog: `gemma` on both workers, `gemma-embed` only on the worker labelled `embed`, and
`nowhere`, which asks for a label no worker has, so placement must report it. Everything
runs with the test run's join token (tests/integration/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from support.cluster import Coordinator, ready_replicas, start_coordinator, start_node, wait_for
from support.models import GEMMA, GEMMA_EMBED
from support.worker_process import WorkerProcess

CATALOG = [
    {"alias": GEMMA, "path": "builtin:gemma-3-270m", "replicas": 2, "n_ctx": 1024,
     "n_batch": 256, "n_threads": 1},
    {"alias": GEMMA_EMBED, "path": "builtin:gemma-3-270m", "replicas": 1, "n_ctx": 512,
     "embedding": True, "labels": ["embed"], "n_threads": 1},
    {"alias": "nowhere", "path": "builtin:gemma-3-270m", "replicas": 1,
     "labels": ["gpu-80g"]},
]  # fmt: skip


@dataclass
class Cluster:
    coordinator: Coordinator
    workers: dict[str, WorkerProcess]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, cluster_token_env: None) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    coordinator = start_coordinator(workdir, CATALOG)
    workers: dict[str, WorkerProcess] = {}
    try:
        workers["worker-a"] = start_node(workdir, coordinator, "worker-a")
        workers["worker-b"] = start_node(workdir, coordinator, "worker-b", "--label", "embed")
        wait_for(
            lambda: (
                (r := ready_replicas(coordinator)).get(GEMMA) == {"worker-a", "worker-b"}
                and r.get(GEMMA_EMBED) == {"worker-b"}
            ),
            120,
            "the catalog's models to be placed",
        )
        yield Cluster(coordinator, workers)
    finally:
        for worker in workers.values():
            worker.stop()
        code = coordinator.stop()
    assert code == 0, f"coordinator did not stop cleanly ({code}):\n{coordinator.log_tail()}"


@pytest.fixture(autouse=True)
def _cluster_survives(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test sent, the shared cluster's processes must still be running."""
    yield
    if "cluster" in request.fixturenames:
        cluster: Cluster = request.getfixturevalue("cluster")
        assert cluster.coordinator.alive(), cluster.coordinator.log_tail()
        for name, worker in cluster.workers.items():
            assert worker.alive(), f"{name} died:\n{worker.log_tail()}"
