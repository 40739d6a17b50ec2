"""A stand-in for llama.cpp at the batching engine's backend boundary, for fast unit tests.

Implements worker.engine.backend.Backend and TokenSampler (checked by mypy, see the end of
the file) with deterministic, readable behaviour instead of a model:

- the vocabulary is bytes: token ids 0..255 are the bytes of the text, EOS (256) ends
  generation; tokenize() adds no BOS;
- "logits" are scripted: a sequence whose cache holds a scripted prompt (and then part of
  its reply) favours the reply's next byte, then EOS; any other sequence favours
  DEFAULT_REPLY[position % 26] (so the sampled letter tells which position was sampled);
- samplers are greedy: they take the favoured token;
- the distribution behind the logits: the favoured token has probability 1/2, the token j
  ids after it (wrapping around the vocabulary) 1/2**(j+1), so logprobs are exact and known;
- copy(src, dst) copies a sequence's cells, as llama_memory_seq_cp (listed in `copies`);
- it keeps llama.cpp's rules that the engine must respect, and raises where llama.cpp would
  fail a decode: positions of a sequence must continue its cache, a sequence holds at most
  n_ctx_seq cells, a batch at most n_batch tokens, logits exist only where asked for.

Knobs: `step_delay` (seconds each run() sleeps), `fail_next_run(exc)`, `on_run` (called at
the start of every run with the batch about to run: tests cancel a stream or advance a
clock mid-step there), `can_remove` (whether remove() succeeds), `eog` (extra tokens that
end generation), and `record` (keep every batch in `runs`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.engine.generation import TokenLogprob, TokenLogprobs

EOS = 256
N_VOCAB = 257
DEFAULT_REPLY = b"abcdefghijklmnopqrstuvwxyz"
N_EMBD = 4


class FakeDecodeError(RuntimeError):
    """What the fake raises where llama_decode would return an error."""


@dataclass(frozen=True)
class Entry:
    """Tokens of one sequence in a batch, as the engine added them."""

    seq_id: int
    start_pos: int
    tokens: tuple[int, ...]
    logits: bool  # for the last token


class FakeSampler:
    """Greedy: draws the token the backend's scripted logits favour. With `fail_on_draw`,
    that draw (1-based) raises, as a sampler whose grammar broke would."""

    def __init__(self, backend: FakeBackend, fail_on_draw: int | None = None) -> None:
        self._backend = backend
        self._fail_on_draw = fail_on_draw
        self.closed = False
        self.drawn = 0

    def _draw(self) -> None:
        if self.closed:
            raise RuntimeError("sampler used after close()")
        self.drawn += 1
        if self.drawn == self._fail_on_draw:
            raise FakeDecodeError(f"sampler failed on draw {self.drawn}")

    def sample(self, index: int) -> int:
        self._draw()
        try:
            return self._backend.logits[index]
        except KeyError:
            raise FakeDecodeError(f"no logits at batch index {index}") from None

    def sample_saved(self, seq_id: int) -> int:
        self._draw()
        try:
            return self._backend.saved[seq_id]
        except KeyError:
            raise FakeDecodeError(f"no logits saved for sequence {seq_id}") from None

    def close(self) -> None:
        if self.closed:
            raise RuntimeError("sampler closed twice")
        self.closed = True


class FakeBackend:
    def __init__(
        self,
        n_seq: int = 1,
        n_batch: int = 512,
        n_ctx_seq: int = 4096,
        step_delay: float = 0.0,
        record: bool = True,
    ) -> None:
        self.n_vocab = N_VOCAB
        self.n_seq = n_seq
        self.n_batch = n_batch
        self.n_ctx_seq = n_ctx_seq
        self.step_delay = step_delay
        self.record = record
        self.can_remove = True
        self.eog: frozenset[int] = frozenset()
        self.on_run: Callable[[Sequence[Entry]], None] | None = None
        self.cells: list[list[int]] = [[] for _ in range(n_seq)]  # each sequence's cache
        self.logits: dict[int, int] = {}  # batch index of the last run -> favoured token
        self.saved: dict[int, int] = {}  # seq_id -> favoured token of its saved logits
        self.runs: list[tuple[Entry, ...]] = []  # every batch run, when `record`
        self.copies: list[tuple[int, int]] = []  # every copy(src, dst)
        self.embedded: list[float] = []
        self._scripts: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self._batch: list[Entry] = []
        self._pending = 0
        self._failures: deque[BaseException] = deque()

    # ---- test controls -----------------------------------------------------------------
    def script(self, prompt: str, reply: str) -> None:
        """A sequence holding `prompt` continues with `reply`, then EOS."""
        self._scripts.append((tuple(prompt.encode()), (*reply.encode(), EOS)))

    def fail_next_run(self, exc: BaseException) -> None:
        """The next run() raises `exc` (after consuming its batch, as a failed decode)."""
        self._failures.append(exc)

    def sampler(self, fail_on_draw: int | None = None) -> FakeSampler:
        return FakeSampler(self, fail_on_draw)

    # ---- Backend: vocabulary -------------------------------------------------------------
    @property
    def batch_room(self) -> int:
        return self.n_batch - self._pending

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return list(text.encode())

    def piece(self, token: int) -> bytes:
        return bytes((token,)) if token < 256 else b""

    def is_eog(self, token: int) -> bool:
        return token == EOS or token in self.eog

    # ---- Backend: batches ----------------------------------------------------------------
    def add(self, tokens: Sequence[int], start_pos: int, seq_id: int, logits: bool) -> int:
        n = len(tokens)
        if not 0 < n <= self.n_batch - self._pending:
            raise ValueError(f"batch has room for {self.n_batch - self._pending}, got {n}")
        if not 0 <= seq_id < self.n_seq:
            raise ValueError(f"no sequence {seq_id}")
        self._batch.append(Entry(seq_id, start_pos, tuple(tokens), logits))
        self._pending += n
        return self._pending - 1

    def run(self, all_logits: bool = False) -> None:
        batch, self._batch, self._pending = self._batch, [], 0
        self.logits = {}
        self.embedded = []
        if self.record:
            self.runs.append(tuple(batch))
        if self.on_run is not None:
            self.on_run(batch)
        if self.step_delay:
            time.sleep(self.step_delay)
        if self._failures:
            raise self._failures.popleft()
        if not batch:
            raise FakeDecodeError("empty batch")
        index = 0
        for entry in batch:
            cells = self.cells[entry.seq_id]
            if entry.start_pos != len(cells):
                raise FakeDecodeError(
                    f"sequence {entry.seq_id} holds {len(cells)} cells; "
                    f"tokens added at position {entry.start_pos}"
                )
            if len(cells) + len(entry.tokens) > self.n_ctx_seq:
                raise FakeDecodeError("no free KV cache slot (the context is full)")
            for i, token in enumerate(entry.tokens):
                cells.append(token)
                if all_logits or (entry.logits and i == len(entry.tokens) - 1):
                    self.logits[index] = self._favoured(cells)
                index += 1
        if all_logits:
            tokens = self.cells[batch[0].seq_id]
            self.embedded = [float(len(tokens)), float(sum(tokens)), 1.0, 0.0]

    # ---- Backend: memory and outputs -------------------------------------------------------
    def remove(self, seq_id: int, start: int) -> bool:
        if not self.can_remove and start > 0:
            return False
        del self.cells[seq_id][start:]
        return True

    def clear(self) -> None:
        for cells in self.cells:
            cells.clear()

    def copy(self, src: int, dst: int) -> None:
        if not 0 <= src < self.n_seq or not 0 <= dst < self.n_seq or src == dst:
            raise ValueError(f"cannot copy sequence {src} to {dst}")
        self.copies.append((src, dst))
        self.cells[dst] = list(self.cells[src])

    def logprobs(self, index: int, token: int, k: int) -> TokenLogprobs:
        try:
            return self._logprobs(self.logits[index], token, k)
        except KeyError:
            raise FakeDecodeError(f"no logits at batch index {index}") from None

    def saved_logprobs(self, seq_id: int, token: int, k: int) -> TokenLogprobs:
        try:
            return self._logprobs(self.saved[seq_id], token, k)
        except KeyError:
            raise FakeDecodeError(f"no logits saved for sequence {seq_id}") from None

    def _logprobs(self, favoured: int, token: int, k: int) -> TokenLogprobs:
        def entry(t: int) -> TokenLogprob:
            rank = (t - favoured) % N_VOCAB
            return TokenLogprob(t, self.piece(t), -(rank + 1) * math.log(2))

        top = tuple(entry((favoured + j) % N_VOCAB) for j in range(k))
        return TokenLogprobs(entry(token), top)

    def save_logits(self, seq_id: int, index: int) -> None:
        try:
            self.saved[seq_id] = self.logits[index]
        except KeyError:
            raise FakeDecodeError(f"no logits at batch index {index}") from None

    def sequence_embedding(self, seq_id: int) -> list[float]:
        if not self.embedded:
            raise FakeDecodeError("no pooled embedding: the last run was not all-logits")
        return list(self.embedded)

    # ---- the "model" ------------------------------------------------------------------------
    def _favoured(self, history: Sequence[int]) -> int:
        """The token the logits after `history` (a sequence's cache) favour."""
        n = len(history)
        for prompt, reply in self._scripts:
            k = n - len(prompt)
            if (
                0 <= k < len(reply)
                and tuple(history[: len(prompt)]) == prompt
                and tuple(history[len(prompt) :]) == reply[:k]
            ):
                return reply[k]
        return DEFAULT_REPLY[n % len(DEFAULT_REPLY)]


if TYPE_CHECKING:  # mypy checks the fake against the engine's protocols, structurally
    from worker.engine.backend import Backend, TokenSampler

    def _conforms(backend: FakeBackend, sampler: FakeSampler) -> tuple[Backend, TokenSampler]:
        return backend, sampler
