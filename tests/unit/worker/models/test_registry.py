"""The model registry without llama.cpp: its checks, states, memory and listeners.

Models are built by the registry's injected factories: real LocalModels over the fake
llama.cpp backend (tests/support/fake_backend.py), so nothing here loads a real model or
starts a process. The same checks against a real worker are in
tests/integration/worker/test_models.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support.fake_model import FakeModels
from support.gguf_files import write_gguf

from common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidModelFile,
    LlamaherdError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from common.memory import GiB
from common.model_settings import ModelConfig
from common.status import ModelState
from worker.config import WorkerSettings
from worker.engine.generation import Finished
from worker.engine.sampling import SamplingParams
from worker.models.estimate import MemoryBudget
from worker.models.registry import ModelRegistry
from worker.models.served import ModelFacts, OnLost, ServedModel

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def never_built(config: ModelConfig, facts: ModelFacts) -> ServedModel:
    raise AssertionError(f"model {config.alias} was built although a check should refuse it")


async def never_started(config: ModelConfig, facts: ModelFacts, on_lost: OnLost) -> ServedModel:
    raise AssertionError(f"split model {config.alias} was started")


def make_registry(
    models_dir: Path,
    local: Callable[[ModelConfig, ModelFacts], ServedModel] = never_built,
    split: Callable[[ModelConfig, ModelFacts, OnLost], Awaitable[ServedModel]] = never_started,
    free: int = 8 * GiB,
    budget: MemoryBudget | None = None,
) -> ModelRegistry:
    settings = WorkerSettings(model_dirs=(models_dir,))
    budget = budget or MemoryBudget(limit_bytes=free, reserve_bytes=0, available=lambda: free)
    return ModelRegistry(settings, budget, local, split)


async def reply_text(model: ServedModel, prompt: str, max_tokens: int = 4) -> str:
    sampling = SamplingParams.create(temperature=0.0, max_tokens=max_tokens)
    events = [e async for e in model.generate("r1", prompt, sampling, None)]
    assert isinstance(events[-1], Finished)
    return "".join(e.text for e in events)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture
def tiny(models_dir: Path) -> Path:
    """A structurally valid GGUF (metadata only: the fake backend runs it)."""
    return write_gguf(models_dir / "tiny.gguf", context_length=256)


def config(path: Path | str, alias: str = "m", **settings: Any) -> ModelConfig:
    return ModelConfig(alias=alias, path=str(path), n_ctx=128, n_batch=64, **settings)


# ---- the checks of a load, in order ----------------------------------------------------
def test_a_path_outside_model_dirs_is_refused_naming_the_allowed_dirs(tmp_path, models_dir):
    outside = write_gguf(tmp_path / "elsewhere.gguf")
    registry = make_registry(models_dir)
    with pytest.raises(PermissionDenied) as refused:
        run(registry.load(config(outside)))
    assert str(models_dir) in refused.value.message
    assert "model_dirs" in refused.value.message
    assert registry.list() == []


def test_outside_model_dirs_is_checked_before_existence(tmp_path, models_dir):
    registry = make_registry(models_dir)
    with pytest.raises(PermissionDenied):
        run(registry.load(config(tmp_path / "missing.gguf")))


def test_a_config_file_model_is_trusted_wherever_it_is(tmp_path, models_dir):
    registry = make_registry(models_dir)
    with pytest.raises(NotFound):  # past the directory check, to the existence check
        run(registry.load(config(tmp_path / "missing.gguf"), trusted=True))


def test_a_missing_file_is_not_found(models_dir):
    registry = make_registry(models_dir)
    with pytest.raises(NotFound, match="does not exist"):
        run(registry.load(config(models_dir / "missing.gguf")))


def test_a_file_that_is_not_gguf_is_invalid(models_dir):
    (models_dir / "notes.gguf").write_text("not a model at all, just some text\n" * 10)
    registry = make_registry(models_dir)
    with pytest.raises(InvalidModelFile):
        run(registry.load(config(models_dir / "notes.gguf")))


def test_a_model_that_does_not_fit_is_refused_before_it_is_built(models_dir, tiny):
    registry = make_registry(models_dir, free=64 * 1024)
    with pytest.raises(ResourceExhausted, match="needs about"):
        run(registry.load(config(tiny)))
    assert registry.list() == []


def test_a_refused_load_leaves_no_entry_and_the_alias_free(models_dir, tiny):
    registry = make_registry(models_dir, free=64 * 1024)
    for _ in range(2):  # the second attempt is refused for the same reason, not AlreadyExists
        with pytest.raises(ResourceExhausted):
            run(registry.load(config(tiny)))


# ---- slots sized from memory -----------------------------------------------------------
def test_auto_n_parallel_halves_until_the_model_fits(models_dir, tiny):
    sizes = {
        n: run(make_registry(models_dir).estimate(config(tiny, n_parallel=n))).total_bytes
        for n in (1, 2, 4)
    }
    assert sizes[1] < sizes[2] < sizes[4]
    # Room for two slots but not four: auto sizing settles on two rather than refusing.
    registry = make_registry(models_dir, free=(sizes[2] + sizes[4]) // 2)
    assert run(registry.estimate(config(tiny))).total_bytes == sizes[2]
    # Not even one slot fits: refused, not sized below one.
    registry = make_registry(models_dir, free=sizes[1] - 1)
    with pytest.raises(ResourceExhausted):
        run(registry.load(config(tiny)))


def test_an_explicit_n_parallel_is_never_reduced(models_dir, tiny):
    four = run(make_registry(models_dir).estimate(config(tiny, n_parallel=4))).total_bytes
    registry = make_registry(models_dir, free=four - 1)
    with pytest.raises(ResourceExhausted):
        run(registry.load(config(tiny, n_parallel=4)))


# ---- configured models -----------------------------------------------------------------
def test_a_configured_model_that_fails_stays_failed_with_its_reason(models_dir):
    registry = make_registry(models_dir)
    changes: list[list[tuple[str, ModelState]]] = []
    registry.on_change(lambda: changes.append([(s.alias, s.state) for s in registry.list()]))
    run(registry.load_configured((config(models_dir / "gone.gguf", alias="gone"),)))
    (status,) = registry.list()
    assert (status.alias, status.state) == ("gone", ModelState.FAILED)
    assert "does not exist" in status.error
    assert changes[0] == [("gone", ModelState.LOADING)]
    assert changes[-1] == [("gone", ModelState.FAILED)]
    with pytest.raises(LlamaherdError, match="failed to load"):
        registry.get("gone")


def test_a_configured_model_that_fails_leaves_the_others_serving(models_dir, tiny):
    models = FakeModels()
    registry = make_registry(models_dir, local=models)
    configs = (config(models_dir / "gone.gguf", alias="gone"), config(tiny, alias="tiny"))

    async def scenario() -> str:
        await registry.load_configured(configs)
        with registry.lease("tiny") as model:
            return await reply_text(model, "Hi")

    assert run(scenario()) == "cdef"  # the fake's default reply, from position 2 on
    assert {s.alias: s.state for s in registry.list()} == {
        "gone": ModelState.FAILED,
        "tiny": ModelState.READY,
    }
    assert models.built == ["tiny"]
    # A failed alias may be loaded again once its file is there.
    write_gguf(models_dir / "gone.gguf")
    assert run(registry.load(config(models_dir / "gone.gguf", alias="gone"))).ready


# ---- aliases ---------------------------------------------------------------------------
def test_an_alias_in_use_is_refused_before_anything_else_is_checked(tmp_path, models_dir, tiny):
    models = FakeModels()
    registry = make_registry(models_dir, local=models)
    run(registry.load(config(tiny)))
    for path in (tiny, tmp_path / "outside.gguf"):  # not even the directory is looked at
        with pytest.raises(AlreadyExists, match="unload it first"):
            run(registry.load(config(path)))
    assert models.built == ["m"]


def test_an_unknown_alias_is_not_found_naming_the_loaded_models(models_dir, tiny):
    registry = make_registry(models_dir, local=FakeModels())
    run(registry.load(config(tiny, alias="b")))
    run(registry.load(config(tiny, alias="a")))
    with pytest.raises(NotFound, match="loaded: 'a', 'b'"):
        registry.get("c")


# ---- memory ------------------------------------------------------------------------------
def test_a_model_reserves_its_estimate_until_it_is_unloaded(models_dir, tiny):
    budget = MemoryBudget(limit_bytes=8 * GiB, reserve_bytes=0, available=lambda: 8 * GiB)
    registry = make_registry(models_dir, local=FakeModels(), budget=budget)
    status = run(registry.load(config(tiny)))
    assert status.estimate is not None
    assert budget.reserved_bytes == status.estimate.total_bytes
    run(registry.unload("m"))
    assert budget.reserved_bytes == 0


def test_a_model_whose_build_fails_gives_its_memory_back(models_dir, tiny):
    budget = MemoryBudget(limit_bytes=8 * GiB, reserve_bytes=0, available=lambda: 8 * GiB)

    def refuses(config: ModelConfig, facts: ModelFacts) -> ServedModel:
        raise FailedPrecondition("llama.cpp refused the file")

    registry = make_registry(models_dir, local=refuses, budget=budget)
    with pytest.raises(FailedPrecondition):
        run(registry.load(config(tiny)))
    assert budget.reserved_bytes == 0
    assert registry.list() == []


def test_auto_n_parallel_builds_the_model_with_the_slots_that_fit(models_dir, tiny):
    two = run(make_registry(models_dir).estimate(config(tiny, n_parallel=2))).total_bytes
    four = run(make_registry(models_dir).estimate(config(tiny, n_parallel=4))).total_bytes
    models = FakeModels()
    registry = make_registry(models_dir, local=models, free=(two + four) // 2)
    status = run(registry.load(config(tiny)))
    assert status.engine.slots_total == 2
    assert models.backends["m"].n_seq == 2


# ---- unloading -----------------------------------------------------------------------------
def test_unloading_waits_for_the_requests_that_hold_a_lease(models_dir, tiny):
    models = FakeModels()
    registry = make_registry(models_dir, local=models)

    async def scenario() -> None:
        await registry.load(config(tiny))
        with registry.lease("m"):
            unloading = asyncio.create_task(registry.unload("m"))
            await asyncio.sleep(0.2)
            assert not unloading.done()
            assert registry.info("m").state is ModelState.UNLOADING
            assert not models.backends["m"].closed
            with pytest.raises(Unavailable, match="unloading"):
                registry.get("m")
        await asyncio.wait_for(unloading, 5)

    run(scenario())
    assert models.backends["m"].closed
    assert registry.list() == []


def test_unloading_an_unknown_model_is_not_found(models_dir):
    with pytest.raises(NotFound):
        run(make_registry(models_dir).unload("nothing"))


def test_a_closed_model_refuses_new_requests_with_the_reason(models_dir, tiny):
    registry = make_registry(models_dir, local=FakeModels())

    async def scenario() -> None:
        await registry.load(config(tiny))
        model = registry.get("m")
        await registry.unload("m", "maintenance")
        with pytest.raises(Unavailable, match="maintenance"), model.lease():
            pass

    run(scenario())


# ---- draining ------------------------------------------------------------------------------
def test_draining_refuses_new_requests_and_lets_running_ones_finish(models_dir, tiny):
    models = FakeModels()
    registry = make_registry(models_dir, local=models)
    states: list[ModelState] = []

    async def scenario() -> str:
        await registry.load(config(tiny))
        models.backends["m"].step_delay = 0.01  # 30 tokens: about 0.3 s
        registry.on_change(lambda: states.extend(m.state for m in registry.list()))
        running = asyncio.create_task(reply_text(registry.get("m"), "Hello", max_tokens=30))
        while registry.in_flight() == 0:
            await asyncio.sleep(0.005)
        registry.drain("maintenance")
        assert registry.info("m").state is ModelState.DRAINING
        with pytest.raises(Unavailable, match=r"draining \(maintenance\); use another node"):
            registry.get("m")
        assert registry.in_flight() == 1 and not await registry.wait_idle(0.05)
        assert await registry.wait_idle(5)
        text = await running
        await registry.close_all()
        assert registry.list() == []
        return text

    assert len(run(scenario())) == 30  # the running request ran to its end
    assert states[0] is ModelState.DRAINING


def test_a_draining_split_model_can_still_be_lost(models_dir, tiny):
    lost: list[OnLost] = []

    async def start_split(config: ModelConfig, facts: ModelFacts, on_lost: OnLost) -> ServedModel:
        lost.append(on_lost)
        return FakeModels()(config, facts)

    registry = make_registry(models_dir, split=start_split)

    async def scenario() -> None:
        await registry.load(config(tiny, **SPLIT))
        registry.drain("upgrade")
        lost[0]("split model 'm' lost: helper gone")
        assert registry.info("m").state is ModelState.FAILED

    run(scenario())


# ---- split models --------------------------------------------------------------------------
SPLIT = {"rpc_servers": ("10.0.0.2:50052",), "tensor_split": (1.0,), "n_gpu_layers": 1}


def test_a_split_model_lost_while_serving_fails_its_requests_with_unavailable(models_dir, tiny):
    """The split model's own watchdog (worker.split.runner) reports a lost helper through
    on_lost; the registry marks it FAILED, frees its memory and refuses requests."""
    models = FakeModels()
    reports: list[OnLost] = []

    async def start_split(config: ModelConfig, facts: ModelFacts, on_lost: OnLost) -> ServedModel:
        reports.append(on_lost)
        return models(config, facts)  # stands in for the child: what is tested is the registry

    budget = MemoryBudget(limit_bytes=8 * GiB, reserve_bytes=0, available=lambda: 8 * GiB)
    registry = make_registry(models_dir, split=start_split, budget=budget)
    states: list[ModelState] = []
    registry.on_change(lambda: states.extend(s.state for s in registry.list()))
    run(registry.load(config(tiny, alias="s", **SPLIT)))
    assert budget.reserved_bytes > 0

    (lost,) = reports
    lost("split model 's' lost: helper 10.0.0.2:50052 has not answered for 3 s")
    status = registry.info("s")
    assert status.state is ModelState.FAILED
    assert "has not answered" in status.error
    assert states[-1] is ModelState.FAILED
    assert budget.reserved_bytes == 0
    with pytest.raises(Unavailable, match=r"lost: helper .* re-plans"):
        registry.get("s")
    lost("reported twice")  # a second report changes nothing
    assert registry.info("s").error == status.error

    # Unloading it (the coordinator cleaning up) stops what is left of it.
    run(registry.unload("s"))
    assert models.backends["s"].closed
    assert registry.list() == []


def test_loading_over_a_lost_split_model_stops_the_old_one_first(models_dir, tiny):
    models = FakeModels()
    reports: list[OnLost] = []

    async def start_split(config: ModelConfig, facts: ModelFacts, on_lost: OnLost) -> ServedModel:
        reports.append(on_lost)
        return models(config, facts)

    registry = make_registry(models_dir, split=start_split)
    run(registry.load(config(tiny, alias="s", **SPLIT)))
    old = models.backends["s"]
    reports[0]("split model 's' lost: the process hosting it exited")
    assert run(registry.load(config(tiny, alias="s", **SPLIT))).ready
    assert old.closed and not models.backends["s"].closed


def test_a_split_child_loads_its_split_model_in_process(models_dir, tiny):
    """In the child worker (split_child), a model with rpc_servers is a local model."""
    models = FakeModels()
    settings = WorkerSettings(model_dirs=(models_dir,), split_child=True)
    budget = MemoryBudget(limit_bytes=8 * GiB, reserve_bytes=0, available=lambda: 8 * GiB)
    registry = ModelRegistry(settings, budget, models, never_started)
    assert run(registry.load(config(tiny, alias="s", **SPLIT))).ready
    assert models.built == ["s"]


# ---- listeners -----------------------------------------------------------------------------
def test_listeners_see_every_state_a_model_passes_through(models_dir, tiny):
    registry = make_registry(models_dir, local=FakeModels())
    seen: list[dict[str, ModelState]] = []
    registry.on_change(lambda: seen.append({s.alias: s.state for s in registry.list()}))
    run(registry.load(config(tiny)))
    run(registry.unload("m"))
    assert seen == [
        {"m": ModelState.LOADING},
        {"m": ModelState.READY},
        {"m": ModelState.UNLOADING},
        {},
    ]
