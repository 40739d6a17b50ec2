"""What the batching engine needs from an inference library, and nothing more.

The engine (worker.engine.batching) schedules requests onto sequence slots; everything
that touches the model goes through these two protocols. worker.llamacpp.backend implements
them over llama.cpp; tests/support/fake_backend.py implements them for fast tests of the
engine's own logic. Both are checked structurally by mypy.

The calls mirror llama.cpp's batch API, so that the real implementation adds no work on the
hot path: tokens of several sequences are added to one batch, the batch is run, and each
sequence's sampler draws from the logits at the batch index its last token got.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from worker.engine.generation import TokenLogprobs


class TokenSampler(Protocol):
    """One request's sampler: its state (grammar, penalties, seeded draw) spans the request.

    Used by one thread at a time (built on the request's thread, then used by the engine).
    """

    def sample(self, index: int) -> int:
        """Draws the next token from the logits at batch `index` of the backend's last run,
        and advances the sampler's state."""
        ...

    def sample_saved(self, seq_id: int) -> int:
        """As sample(), from the logits saved for `seq_id` (Backend.save_logits)."""
        ...

    def close(self) -> None:
        """Frees the sampler; it is not used again."""
        ...


class Backend(Protocol):
    """A loaded model and its context with `n_seq` sequences, driven by the engine thread.

    Vocabulary reads (tokenize, piece, is_eog) may come from any thread; everything else
    only from the engine's thread.
    """

    @property
    def n_vocab(self) -> int: ...

    @property
    def n_seq(self) -> int:
        """Sequences the context holds at once: the engine's slots, ids 0 .. n_seq - 1."""
        ...

    @property
    def batch_room(self) -> int:
        """Tokens that can still be added to the batch before the next run()."""
        ...

    # ---- vocabulary ------------------------------------------------------------------
    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]: ...

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for (possibly part of a UTF-8 character)."""
        ...

    def is_eog(self, token: int) -> bool:
        """Whether the token ends generation (end of sequence, end of turn)."""
        ...

    # ---- batches ---------------------------------------------------------------------
    def add(self, tokens: Sequence[int], start_pos: int, seq_id: int, logits: bool) -> int:
        """Appends `tokens` at positions start_pos.. of sequence `seq_id` to the next batch;
        returns the batch index of the last one, whose logits are kept if `logits`."""
        ...

    def run(self, all_logits: bool = False) -> None:
        """Decodes the batch built with add() (with all_logits, every token's output, which
        embedding pooling needs); each sequence's cache grows by its tokens. Raises on
        failure, leaving the batch's sequences in an unknown state."""
        ...

    # ---- sequence memory ---------------------------------------------------------------
    def remove(self, seq_id: int, start: int) -> bool:
        """Drops a sequence's cached positions from `start` on; False if the cache cannot
        (the caller then clears the whole sequence)."""
        ...

    def clear(self) -> None:
        """Empties every sequence's cache."""
        ...

    def copy(self, src: int, dst: int) -> None:
        """Makes sequence `dst`'s cache a copy of all of `src`'s (what it held is dropped),
        so that n sequences share one prefilled prompt."""
        ...

    # ---- outputs -----------------------------------------------------------------------
    def save_logits(self, seq_id: int, index: int) -> None:
        """Copies the logits at batch `index` of the last run into `seq_id`'s saved row (one
        per sequence, overwritten), for TokenSampler.sample_saved."""
        ...

    def logprobs(self, index: int, token: int, k: int) -> TokenLogprobs:
        """`token`'s log-probability under the logits at batch `index` of the last run (the
        model's distribution: log-softmax of the raw logits) and the `k` most likely tokens,
        most likely first."""
        ...

    def saved_logprobs(self, seq_id: int, token: int, k: int) -> TokenLogprobs:
        """As logprobs(), from the logits saved for `seq_id` (save_logits)."""
        ...

    def sequence_embedding(self, seq_id: int) -> list[float]:
        """The pooled embedding of a sequence after an all-logits run."""
        ...
