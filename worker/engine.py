"""Runs one model's requests on a thread of its own, first come, first served.

One request decodes at a time on a single llama.cpp sequence; the others wait in a bounded
FIFO. Between requests the KV cache keeps the last prompt and completion, so a request that
starts with the same tokens (the next turn of a chat, a shared system prompt) skips
recomputing them. Cancellation is checked between prompt chunks and between tokens.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.errors import Internal, ResourceExhausted, Unavailable, WorkerError
from worker.generation import (
    EmbeddingResult,
    Finished,
    FinishReason,
    GenerationEvent,
    TextDelta,
    Timings,
    Usage,
)
from worker.llamacpp.context import LlamaContext
from worker.llamacpp.model import LlamaModel
from worker.llamacpp.sampler import Sampler
from worker.streams import EventStream
from worker.textstream import TextStream

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass
class GenerationJob:
    request_id: str
    prompt: list[int]
    sampler: Sampler
    stop: tuple[str, ...]
    max_tokens: int
    stream: EventStream[GenerationEvent]
    arrived: float = field(default_factory=time.perf_counter)

    def release(self) -> None:
        self.sampler.close()


@dataclass
class EmbeddingJob:
    request_id: str
    inputs: list[list[int]]
    normalize: bool
    stream: EventStream[EmbeddingResult]
    arrived: float = field(default_factory=time.perf_counter)

    def release(self) -> None:
        pass


Job = GenerationJob | EmbeddingJob


class _Cancelled(Exception):
    """The client went away: stop quietly, nobody is listening."""


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class ModelEngine:
    def __init__(
        self,
        name: str,
        model: LlamaModel,
        context: LlamaContext,
        max_queue: int,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.name = name
        self._model = model
        self._ctx = context
        self._max_queue = max_queue
        self._clock = clock
        self._waiting: deque[Job] = deque()
        self._active: Job | None = None
        self._closing: str | None = None
        self._cond = threading.Condition()
        # Tokens whose keys and values sit in sequence 0 of the KV cache, in order.
        self._cached: list[int] = []
        # The last prompt and the logits its final token produced. llama.cpp's results depend
        # on how a prompt is split into batches, so re-running only the final token of a
        # cached prompt could pick a different first token; restoring these logits makes an
        # identical request give identical output.
        self._memo_prompt: list[int] = []
        self._memo_logits = (ctypes.c_float * model.n_vocab)()
        self.rates = RateTracker()
        self._thread = threading.Thread(target=self._run, name=f"engine:{name}", daemon=True)
        self._thread.start()

    # ---- any thread ----------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return 0 if self._active is None else 1

    def submit(self, job: Job) -> None:
        """Queues a job, or refuses at once when the model is closing or its queue is full."""
        with self._cond:
            if self._closing is not None:
                raise Unavailable(self._closing)
            busy = self._active is not None or bool(self._waiting)
            if busy and len(self._waiting) >= self._max_queue:
                raise ResourceExhausted(
                    f"model {self.name!r} already has {len(self._waiting)} requests waiting "
                    f"(max_queue={self._max_queue}); retry later or raise max_queue"
                )
            self._waiting.append(job)
            self._cond.notify()

    def withdraw(self, job: Job) -> None:
        """Takes a job that has not started out of the queue (its client went away)."""
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # already running or finished: the engine thread releases it
        job.release()

    def close(self, reason: str, timeout: float | None = None) -> bool:
        """Fails waiting jobs, stops the running one at its next token, joins the thread."""
        with self._cond:
            self._closing = reason
            dropped = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for job in dropped:
            job.stream.fail(Unavailable(reason))
            job.release()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---- engine thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and self._closing is None:
                    self._cond.wait()
                if not self._waiting:
                    return
                job = self._waiting.popleft()
                self._active = job
            try:
                self._serve(job)
            finally:
                job.release()
                with self._cond:
                    self._active = None

    def _serve(self, job: Job) -> None:
        try:
            if isinstance(job, GenerationJob):
                self._generate(job)
            else:
                self._embed(job)
            job.stream.close()
        except _Cancelled:
            log.debug("request %s cancelled by the client", job.request_id)
            job.stream.close()
        except WorkerError as exc:
            # A decode that failed half-way leaves the cache in an unknown state.
            self._forget_cache()
            job.stream.fail(exc)
        except Exception as exc:  # the engine thread must outlive any one request
            log.exception("request %s failed in the engine of %s", job.request_id, self.name)
            self._forget_cache()
            job.stream.fail(Internal(f"request {job.request_id} failed: {exc}"))

    def _check(self, job: Job) -> None:
        if self._closing is not None:
            raise Unavailable(self._closing)
        if job.stream.cancelled:
            raise _Cancelled

    def _forget_cache(self) -> None:
        self._ctx.clear()
        self._cached.clear()
        self._memo_prompt = []

    def _reuse_prefix(self, prompt: list[int]) -> int:
        """Keeps the cached tokens this prompt starts with; returns how many."""
        common = common_prefix(self._cached, prompt)
        repeat = common == len(prompt) and prompt == self._memo_prompt
        # Otherwise the last prompt token runs again: its logits are what we sample from.
        keep = common if repeat else min(common, len(prompt) - 1)
        if keep < len(self._cached):
            if not self._ctx.remove(0, keep):
                self._forget_cache()
                return 0
            del self._cached[keep:]
        if keep < len(self._memo_prompt):  # part of the memo's prompt is about to be recomputed
            self._memo_prompt = []
        if repeat:
            self._ctx.restore_logits(self._memo_logits)
        return keep

    def _prefill(self, job: GenerationJob, start: int) -> None:
        prompt, step = job.prompt, self._ctx.n_batch
        for i in range(start, len(prompt), step):
            self._check(job)
            chunk = prompt[i : i + step]
            self._ctx.decode(chunk, i)
            self._cached.extend(chunk)

    def _generate(self, job: GenerationJob) -> None:
        started = self._clock()
        reused = self._reuse_prefix(job.prompt)
        if reused < len(job.prompt):
            self._prefill(job, reused)
            self._ctx.copy_logits(self._memo_logits)
            self._memo_prompt = job.prompt
        prefilled = self._clock()

        text = TextStream(job.stop)
        pending: list[int] = []
        generated = 0
        first_at: float | None = None
        finish = FinishReason.LENGTH
        while True:
            token = job.sampler.sample(self._ctx)
            if first_at is None:
                first_at = self._clock()
            if self._model.is_eog(token):
                finish = FinishReason.STOP
                tail = text.finish()
                break
            generated += 1
            pending.append(token)
            piece = text.feed(self._model.piece(token))
            if text.stopped:
                finish = FinishReason.STOP
                tail = piece
                break
            if generated >= job.max_tokens:
                tail = piece + text.finish()
                break
            if piece:
                job.stream.emit(TextDelta(piece, tuple(pending)))
                pending = []
            self._check(job)
            self._ctx.decode([token], len(self._cached))
            self._cached.append(token)

        ended = self._clock()
        assert first_at is not None  # the loop samples at least once
        timings = _timings(
            job.arrived, started, prefilled, first_at, ended, len(job.prompt) - reused, generated
        )
        usage = Usage(len(job.prompt), generated, reused)
        self.rates.record(timings, generated, len(job.prompt) - reused)
        job.stream.emit(Finished(tail, tuple(pending), finish, usage, timings))

    def _embed(self, job: EmbeddingJob) -> None:
        vectors = []
        for tokens in job.inputs:
            self._check(job)
            self._forget_cache()
            self._ctx.decode(tokens, 0, all_logits=True)
            vector = self._ctx.sequence_embedding(0)
            if job.normalize:
                norm = math.sqrt(sum(v * v for v in vector)) or 1.0
                vector = [v / norm for v in vector]
            vectors.append(tuple(vector))
        self._forget_cache()
        job.stream.emit(EmbeddingResult(tuple(vectors), sum(len(t) for t in job.inputs)))


class RateTracker:
    """Recent decode and prefill speeds of one engine, for the coordinator's routing.

    An exponentially weighted mean over finished generations, ignoring ones too short to
    measure: a node's speed for a model is what routing learns its capability from.
    """

    MIN_TOKENS = 8
    WEIGHT = 0.3  # of the newest sample; about the last five generations dominate

    def __init__(self) -> None:
        self.decode_tps = 0.0
        self.prompt_tps = 0.0
        self.completed = 0

    def record(self, timings: Timings, generated: int, prompt_computed: int) -> None:
        self.completed += 1
        if generated >= self.MIN_TOKENS and timings.decode_tokens_per_second > 0:
            self.decode_tps = self._mix(self.decode_tps, timings.decode_tokens_per_second)
        if prompt_computed >= self.MIN_TOKENS and timings.prompt_tokens_per_second > 0:
            self.prompt_tps = self._mix(self.prompt_tps, timings.prompt_tokens_per_second)

    def _mix(self, old: float, new: float) -> float:
        return new if old == 0 else old + self.WEIGHT * (new - old)


def _timings(
    arrived: float,
    started: float,
    prefilled: float,
    first_at: float,
    ended: float,
    prompt_computed: int,
    generated: int,
) -> Timings:
    prompt_s = prefilled - started
    decode_s = ended - first_at
    return Timings(
        queue_ms=(started - arrived) * 1e3,
        prompt_ms=prompt_s * 1e3,
        time_to_first_token_ms=(first_at - arrived) * 1e3,
        decode_ms=decode_s * 1e3,
        total_ms=(ended - arrived) * 1e3,
        prompt_tokens_per_second=prompt_computed / prompt_s if prompt_s > 0 else 0.0,
        decode_tokens_per_second=(generated - 1) / decode_s
        if generated > 1 and decode_s > 0
        else 0.0,
    )
