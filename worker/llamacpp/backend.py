"""llama.cpp as the batching engine's backend (worker.engine.backend.Backend).

A LlamaContext already speaks the engine's batch, memory and output calls; this subclass adds
the vocabulary reads and builds the per-request samplers (worker.llamacpp.sampler.Sampler,
the engine's TokenSampler). A subclass rather than a wrapper: the engine calls these once
per token of every sequence, and a forwarding layer would only add Python calls there.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llama_cpp import llama_cpp as C

from worker.engine.backend import Backend, TokenSampler
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


if TYPE_CHECKING:  # mypy checks both classes against the engine's protocols, structurally

    def _conforms(backend: LlamaBackend, sampler: Sampler) -> tuple[Backend, TokenSampler]:
        return backend, sampler
