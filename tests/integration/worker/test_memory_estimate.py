"""The GGUF-derived memory estimate against the sizes llama.cpp itself reports for the same
model and context parameters (read from its log while it creates the context)."""

from __future__ import annotations

import logging
import re

import pytest

from common.gguf import read_gguf
from common.memory import MiB
from common.model_settings import FlashAttention
from worker.llamacpp.context import ContextParams, LlamaContext
from worker.llamacpp.model import LlamaModel
from worker.models.estimate import ModelShape, estimate_compute, estimate_kv_cache

KV = re.compile(r"llama_kv_cache: size =\s+([\d.]+) MiB")
COMPUTE = re.compile(r"compute buffer size =\s+([\d.]+) MiB")
OUTPUT = re.compile(r"output buffer size =\s+([\d.]+) MiB")


@pytest.fixture(scope="module")
def gemma(gemma_path):
    model = LlamaModel(gemma_path)
    yield model, ModelShape.from_gguf(read_gguf(gemma_path))
    model.close()


def _reported(caplog, pattern: re.Pattern[str]) -> float:
    return sum(float(m) for r in caplog.records for m in pattern.findall(r.getMessage()))


@pytest.mark.parametrize(
    ("n_ctx", "n_batch", "embedding", "n_seq"),
    [
        (512, 512, False, 1),
        (1000, 128, False, 1),
        (4096, 512, False, 1),
        (32768, 256, False, 1),
        (2048, 512, True, 1),
        (1000, 256, False, 4),  # slots: n_ctx cells (padded) for each
        (4096, 512, False, 8),
    ],
)
def test_estimate_matches_what_llama_cpp_allocates(caplog, gemma, n_ctx, n_batch, embedding, n_seq):
    model, shape = gemma
    caplog.set_level(logging.DEBUG, logger="llama.cpp")
    params = ContextParams(
        n_ctx=n_ctx * n_seq, n_batch=n_batch, n_threads=2, n_threads_batch=2,
        embedding=embedding, flash_attn=FlashAttention.OFF, n_seq_max=n_seq,
    )  # fmt: skip
    context = LlamaContext(model, params)
    context.close()

    kv_mib = _reported(caplog, KV)
    assert kv_mib > 0, "llama.cpp did not report its KV cache size"
    assert estimate_kv_cache(shape, n_ctx, n_seq) / MiB == pytest.approx(kv_mib, abs=0.01)

    compute_mib = _reported(caplog, COMPUTE) + _reported(caplog, OUTPUT)
    estimate_mib = estimate_compute(shape, n_batch, n_ctx, embedding, n_seq) / MiB
    assert estimate_mib >= compute_mib * 0.95, "the estimate must not undershoot by more than 5%"
    assert estimate_mib <= compute_mib * 1.25 + 16, "nor overshoot wildly"
