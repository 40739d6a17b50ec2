"""Runs one model's requests on a thread of its own, decoding them together in one batch.

The model's context has N sequence slots (continuous batching, as llama-server's parallel
slots): a request waits in a bounded FIFO until a slot is free, then joins the running
batch at the next step. Each step decodes one token for every generating slot plus as much
of the waiting prompts as the batch has room for (chunked prefill), then samples each
sequence with its own sampler and streams its text to its own client. A finished or
cancelled request frees its slot at once; its tokens stay in the slot's KV cache, so a later
request that starts the same way (the next chat turn, a shared system prompt) skips
recomputing them. Cancellation and shutdown are checked at every step.

Each slot also remembers the prefix chain (common.prefix) of the request whose tokens it
holds: the prompt's when the request starts, the prompt with its reply's once the model
says what the reply was (remember_reply), forgotten when the slot's cache is. The figures
report their union, so routing can send a request to the node that holds its opening.

A request for n sequences takes n slots at once: its prompt is prefilled in one of them and
its cache copied to the others, each then drawing with its own sampler and ending with its
own Finished. When asked, every sampled token carries its log-probabilities, which the
backend computes from the logits the token was drawn from.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from common.errors import Internal, InvalidArgument, LlamaherdError, ResourceExhausted, Unavailable
from common.status import MAX_PREFIX_HASHES, EngineFigures
from worker.engine.backend import Backend, TokenSampler
from worker.engine.generation import (
    EmbeddingResult,
    Finished,
    FinishReason,
    GenerationEvent,
    TextDelta,
    Timings,
    TokenLogprobs,
    Usage,
)
from worker.engine.sampling import check_sequences
from worker.engine.slots import SlotView, choose_slot
from worker.engine.streams import EventStream
from worker.engine.textstream import TextStream

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass
class GenerationJob:
    request_id: str
    prompt: list[int]
    sampler: TokenSampler
    stop: tuple[str, ...]
    max_tokens: int
    stream: EventStream[GenerationEvent]
    constrained: bool = False  # the sampler enforces a grammar: its per-token time is capped
    # Log-probabilities: with each token, its own and this many most likely alternatives.
    logprobs: int | None = None
    # The samplers of sequences 1 .. n-1 when n > 1 (`sampler` draws sequence 0).
    siblings: tuple[TokenSampler, ...] = ()
    # The prompt's prefix chain (common.prefix hashes), which its slots report once they
    # hold it; empty: a prompt that has none (token ids, or under one block).
    prefix: tuple[int, ...] = ()
    arrived: float = field(default=0.0, init=False)  # stamped by ModelEngine.submit

    @property
    def n(self) -> int:
        """Sequences drawn from the prompt: the slots the job takes at once."""
        return 1 + len(self.siblings)

    def release(self) -> None:
        self.sampler.close()
        for sampler in self.siblings:
            sampler.close()


@dataclass
class EmbeddingJob:
    """Pooled embeddings of `inputs` (token lists), L2-normalised when `normalize`.

    `chunk` 0 (an embedding model, whose attention may see the whole input): each input is
    one decode on the drained context. `chunk` > 0 (a generation model, causal): the job
    takes one idle slot between generation steps and feeds each input in pieces of at
    most `chunk` tokens, so llama.cpp's all-token outputs stay small (a 262k-token
    vocabulary makes each output row 1 MiB); the pieces' mean-pooled states, weighted by
    their lengths, make the input's mean.
    """

    request_id: str
    inputs: list[list[int]]
    normalize: bool
    stream: EventStream[EmbeddingResult]
    chunk: int = 0
    arrived: float = field(default=0.0, init=False)  # stamped by ModelEngine.submit

    def release(self) -> None:
        pass


Job = GenerationJob | EmbeddingJob


@dataclass
class _Generation:
    """One sequence of a request in progress in a slot."""

    job: GenerationJob
    sampler: TokenSampler  # this sequence's
    order: int  # admission order: prompts are prefilled first come, first served
    started: float
    reused: int  # prompt tokens found in the slot's cache
    fed: int  # prompt tokens in the cache so far
    text: TextStream
    group: list[_Slot]  # the slots of the job's sequences (shared), the prefilling one first
    index: int = 0  # which of the job's sequences
    follows: _Slot | None = None  # waits for the prompt prefilled there, to copy its cache
    pending: list[int] = field(default_factory=list)  # sampled, not yet sent as text
    pending_logprobs: list[TokenLogprobs] = field(default_factory=list)  # with `pending`
    generated: int = 0
    prefilled: float = 0.0
    first_at: float | None = None
    next_token: int | None = None  # sampled, to be decoded at the next step


class _Slot:
    """One backend sequence and what its share of the KV cache holds."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []  # tokens whose keys and values are in the cache, in order
        # The last prompt prefilled here; the backend keeps the logits its final token
        # produced (save_logits). llama.cpp's results depend on how a prompt is split into
        # batches, so re-running only the final token of a cached prompt could pick a
        # different first token; sampling from the saved logits instead makes an identical
        # request give identical output.
        self.memo_prompt: list[int] = []
        self.last_used = 0
        self.run: _Generation | None = None
        # The job whose tokens the cache holds, which of its sequences, and their prefix
        # chain; None: nothing reportable. One attribute, replaced whole under the engine's
        # prefix lock, so a reply remembered from another thread never lands on a slot a
        # newer job has taken.
        self.held: tuple[GenerationJob, int, tuple[int, ...]] | None = None

    def view(self) -> SlotView:
        return SlotView(self.seq_id, self.cached, self.last_used)


