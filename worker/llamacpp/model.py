"""A loaded llama.cpp model: weights, vocabulary and tokenizer.

Reads (tokenize, pieces, metadata) are safe from any thread while the model is alive, as
llama-server also relies on; the owner must not `close()` it while calls are in flight
(worker.models.local keeps the leases that guarantee this).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from pathlib import Path

from llama_cpp import llama_cpp as C

from common.errors import ModelLoadFailed
from worker.llamacpp import Handle, ensure_backend, log

_ALL_LAYERS = 0x7FFFFFFF


class LlamaModel:
    def __init__(
        self, path: Path, n_gpu_layers: int = 0, tensor_split: Sequence[float] = ()
    ) -> None:
        ensure_backend()
        params = C.llama_model_default_params()
        params.n_gpu_layers = _ALL_LAYERS if n_gpu_layers < 0 else n_gpu_layers
        if tensor_split:
            # llama.cpp reads one share per device, up to its maximum device count.
            shares = (ctypes.c_float * C.LLAMA_MAX_DEVICES)(*tensor_split)
            params.tensor_split = shares
        with log.capture() as lines:
            ptr = C.llama_model_load_from_file(str(path).encode(), params)
        if not ptr:
            raise ModelLoadFailed(
                f"llama.cpp could not load {path}: {log.reason(lines, 'no reason given')}"
            )
        self._ptr = ptr
        self._vocab = C.llama_model_get_vocab(ptr)
        self.path = path
        self.n_vocab: int = C.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train: int = C.llama_model_n_ctx_train(ptr)
        self.n_embd: int = C.llama_model_n_embd(ptr)
        self.n_embd_out: int = C.llama_model_n_embd_out(ptr) or self.n_embd
        self.bos: int = C.llama_vocab_bos(self._vocab)
        self.eos: int = C.llama_vocab_eos(self._vocab)
        self.add_bos: bool = bool(C.llama_vocab_get_add_bos(self._vocab))
        self.encoder_only = bool(C.llama_model_has_encoder(ptr)) and not bool(
            C.llama_model_has_decoder(ptr)
        )
        self.size_bytes: int = C.llama_model_size(ptr)
        self.n_params: int = C.llama_model_n_params(ptr)

    @property
    def ptr(self) -> Handle:
        if self._ptr is None:
            raise RuntimeError("model is closed")
        return self._ptr

    def close(self) -> None:
        if self._ptr is not None:
            C.llama_model_free(self._ptr)
            self._ptr = None

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        raw = text.encode("utf-8")
        # Every byte is at most one token (byte fallback), plus the special tokens added.
        capacity = len(raw) + 8
        while True:
            buf = (C.llama_token * capacity)()
            n = C.llama_tokenize(
                self._vocab, raw, len(raw), buf, capacity, add_special, parse_special
            )
            if n >= 0:
                return list(buf[:n])
            capacity = -n

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes a token stands for (possibly part of a UTF-8 character)."""
        size = 32
        while True:
            buf = ctypes.create_string_buffer(size)
            n = C.llama_token_to_piece(self._vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t, special=True) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self._vocab, token))

    @functools.cached_property
    def eog_tokens(self) -> tuple[int, ...]:
        """Every end-of-generation token of the vocabulary (ignore_eos bans them). llama.cpp
        has no call that lists them, so the vocabulary is read once (~0.1 s for 262k)."""
        is_eog, vocab = C.llama_vocab_is_eog, self._vocab
        return tuple(t for t in range(self.n_vocab) if is_eog(vocab, t))

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        text: bytes = C.llama_vocab_get_text(self._vocab, token)
        return text.decode("utf-8", errors="replace")

    @property
    def vocab(self) -> Handle:
        return self._vocab

    def meta(self, key: str) -> str | None:
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = C.llama_model_meta_val_str(self.ptr, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1
