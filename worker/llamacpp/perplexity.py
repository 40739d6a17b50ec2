"""Perplexity of a model over a text, measured the way llama.cpp's `llama-perplexity` does.

The method (tools/perplexity/perplexity.cpp, its default mode): tokenize the whole text once
with the model's special tokens added (BOS) and no special-token parsing; cut it into
`len // n_ctx` chunks of n_ctx tokens; run each chunk from an empty cache with its first
token replaced by BOS (when the model adds one); score only the second half of each chunk,
so every scored token has at least n_ctx/2 tokens of context: the negative log-likelihood of
token p+1 under the logits at position p, for p from n_ctx/2 to n_ctx-2. Perplexity is
exp(mean NLL); its standard error is the NLL's standard error of the mean times PPL, as
llama.cpp prints it. The arithmetic (token_nlls, NllStats) is pure and tested on known
logits; `measure` drives a LlamaContext.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from llama_cpp import llama_cpp as C

from common.errors import InvalidArgument
from worker.llamacpp.context import ContextParams, LlamaContext
from worker.llamacpp.model import LlamaModel

MIN_CTX = 16
# Logit rows turned into float64 at once: bounds the scratch memory to ~32 MB with a 262k
# vocabulary (Gemma's), whatever the batch.
_ROWS_PER_BLOCK = 16

# (chunks done, chunks in all, running perplexity)
ChunkProgress = Callable[[int, int, float], None]


def token_nlls(logits: npt.NDArray[np.floating], targets: Sequence[int]) -> npt.NDArray[np.float64]:
    """-log softmax(logits[i])[targets[i]] for each row i, computed in float64 with the
    row maximum subtracted (as llama.cpp does) so large logits cannot overflow."""
    if logits.ndim != 2 or logits.shape[0] != len(targets):
        raise ValueError(f"{logits.shape[0]} logit rows for {len(targets)} targets")
    out = np.empty(len(targets), dtype=np.float64)
    index = np.asarray(targets, dtype=np.int64)
    for start in range(0, len(targets), _ROWS_PER_BLOCK):
        block = logits[start : start + _ROWS_PER_BLOCK].astype(np.float64)
        peak = block.max(axis=1)
        log_sum = peak + np.log(np.exp(block - peak[:, None]).sum(axis=1))
        n = block.shape[0]
        out[start : start + n] = log_sum - block[np.arange(n), index[start : start + n]]
    return out


@dataclass
class NllStats:
    """Running sums of per-token negative log-likelihoods (natural log)."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, nlls: npt.NDArray[np.float64]) -> None:
        self.count += int(nlls.size)
        self.total += float(nlls.sum())
        self.total_sq += float(np.square(nlls).sum())

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean) if self.count else math.nan

    @property
    def stderr(self) -> float:
        """PPL's standard error: the mean NLL's standard error (sample variance over
        count - 1) times PPL, the first-order propagation through exp."""
        if self.count < 2:
            return math.nan
        variance = self.total_sq / self.count - self.mean**2
        if variance <= 0:
            return 0.0
        return math.sqrt(variance / (self.count - 1)) * self.perplexity


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    stderr: float
    n_ctx: int
    chunks: int
    text_tokens: int  # the whole text
    scored_tokens: int  # the second halves
    seconds: float  # evaluating the chunks (not loading or tokenizing)

    @property
    def tokens_per_second(self) -> float:
        evaluated = self.chunks * self.n_ctx
        return evaluated / self.seconds if self.seconds > 0 else math.nan

    def to_json(self) -> dict[str, float | int]:
        return {
            "perplexity": self.perplexity, "stderr": self.stderr, "n_ctx": self.n_ctx,
            "chunks": self.chunks, "text_tokens": self.text_tokens,
            "scored_tokens": self.scored_tokens, "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
        }  # fmt: skip


def chunk_count(n_tokens: int, n_ctx: int) -> int:
    """How many whole chunks the text makes; InvalidArgument when it is under two
    contexts (llama-perplexity's minimum), saying how long it must be."""
    if n_ctx < MIN_CTX:
        raise InvalidArgument(f"--ctx {n_ctx} is too small; use at least {MIN_CTX}")
    if n_tokens < 2 * n_ctx:
        raise InvalidArgument(
            f"the text is {n_tokens} tokens long; with --ctx {n_ctx} it must be at least "
            f"{2 * n_ctx} tokens (two contexts): use a longer text or a smaller --ctx"
        )
    return n_tokens // n_ctx


def measure(
    model_path: Path,
    text: str,
    n_ctx: int = 512,
    n_batch: int | None = None,
    threads: int = 0,
    on_chunk: ChunkProgress | None = None,
) -> PerplexityResult:
    """Loads the model, checks the text's length and scores every chunk."""
    batch = min(n_batch or n_ctx, n_ctx)
    if batch < 1:
        raise InvalidArgument(f"--batch must be positive, got {n_batch}")
    n_threads = threads if threads > 0 else _default_threads()
    model = LlamaModel(model_path)
    try:
        tokens = model.tokenize(text, add_special=True, parse_special=False)
        chunks = chunk_count(len(tokens), n_ctx)
        context = LlamaContext(model, ContextParams(n_ctx, batch, n_threads, n_threads))
        try:
            stats, seconds = NllStats(), 0.0
            for i in range(chunks):
                chunk = list(tokens[i * n_ctx : (i + 1) * n_ctx])
                if model.add_bos:
                    chunk[0] = model.bos
                started = time.perf_counter()
                _score_chunk(context, chunk, stats)
                seconds += time.perf_counter() - started
                if on_chunk is not None:
                    on_chunk(i + 1, chunks, stats.perplexity)
        finally:
            context.close()
    finally:
        model.close()
    return PerplexityResult(
        stats.perplexity, stats.stderr, n_ctx, chunks, len(tokens), stats.count, seconds
    )


def _score_chunk(context: LlamaContext, chunk: list[int], stats: NllStats) -> None:
    """Decodes one chunk from an empty cache, in batches, asking logits only for the second
    half, and adds the NLL of each next token to `stats`."""
    n_ctx, n_batch, n_vocab = len(chunk), context.n_batch, context.model.n_vocab
    first = n_ctx // 2
    context.clear()
    for start in range(0, n_ctx, n_batch):
        part = chunk[start : start + n_batch]
        silent = max(0, min(first - start, len(part)))  # positions before `first`
        if silent:
            context.add(part[:silent], start, 0, logits=False)
        for offset in range(silent, len(part)):
            context.add([part[offset]], start + offset, 0, logits=True)
        context.run()
        # Rows for positions start+silent .. start+len(part)-1; the last position of the
        # chunk has no next token to score.
        positions = range(start + silent, min(start + len(part), n_ctx - 1))
        if not positions:
            continue
        rows = np.ctypeslib.as_array(
            C.llama_get_logits(context.ptr), shape=(len(part) - silent, n_vocab)
        )
        stats.add(token_nlls(rows[: len(positions)], [chunk[p + 1] for p in positions]))


def _default_threads() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0)))
