"""One real worker process for the integration tests, serving the real Gemma model twice:
for generation (alias `gemma`) and for embeddings (alias `gemma-embed`).

Every process the integration tests start runs with the run's own cluster join token
(LLAMAHERD_CLUSTER_TOKEN, inherited), as a real cluster does; clients send it through
support.auth (worker_channel, token_metadata)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc
from llamaherd.v1 import worker_pb2_grpc
from support.auth import worker_channel
from support.models import GEMMA, GEMMA_EMBED, N_CTX
from support.worker_process import WorkerProcess, start_worker

from common.cluster_secrets import TOKEN_ENV, new_secret


@pytest.fixture(scope="session", autouse=True)
def cluster_token_env() -> Iterator[None]:
    """A join token for this run, in the environment every started process inherits. Session
    scope, so that it is there before any session fixture starts a process (unit tests
    pass their environment explicitly and never depend on it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_ENV, new_secret())
        yield


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker's model_dirs: runtime loads may read GGUF files from here only."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def worker(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, cluster_token_env: None
) -> Iterator[WorkerProcess]:
    config = {
        "model_dirs": [str(models_dir)],
        "models": [
            # One slot, so that a second request waits: the queue and cancel tests need
            # that. Batching has models of its own in worker/test_batching.py.
            {
                "alias": GEMMA,
                "path": "builtin:gemma-3-270m",
                "n_ctx": N_CTX,
                "n_batch": 256,
                "n_parallel": 1,
            },
            {"alias": GEMMA_EMBED, "path": "builtin:gemma-3-270m", "n_ctx": 512, "embedding": True},
        ],
    }
    process = start_worker(tmp_path_factory.mktemp("worker"), config)
    yield process
    code = process.stop()
    assert code == 0, f"worker did not shut down cleanly ({code}):\n{process.log_tail()}"


@pytest.fixture(scope="session")
def channel(worker: WorkerProcess) -> Iterator[grpc.Channel]:
    with worker_channel(worker.address) as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> worker_pb2_grpc.WorkerStub:
    return worker_pb2_grpc.WorkerStub(channel)


@pytest.fixture(scope="session")
def health_stub(channel: grpc.Channel) -> health_pb2_grpc.HealthStub:
    return health_pb2_grpc.HealthStub(channel)


@pytest.fixture(autouse=True)
def _worker_survives(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test sent, the shared worker must still be running afterwards."""
    yield
    if "worker" in request.fixturenames:
        process: WorkerProcess = request.getfixturevalue("worker")
        assert process.alive(), f"the worker died:\n{process.log_tail()}"
