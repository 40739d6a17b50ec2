"""Store models in the registry: fetched (DOWNLOADING, with progress), verified, loaded from
the store dir; an unload cancels the download; a file that never matches is FAILED and is
never built.

Models are built by FakeModels (real LocalModels over the fake llama.cpp backend); files
come from an httpx MockTransport serving a real GGUF (tests/unit/worker/models/test_fetch.py
has the fetcher's own cases).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

import httpx
import pytest
from support.fake_model import FakeModels
from support.gguf_files import write_gguf

from common.errors import FailedPrecondition, NotFound, Unavailable
from common.memory import GiB
from common.model_settings import ModelConfig, ModelSource
from common.status import ModelState
from worker.config import WorkerSettings
from worker.models.estimate import MemoryBudget
from worker.models.fetch import Fetcher, StoreDir
from worker.models.registry import ModelRegistry
from worker.models.served import ServedModel

CHUNK = 1024


@pytest.fixture
def gguf(tmp_path: Path) -> bytes:
    return write_gguf(tmp_path / "tiny.gguf", context_length=256).read_bytes()


class Source:
    """Serves `data` (with Range), optionally with one byte flipped, pausing after the
    first chunk until `go` is set."""

    def __init__(self, data: bytes, flipped: bool = False) -> None:
        self.data = data
        self.flipped = flipped
        self.go = threading.Event()
        self.go.set()
        self.started = threading.Event()
        self.requests = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        first = int(request.headers.get("range", "bytes=0-").removeprefix("bytes=").rstrip("-"))
        body = bytearray(self.data)
        if self.flipped:
            body[-1] ^= 0xFF
        headers = {"content-length": str(len(body) - first)}
        if first:
            headers["content-range"] = f"bytes {first}-{len(body) - 1}/{len(body)}"

        def chunks() -> object:
            for offset in range(first, len(body), CHUNK):
                yield bytes(body[offset : offset + CHUNK])
                self.started.set()
                self.go.wait(5)

        return httpx.Response(206 if first else 200, headers=headers, content=chunks())  # type: ignore[arg-type]


def store_config(data: bytes, alias: str = "m") -> ModelConfig:
    source = ModelSource(name="tiny", sha256=hashlib.sha256(data).hexdigest(),
                         size_bytes=len(data), urls=("http://store:8002/f",))  # fmt: skip
    return ModelConfig(alias=alias, path="store:tiny", n_ctx=128, n_batch=64, source=source)


def make_registry(
    tmp_path: Path, source: Source, models: FakeModels | None = None
) -> ModelRegistry:
    models_dir = tmp_path / "models"
    settings = WorkerSettings(model_dirs=(models_dir,))
    fetcher = Fetcher(
        StoreDir(settings.model_dirs[0] / "store"), "token", retries=1, retry_delay_s=0.0,
        chunk_bytes=CHUNK, margin_bytes=0, transport=httpx.MockTransport(source.handle),
    )  # fmt: skip
    budget = MemoryBudget(limit_bytes=8 * GiB, reserve_bytes=0, available=lambda: 8 * GiB)

    def never_split(*_: object) -> ServedModel:
        raise AssertionError("not a split model")

    return ModelRegistry(settings, budget, models or FakeModels(), never_split, fetcher=fetcher)  # type: ignore[arg-type]


def test_a_store_model_is_downloading_then_ready_from_the_verified_file(
    tmp_path: Path, gguf: bytes
) -> None:
    source, models = Source(gguf), FakeModels()
    registry = make_registry(tmp_path, source, models)
    states: list[ModelState] = []
    registry.on_change(lambda: states.extend(s.state for s in registry.list()))
    status = asyncio.run(registry.load(store_config(gguf)))
    assert status.ready and models.built == ["m"]
    assert states[0] is ModelState.DOWNLOADING and ModelState.LOADING in states
    sha = hashlib.sha256(gguf).hexdigest()
    assert registry.store is not None
    assert registry.store.verified(sha) == tmp_path.resolve() / "models" / "store" / f"{sha}.gguf"
    assert status.file_bytes == len(gguf) and status.download is None


def test_progress_is_listed_while_downloading(tmp_path: Path, gguf: bytes) -> None:
    source = Source(gguf)
    source.go.clear()
    registry = make_registry(tmp_path, source)

    async def scenario() -> None:
        load = asyncio.create_task(registry.load(store_config(gguf)))
        while not source.started.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # past the progress interval
        (status,) = registry.list()
        assert status.state is ModelState.DOWNLOADING and status.download is not None
        assert status.download.bytes_done == CHUNK
        assert status.download.bytes_total == len(gguf)
        assert status.download.source == "store:8002" and status.download.attempt == 1
        source.go.set()
        assert (await load).ready

    asyncio.run(scenario())


def test_unload_while_downloading_cancels_it_and_keeps_the_part(
    tmp_path: Path, gguf: bytes
) -> None:
    source = Source(gguf)
    source.go.clear()
    registry = make_registry(tmp_path, source)
    sha = hashlib.sha256(gguf).hexdigest()

    async def scenario() -> None:
        load = asyncio.create_task(registry.load(store_config(gguf)))
        while not source.started.is_set():
            await asyncio.sleep(0.01)
        unload = asyncio.create_task(registry.unload("m"))
        await asyncio.sleep(0.05)
        source.go.set()
        await unload
        with pytest.raises(Unavailable, match="unloaded while its file was downloading"):
            await load
        assert registry.list() == []

    asyncio.run(scenario())
    assert registry.store is not None
    part = registry.store.part(sha)
    assert 0 < part.stat().st_size < len(gguf)
    asyncio.run(registry.load(store_config(gguf)))  # resumes: one more request, from the part
    assert source.requests == 2


def test_a_file_that_never_matches_is_failed_and_never_built(tmp_path: Path, gguf: bytes) -> None:
    models = FakeModels()
    registry = make_registry(tmp_path, Source(gguf, flipped=True), models)
    with pytest.raises(FailedPrecondition, match="failed its check 2 times"):
        asyncio.run(registry.load(store_config(gguf)))
    (status,) = registry.list()
    assert status.state is ModelState.FAILED and "does not match" in status.error
    assert models.built == []
    # A FAILED store model may be loaded again (placement's retry), here from a good source.
    assert asyncio.run(make_registry(tmp_path, Source(gguf)).load(store_config(gguf))).ready


def test_estimating_a_store_model_not_here_says_so(tmp_path: Path, gguf: bytes) -> None:
    registry = make_registry(tmp_path, Source(gguf))
    with pytest.raises(NotFound, match="not on this node yet"):
        asyncio.run(registry.estimate(store_config(gguf)))


def test_loaded_and_configured_store_files_are_kept(tmp_path: Path, gguf: bytes) -> None:
    registry = make_registry(tmp_path, Source(gguf))
    asyncio.run(registry.load(store_config(gguf)))
    assert registry._kept_files() == {hashlib.sha256(gguf).hexdigest()}
