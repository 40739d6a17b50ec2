"""A per-request llama.cpp sampler chain built from SamplingParams and an optional grammar.

Chain order follows llama.cpp's defaults: logit bias, penalties, grammar, then top-k, top-p,
min-p, temperature and a seeded draw (or greedy at temperature 0). The grammar goes before
the truncating samplers so that they choose among tokens the grammar allows.

A greedy chain without penalties or grammar (logit bias at most: what a fixed-length
benchmark or a `temperature: 0` request builds) is computed here instead, with numpy over
the logits row llama.cpp holds: llama_sampler_sample would first copy all of a 262k
vocabulary into a candidate array (~0.35 ms per sequence per step on one core, 3% of an
8-sequence step of Gemma 3 270M), where an argmax takes a tenth of that. Same arithmetic
(float32 bias added, first maximum wins), same token.
"""

from __future__ import annotations

import ctypes
import math
import random
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from llama_cpp import llama_cpp as C

from common.errors import Internal, InvalidArgument
from worker.engine.sampling import SamplingParams, check_token_ids
from worker.llamacpp import Handle
from worker.llamacpp.context import LlamaContext
from worker.llamacpp.gbnf import diagnose
from worker.llamacpp.model import LlamaModel

# llama_token_data: {int32 id; float logit; float p}
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class Sampler:
    """Owns one llama_sampler chain that draws from one context's logits (the engine's
    TokenSampler). Built on any thread; then used by one thread at a time."""

    def __init__(
        self,
        context: LlamaContext,
        params: SamplingParams,
        grammar: str | None,
        max_sample_s: float | None = None,
    ) -> None:
        model = context.model
        check_token_ids("sampling.logit_bias", [t for t, _ in params.logit_bias], model.n_vocab)
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        self._chain = chain
        self._context = context
        self._max_sample_s = max_sample_s
        self._n_vocab: int = model.n_vocab
        # Set when the chain is logit bias (optional) + greedy: the argmax is taken here.
        self._argmax: _BiasedArgmax | None = None
        try:
            # What one request may fill: the window of repeat_last_n = -1.
            self._build(model, params, grammar, context.n_ctx_seq)
        except BaseException:
            self.close()
            raise
        self.seed = params.seed

    def _add(self, sampler: Handle) -> None:
        C.llama_sampler_chain_add(self._chain, sampler)

    def _build(self, model: LlamaModel, p: SamplingParams, grammar: str | None, n_ctx: int) -> None:
        bias = list(p.logit_bias)
        if p.ignore_eos:
            # As llama-server does: the end tokens cannot be drawn at all (a client's own bias
            # on one of them is overridden).
            banned = set(model.eog_tokens)
            bias = [(t, b) for t, b in bias if t not in banned]
            bias += [(t, -math.inf) for t in sorted(banned)]
        if bias:
            biases = (C.llama_logit_bias * len(bias))(
                *(C.llama_logit_bias(token, value) for token, value in bias)
            )
            self._add(C.llama_sampler_init_logit_bias(model.n_vocab, len(bias), biases))
        if p.penalised:
            last_n = n_ctx if p.repeat_last_n == -1 else p.repeat_last_n
            self._add(
                C.llama_sampler_init_penalties(
                    model.n_vocab, last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
                )
            )
        if grammar is not None:
            compiled = compile_grammar(model, grammar)
            self._add(compiled)  # the chain owns it from here, even if the probe refuses it
            if self._max_sample_s is not None:
                probe_grammar(compiled, model.n_vocab, self._max_sample_s)
        if p.greedy:
            self._add(C.llama_sampler_init_greedy())
            if not p.penalised and grammar is None:
                self._argmax = _BiasedArgmax(bias, model.n_vocab)
            return
        if p.top_k > 0:
            self._add(C.llama_sampler_init_top_k(p.top_k))
        self._add(C.llama_sampler_init_top_p(p.top_p, 1))
        self._add(C.llama_sampler_init_min_p(p.min_p, 1))
        self._add(C.llama_sampler_init_temp(p.temperature))
        seed = p.seed if p.seed is not None else random.getrandbits(32) % 0xFFFFFFFF
        self._add(C.llama_sampler_init_dist(seed))

    def sample(self, index: int = -1) -> int:
        """Draws the next token from the logits at batch `index` of the context's last
        decode and advances the chain's state."""
        if self._argmax is not None:
            ptr = C.llama_get_logits_ith(self._context.ptr, index)
            if not ptr:
                raise Internal(f"llama.cpp has no logits at batch index {index}")
            return self._accept(self._argmax(np.ctypeslib.as_array(ptr, (self._n_vocab,))))
        token: int = C.llama_sampler_sample(self._chain, self._context.ptr, index)
        return token

    def _accept(self, token: int) -> int:
        # A no-op for logit bias and greedy; kept so the chain sees every token it "drew".
        C.llama_sampler_accept(self._chain, token)
        return token

    def sample_saved(self, seq_id: int) -> int:
        """As sample(), from the logits the context saved for `seq_id` (save_logits)."""
        return self.sample_from(self._context.saved_logits(seq_id))

    def sample_from(self, logits: ctypes.Array[ctypes.c_float]) -> int:
        """As sample(), from saved logits (one per vocabulary entry) instead of a context's
        last decode: what llama_sampler_sample does, with the candidates built here."""
        if self._argmax is not None:
            return self._accept(self._argmax(np.ctypeslib.as_array(logits)))
        n = len(logits)
        candidates = np.empty(n, dtype=_TOKEN_DATA)
        candidates["id"] = np.arange(n, dtype=np.int32)
        candidates["logit"] = np.ctypeslib.as_array(logits)
        candidates["p"] = 0.0
        array = C.llama_token_data_array(
            data=candidates.ctypes.data_as(C.llama_token_data_p),
            size=n,
            selected=-1,
            sorted=False,
        )
        C.llama_sampler_apply(self._chain, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            raise Internal("the sampler chain selected no token")
        # Samplers may point `data` elsewhere (their own sorted copy): read through it.
        token = int(array.data[array.selected].id)
        C.llama_sampler_accept(self._chain, token)
        return token

    def close(self) -> None:
        if self._chain is not None:
            C.llama_sampler_free(self._chain)
            self._chain = None


class _BiasedArgmax:
    """What llama.cpp's logit-bias and greedy samplers pick from a row of logits: each bias
    added in float32 (a token listed twice gets both), then the first maximum."""

    def __init__(self, bias: Sequence[tuple[int, float]], n_vocab: int) -> None:
        self._ids = np.array([t for t, _ in bias], dtype=np.intp)
        self._values = np.array([b for _, b in bias], dtype=np.float32)
        # The biased copy of the row, allocated on first use (n_vocab floats).
        self._scratch: npt.NDArray[np.float32] | None = None
        self._n_vocab = n_vocab

    def __call__(self, logits: npt.NDArray[np.float32]) -> int:
        if not len(self._ids):
            return int(logits.argmax())
        scratch = self._scratch
        if scratch is None:
            scratch = self._scratch = np.empty(self._n_vocab, dtype=np.float32)
        np.copyto(scratch, logits)
        np.add.at(scratch, self._ids, self._values)
        return int(scratch.argmax())


# Vocabulary entries the probe applies a grammar to; the cost for the whole vocabulary is
# extrapolated (it is linear in the entries), so the probe costs ~1/30 of a token's sampling.
PROBE_TOKENS = 8192


def probe_grammar(grammar: Handle, n_vocab: int, limit_s: float) -> None:
    """Refuses a grammar whose first token would cost more than `limit_s` to sample.

    llama.cpp applies a grammar to every vocabulary entry at every token, on the engine's
    thread, where a slow grammar stalls every stream of the model. Applying it here, on the
    request's preparation thread, to an evenly spread sample of the vocabulary estimates
    that cost before the request is queued. (Applying without accepting leaves the
    grammar's state as is.)"""
    sample = min(n_vocab, PROBE_TOKENS)
    candidates = np.zeros(sample, dtype=_TOKEN_DATA)
    candidates["id"] = np.linspace(0, n_vocab - 1, sample, dtype=np.int32)
    array = C.llama_token_data_array(
        data=candidates.ctypes.data_as(C.llama_token_data_p),
        size=sample,
        selected=-1,
        sorted=False,
    )
    started = time.perf_counter()
    C.llama_sampler_apply(grammar, ctypes.byref(array))
    estimate = (time.perf_counter() - started) * n_vocab / sample
    if estimate > limit_s:
        raise InvalidArgument(
            f"constraint's grammar takes about {estimate * 1e3:.0f} ms per token to apply; "
            f"the limit is {limit_s * 1e3:.0f} ms (max_sample_ms): simplify it (fewer "
            "alternatives)"
        )


def compile_grammar(model: LlamaModel, grammar: str) -> Handle:
    """Parses a GBNF grammar with llama.cpp itself, so what it accepts is exactly what runs."""
    if not grammar.strip():
        raise InvalidArgument("constraint.grammar is empty")
    sampler = C.llama_sampler_init_grammar(model.vocab, grammar.encode("utf-8"), b"root")
    if not sampler:
        why = (
            diagnose(grammar) or "llama.cpp could not parse it (see llama.cpp's grammars/README.md)"
        )
        raise InvalidArgument(f"constraint.grammar is not valid GBNF: {why}")
    return sampler
