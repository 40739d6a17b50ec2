"""A llama.cpp inference context: KV cache, compute buffers and one reusable batch.

Not thread-safe: exactly one thread (the model's engine thread) may use a context.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

from llama_cpp import llama_cpp as C

from common.errors import Internal, ModelLoadFailed
from common.model_settings import FlashAttention, Pooling
from worker.llamacpp import Handle, log
from worker.llamacpp.model import LlamaModel

_POOLING = {
    Pooling.MEAN: C.LLAMA_POOLING_TYPE_MEAN,
    Pooling.CLS: C.LLAMA_POOLING_TYPE_CLS,
    Pooling.LAST: C.LLAMA_POOLING_TYPE_LAST,
}
_FLASH_ATTN = {
    FlashAttention.AUTO: C.LLAMA_FLASH_ATTN_TYPE_AUTO,
    FlashAttention.ON: C.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    FlashAttention.OFF: C.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
_DECODE_ERRORS = {
    1: "no free KV cache slot (the context is full)",
    2: "aborted",
    -1: "invalid batch",
}


@dataclass(frozen=True)
class ContextParams:
    n_ctx: int
    n_batch: int
    n_threads: int
    n_threads_batch: int
    n_seq_max: int = 1
    embedding: bool = False
    pooling: Pooling = Pooling.MEAN
    flash_attn: FlashAttention = FlashAttention.AUTO


class DecodeError(Internal):
    def __init__(self, code: int) -> None:
        super().__init__(f"llama_decode failed with {code}: {_DECODE_ERRORS.get(code, 'error')}")
        self.code = code


class LlamaContext:
    def __init__(self, model: LlamaModel, params: ContextParams) -> None:
        cparams = C.llama_context_default_params()
        cparams.n_ctx = params.n_ctx
        cparams.n_batch = params.n_batch
        # One micro-batch per batch: the memory estimate (worker.models.estimate) assumes it.
        cparams.n_ubatch = params.n_batch
        cparams.n_seq_max = params.n_seq_max
        # One KV stream per sequence, each n_ctx / n_seq_max cells: every slot can always
        # hold a full-length request, whatever the others do (as llama-server with -np N).
        cparams.kv_unified = False
        cparams.n_threads = params.n_threads
        cparams.n_threads_batch = params.n_threads_batch
        # Full-size sliding-window caches: any cached prefix can be reused, and the KV size is
        # n_ctx cells on every layer, which the memory estimate relies on.
        cparams.swa_full = True
        cparams.no_perf = True
        cparams.flash_attn_type = _FLASH_ATTN[params.flash_attn]
        cparams.embeddings = params.embedding
        # Set on generation contexts too: llama.cpp pools only while embeddings are on
        # (run(all_logits=True) turns them on for one decode), so generation is unaffected.
        cparams.pooling_type = _POOLING[params.pooling]
        with log.capture() as lines:
            ptr = C.llama_init_from_model(model.ptr, cparams)
        if not ptr:
            raise ModelLoadFailed(
                "llama.cpp could not create a context for "
                f"{model.path}: {log.reason(lines, 'no reason given')}"
            )
        self._ptr = ptr
        self._memory = C.llama_get_memory(ptr)
        self.model = model
        self.n_ctx: int = C.llama_n_ctx(ptr)
        self.n_seq: int = C.llama_n_seq_max(ptr)
        self.n_ctx_seq: int = C.llama_n_ctx_seq(ptr)  # cells each sequence may fill
        self.n_batch: int = C.llama_n_batch(ptr)
        self._batch = C.llama_batch_init(self.n_batch, 0, 1)
        self._pending = 0  # tokens added to the batch since the last decode
        self._embedding = params.embedding
        # Per sequence, logits saved from an earlier decode (save_logits); allocated on
        # first use, one row of n_vocab floats each.
        self._saved: dict[int, ctypes.Array[ctypes.c_float]] = {}

    @property
    def ptr(self) -> Handle:
        return self._ptr

    def close(self) -> None:
        if self._ptr is not None:
            C.llama_batch_free(self._batch)
            C.llama_free(self._ptr)
            self._ptr = None

    @property
    def batch_room(self) -> int:
        return self.n_batch - self._pending

    def add(self, tokens: Sequence[int], start_pos: int, seq_id: int, logits: bool) -> int:
        """Appends `tokens` at positions start_pos.. of sequence `seq_id` to the next batch;
        returns the batch index of the last one, whose logits are kept if `logits`."""
        n, at = len(tokens), self._pending
        if not 0 < n <= self.n_batch - at:
            raise ValueError(f"batch has room for {self.n_batch - at} tokens, got {n}")
        batch = self._batch
        for i, token in enumerate(tokens):
            batch.token[at + i] = token
            batch.pos[at + i] = start_pos + i
            batch.n_seq_id[at + i] = 1
            batch.seq_id[at + i][0] = seq_id
            batch.logits[at + i] = False
        batch.logits[at + n - 1] = logits
        self._pending = at + n
        return at + n - 1

    def run(self, all_logits: bool = False) -> None:
        """Decodes the batch built with add(); the sequences' caches grow by its tokens.

        With all_logits every token is an output and the batch's sequences are pooled
        (sequence_embedding); on a generation context that switches llama.cpp's embedding
        output on for this one decode, as llama-server does for embeddings from a
        generation model."""
        batch = self._batch
        batch.n_tokens, self._pending = self._pending, 0
        if all_logits:
            for i in range(batch.n_tokens):
                batch.logits[i] = True
        pooled_once = all_logits and not self._embedding
        if pooled_once:
            C.llama_set_embeddings(self._ptr, True)
        try:
            if self.model.encoder_only:
                rc = C.llama_encode(self._ptr, batch)
            else:
                rc = C.llama_decode(self._ptr, batch)
        finally:
            if pooled_once:
                C.llama_set_embeddings(self._ptr, False)
        if rc != 0:
            raise DecodeError(rc)

    def decode(
        self, tokens: Sequence[int], start_pos: int, seq_id: int = 0, all_logits: bool = False
    ) -> None:
        """Runs `tokens` (at most n_batch) of one sequence at once; logits for the last one
        (or, with all_logits, every one, which embedding pooling needs)."""
        self._pending = 0
        self.add(tokens, start_pos, seq_id, logits=True)
        self.run(all_logits)

    def copy_logits(self, dest: ctypes.Array[ctypes.c_float], index: int = -1) -> None:
        """Copies the logits of batch position `index` of the last decode into `dest`."""
        ctypes.memmove(dest, C.llama_get_logits_ith(self._ptr, index), ctypes.sizeof(dest))

    def save_logits(self, seq_id: int, index: int) -> None:
        """Copies the logits of batch position `index` of the last decode into `seq_id`'s
        saved row, overwriting what it held."""
        row = self._saved.get(seq_id)
        if row is None:
            row = self._saved[seq_id] = (ctypes.c_float * self.model.n_vocab)()
        self.copy_logits(row, index)

    def saved_logits(self, seq_id: int) -> ctypes.Array[ctypes.c_float]:
        """The row save_logits last filled for `seq_id`."""
        row = self._saved.get(seq_id)
        if row is None:
            raise Internal(f"no logits were saved for sequence {seq_id}")
        return row

    def remove(self, seq_id: int, start: int, end: int = -1) -> bool:
        """Drops cached positions [start, end) of a sequence; False if the cache cannot."""
        return bool(C.llama_memory_seq_rm(self._memory, seq_id, start, end))

    def clear(self) -> None:
        C.llama_memory_clear(self._memory, True)

    def sequence_embedding(self, seq_id: int = 0) -> list[float]:
        ptr = C.llama_get_embeddings_seq(self._ptr, seq_id)
        if not ptr:
            raise Internal("llama.cpp returned no pooled embedding for the sequence")
        return list(ptr[: self.model.n_embd_out])