class _Cancelled(Exception):
    """The client went away: stop quietly, nobody is listening."""


class ModelEngine:
    """Schedules one model's requests onto its backend's sequences, on a thread of its own.

    `clock` stamps every timing (arrival, start, first token, end); tests inject their own.
    A constrained request whose sampler takes longer than `max_sample_s` for one token is
    ended (InvalidArgument): its grammar would stall every other slot at every step.
    """

    def __init__(
        self,
        name: str,
        backend: Backend,
        max_queue: int,
        clock: Clock = time.perf_counter,
        max_sample_s: float | None = None,
    ) -> None:
        self.name = name
        self._max_sample_s = max_sample_s
        self._backend = backend
        self._max_queue = max_queue
        self._clock = clock
        self._waiting: deque[Job] = deque()
        self._slots = [_Slot(i) for i in range(backend.n_seq)]
        # Admitted jobs of n > 1 sequences: the slot that prefills -> the slots that copy it.
        self._followers: dict[int, list[_Slot]] = {}
        self._embedding: EmbeddingJob | None = None
        self._closing: str | None = None
        self._cond = threading.Condition()
        self._held_lock = threading.Lock()  # guards every slot's `held`
        self._steps = 0
        self._admitted = 0
        self.rates = RateTracker()
        self._thread = threading.Thread(target=self._run, name=f"engine:{name}", daemon=True)
        self._thread.start()

    # ---- any thread ----------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return sum(s.run is not None for s in self._slots) + (self._embedding is not None)

    @property
    def slots_total(self) -> int:
        return len(self._slots)

    @property
    def cached_tokens(self) -> int:
        return sum(len(s.cached) for s in self._slots)

    def figures(self) -> EngineFigures:
        """Load and recent speed, for status, routing and /metrics."""
        return EngineFigures(
            slots_total=len(self._slots),
            queued=self.queued,
            active=self.active,
            cached_tokens=self.cached_tokens,
            decode_tps=self.rates.decode_tps,
            prompt_tps=self.rates.prompt_tps,
            completed=self.rates.completed,
            prefix_hashes=self.prefix_hashes(),
        )

    def prefix_hashes(self) -> tuple[int, ...]:
        """The prefix hashes the slots' caches hold, deduplicated: running slots first,
        then the most recently used, each slot's chain whole, at most MAX_PREFIX_HASHES."""
        with self._held_lock:
            held = [(s.run is not None, s.last_used, s.held) for s in self._slots]
        held.sort(key=lambda h: (h[0], h[1]), reverse=True)
        seen: dict[int, None] = {}  # insertion-ordered set
        for _, _, entry in held:
            if entry is None:
                continue
            for h in entry[2]:
                seen.setdefault(h, None)
            if len(seen) >= MAX_PREFIX_HASHES:
                break
        return tuple(seen)[:MAX_PREFIX_HASHES]

    def remember_reply(self, job: GenerationJob, index: int, chain: tuple[int, ...]) -> None:
        """`chain` is what sequence `index` of `job` left in its slot's cache (its prompt and
        reply): reported from now on, unless the slot has since been taken by another job or
        cleared. Any thread."""
        with self._held_lock:
            for slot in self._slots:
                held = slot.held
                if held is not None and held[0] is job and held[1] == index:
                    slot.held = (job, index, chain)

    def submit(self, job: Job) -> None:
        """Queues a job, or refuses at once when the model is closing, its queue is full or
        it asks for more sequences than there are slots; stamps its arrival."""
        job.arrived = self._clock()
        if isinstance(job, GenerationJob):
            check_sequences(job.n, len(self._slots), self.name)
        with self._cond:
            if self._closing is not None:
                raise Unavailable(self._closing)
            full = self.active >= len(self._slots) or bool(self._waiting)
            if full and len(self._waiting) >= self._max_queue:
                raise ResourceExhausted(
                    f"model {self.name!r} has all {len(self._slots)} slots busy and "
                    f"{len(self._waiting)} requests waiting (max_queue={self._max_queue}); "
                    "retry later or raise max_queue or n_parallel"
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
        """Fails waiting jobs, stops the running ones at the next step, joins the thread."""
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
                while not self._waiting and not self._busy() and self._closing is None:
                    self._cond.wait()
                if self._closing is not None and not self._busy():
                    return
                admitted = self._admit_locked()
            for job, slot, shared in admitted:
                self._start(job, slot, shared)
            if self._busy():
                try:
                    self._step()
                except Exception as exc:  # the engine thread must outlive any one step
                    for slot in self._slots:
                        if slot.run is not None:
                            self._fail(slot, exc)

    def _busy(self) -> bool:
        return any(s.run is not None for s in self._slots)

    def _admit_locked(self) -> list[tuple[Job, _Slot, int]]:
        """Moves waiting jobs, first come first served, into idle slots; with each, how many
        of the slot's cached tokens its prompt shares. A job of n sequences takes n slots
        (the others in _followers); it waits at the head of the queue until it has them:
        later jobs do not overtake it, and running ones always end, so it starts."""
        admitted: list[tuple[Job, _Slot, int]] = []
        while self._waiting and self._closing is None:
            taken = {slot.seq_id for _, slot, _ in admitted}
            taken.update(s.seq_id for slots in self._followers.values() for s in slots)
            idle = [s for s in self._slots if s.run is None and s.seq_id not in taken]
            if not idle:
                break
            job = self._waiting[0]
            if isinstance(job, EmbeddingJob) and job.chunk:
                # A generation model's embedding: any idle slot, least recently used first.
                seq_id, _ = choose_slot([s.view() for s in idle], [])
                admitted.append((self._waiting.popleft(), self._slots[seq_id], 0))
                continue
            if isinstance(job, EmbeddingJob):
                if admitted or self._busy():
                    break  # embeddings use the whole context: they wait for it to drain
                admitted.append((self._waiting.popleft(), idle[0], 0))
                break
            if len(idle) < job.n:
                break
            busy = taken | {s.seq_id for s in self._slots if s.run is not None}
            seq_id, shared = choose_slot([s.view() for s in idle], job.prompt, busy)
            if job.n > 1:  # the copies overwrite their caches: the least recently used
                others = sorted((s for s in idle if s.seq_id != seq_id), key=lambda s: s.last_used)
                self._followers[seq_id] = others[: job.n - 1]
            admitted.append((self._waiting.popleft(), self._slots[seq_id], shared))
        return admitted

    def _start(self, job: Job, slot: _Slot, shared: int) -> None:
        if isinstance(job, EmbeddingJob):
            self._embedding = job
            try:
                if job.chunk:
                    self._serve_embedding_in_slot(job, slot)
                else:
                    self._serve_embedding(job)
            finally:
                self._embedding = None
                job.release()
            return
        self._admitted += 1
        started = self._clock()
        group = [slot, *self._followers.pop(slot.seq_id, [])]
        samplers = (job.sampler, *job.siblings)
        for index, member in enumerate(group):
            member.run = _Generation(
                job, samplers[index], self._admitted, started, 0, 0, TextStream(job.stop),
                group, index, follows=slot if index else None,
            )  # fmt: skip
        run = slot.run
        assert run is not None
        try:
            run.reused = run.fed = self._reuse_prefix(slot, job.prompt, shared)
            with self._held_lock:  # the caches are the job's from now on, for routing
                for index, member in enumerate(group):
                    member.held = (job, index, job.prefix)
            if run.reused == len(job.prompt):  # an exact repeat: sample from the saved logits
                self._prompt_in(slot, None)
        except Exception as exc:
            self._fail(slot, exc)

    def _reuse_prefix(self, slot: _Slot, prompt: list[int], shared: int) -> int:
        """Keeps the `shared` cached tokens this prompt starts with, but for its last token
        unless the prompt is the slot's memo; returns how many were kept."""
        repeat = shared == len(prompt) and prompt == slot.memo_prompt
        # Otherwise the last prompt token runs again: its logits are what we sample from.
        keep = shared if repeat else min(shared, len(prompt) - 1)
        if keep < len(slot.cached):
            if not self._backend.remove(slot.seq_id, keep):
                self._forget(slot)
                return 0
            del slot.cached[keep:]
        if keep < len(slot.memo_prompt):  # part of the memo's prompt is about to be recomputed
            slot.memo_prompt = []
        return keep

    def _forget(self, slot: _Slot) -> None:
        self._backend.remove(slot.seq_id, 0)
        slot.cached.clear()
        slot.memo_prompt = []
        with self._held_lock:
            slot.held = None

    def _step(self) -> None:
        """One decode of every generating slot's next token and of waiting prompt chunks."""
        self._steps += 1
        for slot in self._slots:
            if slot.run is not None:
                try:
                    self._check(slot.run.job)
                except _Cancelled:
                    log.debug("request %s cancelled by the client", slot.run.job.request_id)
                    self._end(slot)
                except LlamaherdError as exc:
                    self._fail(slot, exc)
        decoding = [s for s in self._slots if s.run is not None and s.run.next_token is not None]
        prefilling = sorted(
            (
                s
                for s in self._slots
                if s.run is not None and s.run.next_token is None and s.run.follows is None
            ),
            key=lambda s: s.run.order if s.run is not None else 0,
        )
        entries: list[tuple[_Slot, list[int], int | None]] = []
        for slot in decoding:
            assert slot.run is not None and slot.run.next_token is not None
            if self._backend.batch_room == 0:  # n_batch >= n_parallel is enforced; defensive
                break
            token = [slot.run.next_token]
            entries.append(
                (slot, token, self._backend.add(token, len(slot.cached), slot.seq_id, True))
            )
        for slot in prefilling:
            assert slot.run is not None
            room = self._backend.batch_room
            if room == 0:
                break
            prompt, fed = slot.run.job.prompt, slot.run.fed
            chunk = prompt[fed : fed + room]
            last = fed + len(chunk) == len(prompt)
            index = self._backend.add(chunk, fed, slot.seq_id, last)
            entries.append((slot, chunk, index if last else None))
        if not entries:
            return
        try:
            self._backend.run()
        except Exception as exc:
            # A failed decode leaves the batch's sequences in an unknown state.
            for slot, _, _ in entries:
                self._fail(slot, exc)
            return
        for slot, tokens, logits_at in entries:
            run = slot.run
            if run is None:  # failed with another sequence of its request: cache forgotten
                continue
            slot.cached.extend(tokens)
            try:
                if run.next_token is not None:
                    run.next_token = None
                    assert logits_at is not None
                    self._draw(slot, logits_at, slot)
                    continue
                run.fed += len(tokens)
                if logits_at is not None:  # the prompt is in: sample its first token
                    self._backend.save_logits(slot.seq_id, logits_at)
                    slot.memo_prompt = run.job.prompt
                    self._prompt_in(slot, logits_at)
            except Exception as exc:
                self._fail(slot, exc)

    def _prompt_in(self, slot: _Slot, logits_at: int | None) -> None:
        """The prompt is in `slot`'s cache, its last logits at batch index `logits_at` (None:
        the saved ones, an exact repeat): copies the cache to the request's other sequences
        and draws every sequence's first token."""
        run = slot.run
        assert run is not None
        run.prefilled = self._clock()
        followers = [s for s in run.group if s.run is not None and s.run.follows is slot]
        for other in followers:
            assert other.run is not None
            self._backend.copy(slot.seq_id, other.seq_id)
            other.cached = list(slot.cached)
            other.memo_prompt = []
            if logits_at is not None:  # the copy's memo too, for an exact repeat later
                self._backend.save_logits(other.seq_id, logits_at)
                other.memo_prompt = slot.memo_prompt
            other.run.follows = None
            other.run.reused, other.run.fed = run.reused, run.fed
            other.run.prefilled = run.prefilled
        for drawing in (slot, *followers):
            if drawing.run is None:  # ended by another sequence's failure
                continue
            try:
                self._draw(drawing, logits_at, slot)
            except Exception as exc:
                self._fail(drawing, exc)

    def _draw(self, slot: _Slot, logits_at: int | None, source: _Slot) -> None:
        """Samples the slot's next token from batch index `logits_at` of the last run (None:
        from `source`'s saved logits), with its log-probabilities when asked, and passes it
        on. A constrained job whose draw took too long fails."""
        run = slot.run
        assert run is not None
        job = run.job
        started = self._clock()
        if logits_at is None:
            token = run.sampler.sample_saved(source.seq_id)
        else:
            token = run.sampler.sample(logits_at)
        spent = self._clock() - started
        if job.constrained and self._max_sample_s is not None and spent > self._max_sample_s:
            raise InvalidArgument(
                f"request {job.request_id}: its grammar took {spent * 1e3:.0f} ms to sample "
                f"one token; the limit is {self._max_sample_s * 1e3:.0f} ms (max_sample_ms)"
            )
        logprobs = None
        if job.logprobs is not None:
            if logits_at is None:
                logprobs = self._backend.saved_logprobs(source.seq_id, token, job.logprobs)
            else:
                logprobs = self._backend.logprobs(logits_at, token, job.logprobs)
        self._on_token(slot, token, logprobs)

    def _on_token(self, slot: _Slot, token: int, logprobs: TokenLogprobs | None) -> None:
        run = slot.run
        assert run is not None
        job = run.job
        if run.first_at is None:
            run.first_at = self._clock()
        if self._backend.is_eog(token):
            self._finish(slot, FinishReason.STOP, run.text.finish())
            return
        run.generated += 1
        run.pending.append(token)
        if logprobs is not None:  # queued with its token: the text may be held back
            run.pending_logprobs.append(logprobs)
        piece = run.text.feed(self._backend.piece(token))
        if run.text.stopped:
            self._finish(slot, FinishReason.STOP, piece)
        elif run.generated >= job.max_tokens:
            self._finish(slot, FinishReason.LENGTH, piece + run.text.finish())
        else:
            if piece:
                pending, logprobs_of = tuple(run.pending), tuple(run.pending_logprobs)
                job.stream.emit(TextDelta(piece, pending, logprobs_of, run.index))
                run.pending = []
                run.pending_logprobs = []
            run.next_token = token

    def _finish(self, slot: _Slot, finish: FinishReason, tail: str) -> None:
        run = slot.run
        assert run is not None and run.first_at is not None
        ended = self._clock()
        computed = len(run.job.prompt) - run.reused
        timings = _timings(
            run.job.arrived, run.started, run.prefilled, run.first_at, ended, computed,
            run.generated,
        )  # fmt: skip
        # The request's other sequences copied the prompt: it counts once in the rates.
        self.rates.record(timings, run.generated, 0 if run.index else computed)
        usage = Usage(len(run.job.prompt), run.generated, run.reused)
        run.job.stream.emit(
            Finished(
                tail, tuple(run.pending), finish, usage, timings, run.text.matched,
                tuple(run.pending_logprobs), run.index,
            )
        )  # fmt: skip
        self._end(slot)

    def _end(self, slot: _Slot) -> None:
        """Frees the slot; the request's stream closes with its last sequence."""
        run = slot.run
        assert run is not None
        slot.run = None
        slot.last_used = self._steps
        if not any(s.run is not None and s.run.job is run.job for s in run.group):
            run.job.stream.close()
            run.job.release()

    def _fail(self, slot: _Slot, exc: Exception) -> None:
        """Fails the slot's request with all its sequences, forgetting their caches: a
        failure can leave them in any state."""
        run = slot.run
        assert run is not None
        if not isinstance(exc, LlamaherdError):
            log.error(
                "request %s failed in the engine of %s", run.job.request_id, self.name,
                exc_info=exc,
            )  # fmt: skip
            exc = Internal(f"request {run.job.request_id} failed: {exc}")
        for member in run.group:
            if member.run is not None and member.run.job is run.job:
                self._forget(member)
                member.run = None
        run.job.stream.fail(exc)
        run.job.release()

    def _check(self, job: Job) -> None:
        if self._closing is not None:
            raise Unavailable(self._closing)
        if job.stream.cancelled:
            raise _Cancelled

    def _serve_embedding(self, job: EmbeddingJob) -> None:
        """An embedding model's job: each input one decode on the cleared context."""

        def pooled(tokens: list[int]) -> list[float]:
            self._backend.clear()
            self._backend.add(tokens, 0, 0, True)
            self._backend.run(all_logits=True)
            return self._backend.sequence_embedding(0)

        try:
            self._embed_inputs(job, pooled)
        finally:
            self._backend.clear()

    def _serve_embedding_in_slot(self, job: EmbeddingJob, slot: _Slot) -> None:
        """A generation model's job on the idle `slot`, whose cached prefix it replaces;
        the other slots' caches and generations are untouched."""

        def pooled(tokens: list[int]) -> list[float]:
            self._forget(slot)
            total: list[float] = []
            for start in range(0, len(tokens), job.chunk):
                self._check(job)
                piece = tokens[start : start + job.chunk]
                self._backend.add(piece, start, slot.seq_id, True)
                self._backend.run(all_logits=True)
                mean = self._backend.sequence_embedding(slot.seq_id)
                if not total:
                    total = [0.0] * len(mean)
                for i, v in enumerate(mean):
                    total[i] += v * len(piece)
            return [v / len(tokens) for v in total]

        try:
            self._embed_inputs(job, pooled)
        finally:
            self._forget(slot)

    def _embed_inputs(self, job: EmbeddingJob, pooled: Callable[[list[int]], list[float]]) -> None:
        """Emits the job's vectors (each input pooled by `pooled`) or its failure."""
        try:
            vectors = []
            for tokens in job.inputs:
                self._check(job)
                vector = pooled(tokens)
                if job.normalize:
                    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
                    vector = [v / norm for v in vector]
                vectors.append(tuple(vector))
            job.stream.emit(EmbeddingResult(tuple(vectors), sum(len(t) for t in job.inputs)))
            job.stream.close()
        except _Cancelled:
            job.stream.close()
        except LlamaherdError as exc:
            job.stream.fail(exc)
        except Exception as exc:
            log.exception("request %s failed in the engine of %s", job.request_id, self.name)
            job.stream.fail(Internal(f"request {job.request_id} failed: {exc}"))
            for slot in self._slots:
                slot.cached.clear()
                slot.memo_prompt = []
                with self._held_lock:
                    slot.held = None


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
