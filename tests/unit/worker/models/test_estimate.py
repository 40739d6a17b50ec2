"""The memory estimate from GGUF metadata, and the budget that refuses loads before llama.cpp
is asked. The comparison with what llama.cpp really allocates for Gemma is in
tests/integration/worker/test_memory_estimate.py."""

from __future__ import annotations

import numpy as np
import pytest
from support.gguf_files import write_gguf

from common.errors import InvalidModelFile, ResourceExhausted
from common.gguf import read_gguf
from common.memory import GiB, MemoryEstimate
from worker.models.estimate import (
    MemoryBudget,
    ModelShape,
    estimate_kv_cache,
    estimate_memory,
    kv_cells,
)


def _shape(tmp_path, **kwargs) -> ModelShape:
    return ModelShape.from_gguf(read_gguf(write_gguf(tmp_path / "m.gguf", **kwargs)))


def test_shape_comes_from_the_metadata(tmp_path):
    shape = _shape(tmp_path, block_count=3, embedding_length=64, head_count=8, head_count_kv=2,
                   context_length=2048, vocab_size=40)  # fmt: skip
    assert (shape.n_layer, shape.n_embd, shape.n_head) == (3, 64, 8)
    assert shape.n_head_kv == (2, 2, 2)
    assert shape.head_dim_k == shape.head_dim_v == 8
    assert shape.n_vocab == 40 and shape.n_ctx_train == 2048


@pytest.mark.parametrize(("n_ctx", "cells"), [(1, 256), (256, 256), (257, 512), (4096, 4096)])
def test_kv_cells_are_padded_like_llama_cpp(n_ctx, cells):
    assert kv_cells(n_ctx) == cells


def test_kv_cache_is_layers_by_cells_by_kv_width_in_f16(tmp_path):
    shape = _shape(tmp_path, block_count=4, embedding_length=128, head_count=8, head_count_kv=2)
    # 4 layers x 2 KV heads x (16 + 16) dims x 2 bytes per cell
    per_cell = 4 * 2 * 32 * 2
    assert estimate_kv_cache(shape, 1000) == 1024 * per_cell
    assert estimate_kv_cache(shape, 1000, n_seq=3) == 3 * 1024 * per_cell


def test_estimate_counts_weights_kv_and_compute(tmp_path):
    path = write_gguf(
        tmp_path / "w.gguf",
        vocab_size=32,
        embedding_length=64,
        tensors={"token_embd.weight": np.zeros((32, 64), np.float32),
                 "output.weight": np.zeros((32, 64), np.float16)},
    )  # fmt: skip
    gguf = read_gguf(path)
    shape = ModelShape.from_gguf(gguf)
    estimate = estimate_memory(gguf, shape, n_ctx=512, n_batch=64)
    assert estimate.weights_bytes == 32 * 64 * 4 + 32 * 64 * 2
    assert estimate.kv_cache_bytes == estimate_kv_cache(shape, 512)
    assert estimate.compute_bytes > 0
    assert estimate.total_bytes == sum(
        (estimate.weights_bytes, estimate.kv_cache_bytes, estimate.compute_bytes)
    )
    # A longer context costs more KV cache and attention scratch; nothing else changes.
    longer = estimate_memory(gguf, shape, n_ctx=8192, n_batch=64)
    assert longer.weights_bytes == estimate.weights_bytes
    assert longer.kv_cache_bytes == 16 * estimate.kv_cache_bytes


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"block_count": 0}, "block_count"),
        ({"block_count": 4096}, "at most 512"),
        ({"extra_uint32": {"llama.expert_count": 5000}}, "at most 1024"),
    ],
)
def test_shapes_llama_cpp_would_abort_on_are_refused(tmp_path, kwargs, reason):
    with pytest.raises(InvalidModelFile, match=reason):
        _shape(tmp_path, **kwargs)


def _estimate(gib: float) -> MemoryEstimate:
    return MemoryEstimate(weights_bytes=int(gib * GiB), kv_cache_bytes=0, compute_bytes=0)


def test_budget_refuses_what_does_not_fit_and_says_how_to_fix_it():
    budget = MemoryBudget(limit_bytes=8 * GiB, reserve_bytes=GiB, available=lambda: 6 * GiB)
    assert budget.free_bytes() == 5 * GiB  # host available minus the reserve
    with pytest.raises(ResourceExhausted) as info:
        budget.reserve("big", _estimate(5.5))
    message = str(info.value)
    assert "'big' needs about 5.50 GiB" in message and "5.00 GiB free" in message
    assert "lower n_ctx" in message
    assert budget.reserved_bytes == 0


def test_reservations_add_up_even_when_the_host_still_looks_free():
    # mmap-ed weights show as reclaimable: the host keeps reporting the same free memory.
    budget = MemoryBudget(limit_bytes=8 * GiB, reserve_bytes=0, available=lambda: 8 * GiB)
    budget.reserve("a", _estimate(5))
    assert budget.free_bytes() == 3 * GiB
    with pytest.raises(ResourceExhausted):
        budget.reserve("b", _estimate(4))
    budget.release("a")
    budget.reserve("b", _estimate(4))
    assert budget.reserved_bytes == 4 * GiB
    budget.release("never-reserved")  # harmless


def test_free_memory_never_goes_negative():
    budget = MemoryBudget(limit_bytes=GiB, reserve_bytes=2 * GiB, available=lambda: GiB)
    assert budget.free_bytes() == 0


def test_layer_figures_come_from_the_blocks_tensors(tmp_path):
    tensors = {
        "token_embd.weight": np.zeros((32, 64), np.float32),
        "blk.0.attn_q.weight": np.zeros((64, 64), np.float32),
        "blk.1.attn_q.weight": np.zeros((64, 64), np.float32),
        "blk.1.ffn_up.weight": np.zeros((16, 64), np.float32),
    }
    gguf = read_gguf(write_gguf(tmp_path / "m.gguf", block_count=2, tensors=tensors))
    shape = ModelShape.from_gguf(gguf)
    estimate = estimate_memory(gguf, shape, n_ctx=256, n_batch=32)
    assert estimate.n_layers == 2
    assert estimate.layer_weights_bytes == (64 * 64 + 16 * 64) * 4  # the larger block
    assert estimate.layer_kv_cache_bytes * 2 == estimate.kv_cache_bytes
    assert 0 < estimate.layer_compute_bytes <= estimate.compute_bytes


def test_layers_on_other_nodes_leave_the_rest_here():
    estimate = MemoryEstimate(1000, 200, 50, n_layers=4, layer_weights_bytes=200,
                              layer_kv_cache_bytes=50)  # fmt: skip
    assert estimate.without_layers(0) == estimate
    head = estimate.without_layers(3)
    assert (head.weights_bytes, head.kv_cache_bytes, head.compute_bytes) == (400, 50, 50)
    assert estimate.without_layers(99) == estimate.without_layers(4)
