"""llama.cpp as the batching engine's backend (worker.engine.backend.Backend).

A LlamaContext already speaks the engine's batch, memory and output calls; this subclass adds
the vocabulary reads and builds the per-request samplers (worker.llamacpp.sampler.Sampler,
the engine's TokenSampler). A subclass rather than a wrapper: the engine calls these once
per token of every sequence, and a forwarding layer would only add Python calls there.

Log-probabilities are computed with numpy over the logits row llama.cpp already holds
(no copy): a log-sum-exp and an argpartition for the top k, only for requests that ask.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from llama_cpp import llama_cpp as C

from common.errors import Internal
from worker.engine.backend import Backend, TokenSampler
from worker.engine.generation import TokenLogprob, TokenLogprobs
from worker.engine.sampling import SamplingParams
from worker.llamacpp.context import ContextParams, LlamaContext
from worker.llamacpp.model import LlamaModel
from worker.llamacpp.sampler import Sampler

_PIECE_BYTES = 64  # longer than any piece of the usual vocabularies; grown when one is not


class LlamaBackend(LlamaContext):
    """A model's context with its vocabulary: the engine's Backend and the model reads a
    served model needs besides (worker.models.local.ModelBackend). It owns the model too:
    close() frees both. Not thread-safe, but for the vocabulary reads (tokenize, detokenize,
    token_bytes), which read only the model and may be called from any thread."""

    def __init__(
        self, model: LlamaModel, params: ContextParams, max_sample_s: float | None = None
    ) -> None:
        super().__init__(model, params)
        # A request's grammar costing more than this per token is refused (Sampler).
        self.max_sample_s = max_sample_s
        self._vocab = model.vocab
        self.n_vocab: int = model.n_vocab
        # piece() runs on the engine thread only: one buffer serves every call.
        self._piece_buf = ctypes.create_string_buffer(_PIECE_BYTES)
        # logprobs() runs on the engine thread only: one scratch row serves every call.
        self._scratch = np.empty(self.n_vocab, dtype=np.float32)

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return self.model.tokenize(text, add_special, parse_special)

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for, special tokens rendered as empty (as
        LlamaModel.piece(token) does)."""
        buf = self._piece_buf
        n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            self._piece_buf = buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return ctypes.string_at(buf, n)

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self._vocab, token))

    def copy(self, src: int, dst: int) -> None:
        """Makes `dst`'s cache a copy of `src`'s. Each sequence has a KV stream of its own
        (kv_unified off), so llama.cpp copies the whole stream's buffers at the next decode;
        the cells `dst` held are dropped first (a copy within one stream would add to them)."""
        C.llama_memory_seq_rm(self._memory, dst, -1, -1)
        C.llama_memory_seq_cp(self._memory, src, dst, -1, -1)

    def logprobs(self, index: int, token: int, k: int) -> TokenLogprobs:
        ptr = C.llama_get_logits_ith(self.ptr, index)
        if not ptr:
            raise Internal(f"llama.cpp has no logits at batch index {index}")
        return self._logprobs(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)), token, k)

    def saved_logprobs(self, seq_id: int, token: int, k: int) -> TokenLogprobs:
        return self._logprobs(np.ctypeslib.as_array(self.saved_logits(seq_id)), token, k)

    def _logprobs(self, logits: npt.NDArray[np.float32], token: int, k: int) -> TokenLogprobs:
        """log-softmax of the raw logits at `token` and at the k largest, largest first."""
        top = float(logits.max())
        scratch = self._scratch
        np.subtract(logits, top, out=scratch)
        np.exp(scratch, out=scratch)
        norm = top + float(np.log(scratch.sum(dtype=np.float64)))
        chosen = TokenLogprob(token, self.piece(token), float(logits[token]) - norm)
        if k == 0:
            return TokenLogprobs(chosen)
        ids = _top_k(logits, top, k)
        alternatives = tuple(
            TokenLogprob(int(t), self.piece(int(t)), float(logits[t]) - norm) for t in ids
        )
        return TokenLogprobs(chosen, alternatives)

    def sampler(self, params: SamplingParams, grammar: str | None) -> Sampler:
        """A request's sampler chain over this context's logits; may be built on any thread."""
        return Sampler(self, params, grammar, self.max_sample_s)

    @property
    def bos(self) -> int:
        return self.model.bos

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.model.detokenize(tokens)

    def token_bytes(self, token: int) -> bytes:
        """A token's bytes, special tokens written out (as Tokenize shows them)."""
        return self.model.piece(token, special=True)

    def close(self) -> None:
        super().close()
        self.model.close()


def _top_k(logits: npt.NDArray[np.float32], top: float, k: int) -> npt.NDArray[np.intp]:
    """The ids of the k largest logits, largest first. An argpartition of a whole 262k
    vocabulary costs milliseconds; the few thousand logits near the top (found with one
    comparison) hold the k largest unless the distribution is extremely peaked, when the
    margin widens."""
    margin = 8.0
    ids = np.flatnonzero(logits >= top - margin)
    while len(ids) < k and margin < 1024.0:
        margin *= 4
        ids = np.flatnonzero(logits >= top - margin)
    if len(ids) < k:  # fewer than k finite logits near the rest: take the whole row
        ids = np.argpartition(logits, -k)[-k:]
    elif len(ids) > k:
        ids = ids[np.argpartition(logits[ids], -k)[-k:]]
    return ids[np.argsort(-logits[ids], kind="stable")]


if TYPE_CHECKING:  # mypy checks both classes against the engine's protocols, structurally

    def _conforms(backend: LlamaBackend, sampler: Sampler) -> tuple[Backend, TokenSampler]:
        return backend, sampler
