"""The greedy sampler's own argmax (worker.llamacpp.sampler) picks exactly what llama.cpp's
logit-bias + greedy chain picks: on the real Gemma's logits, and on crafted rows with ties,
banned tokens and a token listed twice. The reference is llama.cpp itself, a chain built
here through its C API."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from llama_cpp import llama_cpp as C

from worker.engine.sampling import SamplingParams
from worker.llamacpp.backend import LlamaBackend
from worker.llamacpp.context import ContextParams
from worker.llamacpp.model import LlamaModel

# Gemma 3's end-of-generation tokens, as the benchmarks ban them; and a made-up bias list
# with a token listed twice (llama.cpp adds both) and one pushed to the top.
BIASES: list[tuple[tuple[int, float], ...]] = [
    (),
    ((1, -100.0), (106, -100.0)),
    ((1, -math.inf), (106, -math.inf)),
    ((2000, 3.0), (2000, 3.0), (5, 5.0), (7, -5.0)),
    ((12345, 1000.0),),
]


@pytest.fixture(scope="module")
def backend(gemma_path) -> Iterator[LlamaBackend]:
    model = LlamaModel(gemma_path)
    params = ContextParams(n_ctx=512, n_batch=64, n_threads=1, n_threads_batch=1, n_seq_max=2)
    backend = LlamaBackend(model, params)
    yield backend
    backend.close()


def llama_chain(bias: Sequence[tuple[int, float]], n_vocab: int) -> object:
    """llama.cpp's own logit bias (when any) + greedy chain."""
    chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    if bias:
        entries = (C.llama_logit_bias * len(bias))(*(C.llama_logit_bias(t, b) for t, b in bias))
        biased = C.llama_sampler_init_logit_bias(n_vocab, len(bias), entries)
        C.llama_sampler_chain_add(chain, biased)
    C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
    return chain


def llama_pick(chain: object, row: np.ndarray) -> int:
    """What the chain selects from a full-vocabulary row of logits."""
    n = len(row)
    data = (C.llama_token_data * n)()
    view = np.ctypeslib.as_array(data)
    view["id"] = np.arange(n)  # a structured view of (id, logit, p)
    view["logit"] = row
    array = C.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
    C.llama_sampler_apply(chain, ctypes.byref(array))
    return int(array.data[array.selected].id)


@pytest.mark.parametrize("bias", BIASES)
def test_greedy_on_the_models_logits_matches_llama_cpp(backend, bias):
    prompt = backend.tokenize("Once upon a time, in a land far away,")
    backend.decode(prompt, 0)
    row = np.ctypeslib.as_array(C.llama_get_logits_ith(backend.ptr, -1), (backend.n_vocab,))
    chain = llama_chain(bias, backend.n_vocab)
    try:
        expected = llama_pick(chain, row.copy())
        sampler = backend.sampler(SamplingParams(temperature=0.0, logit_bias=bias), None)
        try:
            assert sampler.sample(-1) == expected
        finally:
            sampler.close()
    finally:
        C.llama_sampler_free(chain)
        backend.clear()


@pytest.mark.parametrize("bias", BIASES)
def test_greedy_on_crafted_rows_matches_llama_cpp(backend, bias):
    n = backend.n_vocab
    rows = []
    ties = np.zeros(n, dtype=np.float32)  # every entry ties: the first wins
    rows.append(ties)
    late = np.full(n, -3.0, dtype=np.float32)
    late[[5, 2000, n - 1]] = 9.5  # a three-way tie at the top; 2000 wins only if biased twice
    rows.append(late)
    banned = np.full(n, -math.inf, dtype=np.float32)
    banned[[1, 106]] = 4.0  # only the end tokens are finite: a ban leaves all at -inf
    rows.append(banned)
    rng = np.random.default_rng(7)
    rows.append(rng.normal(size=n).astype(np.float32))
    chain = llama_chain(bias, n)
    sampler = backend.sampler(SamplingParams(temperature=0.0, logit_bias=bias), None)
    try:
        for row in rows:
            saved = (ctypes.c_float * n)(*row)
            assert sampler.sample_from(saved) == llama_pick(chain, row.copy())
    finally:
        sampler.close()
        C.llama_sampler_free(chain)
