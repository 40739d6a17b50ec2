"""The settings a split model's child worker starts with (worker.split.runner)."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from support.gguf_files import write_gguf

from common.estimate import ModelShape, estimate_memory
from common.gguf import read_gguf
from common.model_settings import ModelConfig
from worker.config import WorkerSettings
from worker.models.served import ModelFacts
from worker.split.runner import _child_settings

SPLIT = {"rpc_servers": ["10.0.0.2:50052"], "tensor_split": [1.0], "n_gpu_layers": 1}


def facts_for(path: Path, config: ModelConfig, n_parallel: int) -> ModelFacts:
    gguf = read_gguf(path)
    shape = ModelShape.from_gguf(gguf)
    estimate = estimate_memory(gguf, shape, config.n_ctx, config.n_batch, False, n_parallel)
    return ModelFacts(path, gguf, estimate, config.n_ctx, n_parallel)


def child_of(tmp_path: Path, n_parallel: int, slots: int) -> WorkerSettings:
    path = tmp_path / "tiny.gguf"
    write_gguf(path, context_length=256)
    config = ModelConfig(
        alias="s", path=str(path), n_ctx=128, n_batch=64, n_parallel=n_parallel, **SPLIT
    )
    head = WorkerSettings(model_dirs=(tmp_path,), cluster_token=SecretStr("t" * 32))
    return WorkerSettings(**_child_settings(config, head, facts_for(path, config, slots)))


def test_the_child_batches_the_slots_the_head_sized(tmp_path):
    # n_parallel 0: the head sized the slots from its memory budget (here 3); the child
    # must get those, not size them again from its own view of memory.
    child = child_of(tmp_path, n_parallel=0, slots=3)
    assert child.split_child and child.host == "127.0.0.1"
    (model,) = child.models
    assert model.n_parallel == 3 and model.rpc_servers == ("10.0.0.2:50052",)


def test_an_explicit_slot_count_reaches_the_child_unchanged(tmp_path):
    (model,) = child_of(tmp_path, n_parallel=8, slots=8).models
    assert model.n_parallel == 8 and model.n_batch == 64


def test_the_child_guards_its_port_with_the_heads_token(tmp_path):
    child = child_of(tmp_path, n_parallel=1, slots=1)
    assert child.cluster_token is not None
    assert child.cluster_token.get_secret_value() == "t" * 32
