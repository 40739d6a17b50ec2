"""Loads that a caller abandons, and model paths that are not regular files.

Issue 14: four LoadModel calls cancelled by their deadline leaked 2.3 GB and 4 GiB of the
budget, their models neither listed nor unloadable; a FIFO in the model directory hung
LoadModel forever; a symlink loop, a NUL byte or an overlong path gave INTERNAL."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
from pathlib import Path

import pytest
from support.fake_model import FakeModels
from support.gguf_files import write_gguf

from common.errors import InvalidArgument, InvalidModelFile, ModelNotFound
from common.memory import GiB
from common.model_settings import ModelConfig
from common.status import ModelState
from worker.config import WorkerSettings
from worker.models.estimate import MemoryBudget
from worker.models.registry import ModelRegistry
from worker.models.served import ModelFacts, OnLost, ServedModel


async def no_split(config: ModelConfig, facts: ModelFacts, on_lost: OnLost) -> ServedModel:
    raise AssertionError("no split models here")


class GatedModels(FakeModels):
    """Builds fake models only once `gate` is set, as a slow llama.cpp load would."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.fail = fail

    def __call__(self, config: ModelConfig, facts: ModelFacts) -> ServedModel:
        assert self.gate.wait(5)
        if self.fail:
            raise InvalidModelFile("llama.cpp refused it")
        return super().__call__(config, facts)


def _registry(folder: Path, models: FakeModels) -> tuple[ModelRegistry, MemoryBudget]:
    budget = MemoryBudget(limit_bytes=8 * GiB, reserve_bytes=0, available=lambda: 8 * GiB)
    return ModelRegistry(WorkerSettings(model_dirs=(folder,)), budget, models, no_split), budget


def _config(path: Path, alias: str) -> ModelConfig:
    return ModelConfig(alias=alias, path=str(path), n_ctx=128, n_batch=64, n_parallel=1)


async def _settle(registry: ModelRegistry, aliases: set[str]) -> None:
    for _ in range(500):
        states = {m.alias: m.state for m in registry.list()}
        if all(states.get(a) not in (ModelState.LOADING, None) for a in aliases) or not states:
            return
        await asyncio.sleep(0.01)


def test_loads_whose_callers_gave_up_end_loaded_listed_and_unloadable(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "m.gguf"
        write_gguf(path, context_length=256)
        models = GatedModels()
        registry, budget = _registry(tmp_path, models)
        aliases = {f"m{i}" for i in range(4)}
        for alias in sorted(aliases):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(registry.load(_config(path, alias)), 0.05)
        models.gate.set()
        await _settle(registry, aliases)
        listed = {m.alias: m for m in registry.list()}
        assert set(listed) == aliases
        assert all(m.state is ModelState.READY for m in listed.values())
        assert budget.reserved_bytes == sum(m.estimate.total_bytes for m in listed.values())
        for alias in sorted(aliases):
            await registry.unload(alias)
        assert registry.list() == []
        assert budget.reserved_bytes == 0
        assert all(b.closed for b in models.backends.values())

    asyncio.run(scenario())


def test_a_failed_load_whose_caller_gave_up_releases_everything(tmp_path: Path) -> None:
    async def scenario() -> None:
        write_gguf(tmp_path / "m.gguf", context_length=256)
        models = GatedModels(fail=True)
        registry, budget = _registry(tmp_path, models)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(registry.load(_config(tmp_path / "m.gguf", "m")), 0.05)
        models.gate.set()
        for _ in range(500):
            if not registry.list():
                break
            await asyncio.sleep(0.01)
        assert registry.list() == []
        assert budget.reserved_bytes == 0
        with pytest.raises(ModelNotFound):
            registry.get("m")

    asyncio.run(scenario())


def _fifo(folder: Path) -> Path:
    path = folder / "fifo.gguf"
    os.mkfifo(path)
    return path


def _directory(folder: Path) -> Path:
    path = folder / "dir.gguf"
    path.mkdir()
    return path


def _socket(folder: Path) -> Path:
    path = folder / "sock.gguf"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()
    return path


def _device(folder: Path) -> Path:
    path = folder / "null.gguf"
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # as /dev/null; needs root
    return path


def _loop(folder: Path) -> Path:
    (folder / "a.gguf").symlink_to(folder / "b.gguf")
    (folder / "b.gguf").symlink_to(folder / "a.gguf")
    return folder / "a.gguf"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_fifo, "is a FIFO, not a regular file"),
        (_directory, "is a directory, not a regular file"),
        (_socket, "is a socket, not a regular file"),
        (_device, "is a character device, not a regular file"),
        (_loop, "is a symlink loop"),
        (lambda folder: Path(str(folder / "a\0b.gguf")), "contains a NUL byte"),
        (lambda folder: folder / ("x" * 5000), "the limit is 4096"),
        (lambda folder: folder / ("x" * 300) / "m.gguf", "cannot be"),
    ],
)
def test_paths_that_are_not_regular_files_are_refused_before_opening(
    tmp_path: Path, make, message: str
) -> None:
    async def scenario() -> None:
        registry, budget = _registry(tmp_path, GatedModels())
        config = _config(make(tmp_path), "m")
        with pytest.raises(InvalidArgument) as caught:
            await asyncio.wait_for(registry.load(config, trusted=True), 5)
        assert message in caught.value.message
        with pytest.raises(InvalidArgument) as caught:
            await asyncio.wait_for(registry.estimate(config), 5)
        assert message in caught.value.message
        assert registry.list() == []
        assert budget.reserved_bytes == 0

    asyncio.run(scenario())
