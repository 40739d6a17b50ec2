"""A model served in this process: llama.cpp objects, chat template, engine, and leases.

One implementation of worker.models.served.ServedModel (the other relays to a split
model's child worker). Turns a request into an engine job, refusing what cannot run (prompt
longer than the context, an unknown token, a grammar llama.cpp rejects) before it is
queued, then streams the job's events. Leases keep the llama.cpp objects alive while any
request uses them, so unloading never frees a model under a running tokenizer call.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Protocol, TypeVar

from common.errors import FailedPrecondition, InvalidArgument, Unavailable
from common.model_settings import ModelConfig, Pooling
from common.status import EngineFigures
from worker.config import WorkerSettings
from worker.engine.backend import Backend, TokenSampler
from worker.engine.batching import EmbeddingJob, GenerationJob, Job, ModelEngine
from worker.engine.generation import (
    ChatMessage,
    Constraint,
    ConstraintKind,
    EmbeddingResult,
    Finished,
    GenerationEvent,
    ToolChoiceMode,
    Tools,
)
from worker.engine.limits import RequestLimits, check_text
from worker.engine.pools import BoundedPool, default_pool
from worker.engine.sampling import SEED_LIMIT, SamplingParams, check_sequences, check_token_ids
from worker.engine.streams import EventStream
from worker.llamacpp import rpc
from worker.llamacpp.backend import LlamaBackend
from worker.llamacpp.chat_templates import RENDER_LIMITS
from worker.llamacpp.context import ContextParams
from worker.llamacpp.gbnf import constraint_grammar
from worker.llamacpp.model import LlamaModel
from worker.models.chat import ChatTemplate, check_messages, render_chat, select_template
from worker.models.chat_stream import OutputPlan, shape_output
from worker.models.prefixes import Replies, chat_opening, prompt_opening
from worker.models.reasoning import prompt_opens_think
from worker.models.served import ModelFacts, Tokenized
from worker.models.tool_calls import NO_TOOLS, check_tools, required_grammar

log = logging.getLogger(__name__)

MAX_EMBED_INPUTS = 256
# Tokens per decode when a generation model embeds: every token is then an output with a
# full row of logits (1 MiB each for a 262k vocabulary), so pieces keep that buffer small.
EMBED_CHUNK = 32
# Plain texts up to this size (no template, no grammar) are cheaper to tokenize inline than
# to hand to a thread; anything larger, any chat and any constraint is prepared on the
# worker's request pool, so no request can stall the event loop.
INLINE_TOKENIZE_BYTES = 32 * 1024

T = TypeVar("T")


class ModelBackend(Backend, Protocol):
    """What a LocalModel serves from: the engine's backend (worker.engine.backend) and the
    reads that requests need besides. worker.llamacpp.backend.LlamaBackend implements it
    over llama.cpp; the fake of tests/support serves the registry's and servicer's tests."""

    @property
    def n_ctx_seq(self) -> int:
        """Tokens one sequence may hold: prompt and completion."""
        ...

    @property
    def n_batch(self) -> int: ...

    @property
    def bos(self) -> int: ...

    def sampler(self, params: SamplingParams, grammar: str | None) -> TokenSampler:
        """A request's sampler; built on the request's thread."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def token_bytes(self, token: int) -> bytes:
        """A token's bytes, special tokens written out (as Tokenize shows them)."""
        ...

    def close(self) -> None:
        """Frees the context and the model."""
        ...


def request_limits(settings: WorkerSettings) -> RequestLimits:
    """The settings' limits on what one request may make the worker do."""
    return RequestLimits(
        max_prompt_bytes=int(settings.max_prompt_bytes),
        max_grammar_bytes=int(settings.max_grammar_bytes),
        max_schema_bytes=int(settings.max_schema_bytes),
        max_json_depth=settings.max_json_depth,
        max_repetition=settings.max_repetition,
        max_template_iterations=settings.max_template_iterations,
        max_sample_ms=settings.max_sample_ms,
        prepare_timeout_s=settings.prepare_timeout_s,
    )


def load_local(
    config: ModelConfig,
    facts: ModelFacts,
    pool: BoundedPool | None = None,
    limits: RequestLimits | None = None,
) -> LocalModel:
    """Loads a model into llama.cpp in this process (blocking): the registry's LocalFactory
    (the worker binds the request pool and limits)."""
    limits = limits or RequestLimits()
    if config.is_split:
        # Only in a split model's child process (worker.split.runner): ggml aborts the
        # process that holds the RPC connections when one of them fails.
        rpc.use_servers(list(config.rpc_servers))
    model = LlamaModel(facts.path, config.n_gpu_layers, config.tensor_split)
    try:
        backend = LlamaBackend(
            model,
            ContextParams(
                n_ctx=facts.n_ctx * facts.n_parallel,
                n_seq_max=facts.n_parallel,
                n_batch=config.n_batch,
                n_threads=config.threads,
                n_threads_batch=config.threads_batch,
                embedding=config.embedding,
                # A generation model's embeddings are mean-pooled, as llama-server's and
                # Ollama's (EmbeddingJob adds its chunks' means up).
                pooling=config.pooling if config.embedding else Pooling.MEAN,
                flash_attn=config.flash_attn,
            ),
            max_sample_s=limits.max_sample_s,
        )
    except BaseException:
        model.close()
        raise
    try:
        template = None
        if not config.embedding:
            template = select_template(
                config_template=config.chat_template,
                chat_format=config.chat_format,
                gguf_template=facts.gguf.chat_template,
                architecture=facts.gguf.architecture,
                bos_token=model.token_text(model.bos),
                eos_token=model.token_text(model.eos),
            )
        return LocalModel(config, facts, backend, template, pool, limits)
    except BaseException:
        backend.close()
        raise


class LocalModel:
    """A model served in this process from `backend`; `template` renders chat messages
    (None for an embedding model). Requests are prepared on `pool` within `limits`."""

    def __init__(
        self,
        config: ModelConfig,
        facts: ModelFacts,
        backend: ModelBackend,
        template: ChatTemplate | None,
        pool: BoundedPool | None = None,
        limits: RequestLimits | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._rng = rng or random.Random()  # tool call ids
        self.facts = facts
        self.backend = backend
        self.template = template
        self.limits = limits or RequestLimits()
        self._pool = pool or default_pool(f"prepare:{config.alias}")
        self.engine = ModelEngine(
            config.alias, backend, config.max_queue, max_sample_s=self.limits.max_sample_s
        )
        self._leases = 0
        self._closing: str | None = None
        self._lease_cond = threading.Condition()

    @property
    def alias(self) -> str:
        return self.config.alias

    def figures(self) -> EngineFigures:
        return self.engine.figures()

    @property
    def n_ctx(self) -> int:
        """What one request may fill: prompt and completion."""
        return self.backend.n_ctx_seq

    # ---- lifetime --------------------------------------------------------------------
    @contextmanager
    def lease(self) -> Iterator[LocalModel]:
        """Keeps the model's llama.cpp objects alive for the duration of the block."""
        with self._lease_cond:
            if self._closing is not None:
                raise Unavailable(self._closing)
            self._leases += 1
        try:
            yield self
        finally:
            with self._lease_cond:
                self._leases -= 1
                self._lease_cond.notify_all()

    async def close(self, reason: str) -> None:
        """Stops the engine, waits for in-flight users, then frees llama.cpp's memory."""
        await asyncio.to_thread(self._close, reason)

    def _close(self, reason: str, timeout: float = 30.0) -> None:
        with self._lease_cond:
            self._closing = reason
        self.engine.close(reason, timeout)
        with self._lease_cond:
            self._lease_cond.wait_for(lambda: self._leases == 0, timeout)
        self.backend.close()

    # ---- requests --------------------------------------------------------------------
    async def generate(
        self,
        request_id: str,
        prompt: str | Sequence[int],
        sampling: SamplingParams,
        constraint: Constraint | None,
        n: int = 1,
    ) -> AsyncIterator[GenerationEvent]:
        """A raw prompt's continuation: `prompt` as text, or as token ids used as given;
        `n` sequences drawn from it (their events tagged with their index)."""
        stream: EventStream[GenerationEvent] = EventStream(asyncio.get_running_loop())
        if isinstance(prompt, str):
            check_text("prompt", prompt, self.limits)
        check_sequences(n, self.engine.slots_total, self.alias)
        opening = prompt_opening(prompt)
        job = await self._prepare(
            len(prompt) if constraint is None and n == 1 else None,
            lambda: self._generate_job(
                request_id, prompt, sampling, constraint, stream, n, opening.hashes
            ),
        )
        replies = Replies(opening, chat=False)
        async for event in self._run(job, stream):
            self._remember(job, replies, event)
            _log_finished(request_id, self.alias, event)
            yield event

    async def chat(
        self,
        request_id: str,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams,
        constraint: Constraint | None,
        tools: Tools = NO_TOOLS,
        n: int = 1,
    ) -> AsyncIterator[GenerationEvent]:
        stream: EventStream[GenerationEvent] = EventStream(asyncio.get_running_loop())
        check_text("messages", _joined(messages), self.limits)
        check_sequences(n, self.engine.slots_total, self.alias)
        opening, start = chat_opening(messages)
        job, plan = await self._prepare(
            None,
            lambda: self._chat_job(
                request_id, messages, sampling, constraint, stream, tools, n, opening.hashes
            ),
        )
        replies = Replies(opening, chat=True, start=start)
        async for event in shape_output(self._run(job, stream), plan, self._rng):
            self._remember(job, replies, event)
            _log_finished(request_id, self.alias, event)
            yield event

    def _remember(self, job: GenerationJob, replies: Replies, event: GenerationEvent) -> None:
        """At a sequence's end, tells the engine the chain of what its slot now holds."""
        ended = replies.feed(event)
        if ended is not None:
            self.engine.remember_reply(job, *ended)

    async def embed(
        self, request_id: str, inputs: Sequence[str], normalize: bool
    ) -> EmbeddingResult:
        stream: EventStream[EmbeddingResult] = EventStream(asyncio.get_running_loop())
        for i, text in enumerate(inputs[:MAX_EMBED_INPUTS]):
            check_text(f"inputs[{i}]", text, self.limits)
        job = await self._prepare(
            sum(len(t) for t in inputs),
            lambda: self._embedding_job(request_id, inputs, normalize, stream),
        )
        (result,) = [r async for r in self._run(job, stream)]
        return result

    async def tokenize(
        self,
        request_id: str,
        text: str,
        add_special: bool = True,
        parse_special: bool = True,
        with_pieces: bool = False,
    ) -> Tokenized:
        check_text("text", text, self.limits)
        tokens = await self._prepare(
            len(text), lambda: self._tokens(text, add_special, parse_special)
        )
        pieces = tuple(self.backend.token_bytes(t) for t in tokens) if with_pieces else ()
        return Tokenized(tuple(tokens), pieces)

    async def tokenize_chat(
        self,
        request_id: str,
        messages: Sequence[ChatMessage],
        with_pieces: bool = False,
        tools: Tools = NO_TOOLS,
    ) -> Tokenized:
        check_text("messages", _joined(messages), self.limits)
        tokens = await self._prepare(None, lambda: self._chat_tokens(messages, tools))
        pieces = tuple(self.backend.token_bytes(t) for t in tokens) if with_pieces else ()
        return Tokenized(tuple(tokens), pieces)

    async def detokenize(self, request_id: str, tokens: Sequence[int]) -> str:
        return await self._prepare(len(tokens), lambda: self._detokenize(tokens))

    async def _prepare(self, size: int | None, build: Callable[[], T]) -> T:
        """Runs `build` inline when it is a small plain text (`size` bytes), else on the
        request pool within prepare_timeout_s (`size` None: always on the pool)."""
        if size is not None and size <= INLINE_TOKENIZE_BYTES:
            return build()
        limits = self.limits

        def bounded() -> T:
            RENDER_LIMITS.set(limits)  # this call's own context (the pool copies one per call)
            return build()

        return await self._pool.run(
            bounded, limits.prepare_timeout_s, f"preparing a request for {self.alias!r}"
        )

    async def _run(self, job: Job, stream: EventStream[T]) -> AsyncIterator[T]:
        """Queues the job and yields its events; stops the job if the consumer goes away."""
        try:
            self.engine.submit(job)
        except BaseException:
            job.release()
            raise
        try:
            async for event in stream.events():
                yield event
        finally:
            stream.cancel()
            self.engine.withdraw(job)

    # ---- jobs ----------------------------------------------------------------------------
    def _tokens(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self.backend.tokenize(text, add_special, parse_special)

    def _detokenize(self, tokens: Sequence[int]) -> str:
        check_token_ids("tokens", tokens, self.backend.n_vocab)
        return self.backend.detokenize(tokens)

    def _generate_job(
        self,
        request_id: str,
        prompt: str | Sequence[int],
        sampling: SamplingParams,
        constraint: Constraint | None,
        stream: EventStream[GenerationEvent],
        n: int = 1,
        prefix: tuple[int, ...] = (),
    ) -> GenerationJob:
        self._require_generation()
        if isinstance(prompt, str):
            tokens = self._tokens(prompt)
        else:
            check_token_ids("prompt_tokens", prompt, self.backend.n_vocab)
            tokens = list(prompt)
        return self._job(request_id, tokens, sampling, constraint, stream, n, prefix)

    def _chat_job(
        self,
        request_id: str,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams,
        constraint: Constraint | None,
        stream: EventStream[GenerationEvent],
        tools: Tools = NO_TOOLS,
        n: int = 1,
        prefix: tuple[int, ...] = (),
    ) -> tuple[GenerationJob, OutputPlan]:
        """The chat's job, and how its output is read (reasoning, tool calls)."""
        tokens, plan, grammar = self._chat_prompt(messages, tools)
        if grammar is not None:
            if constraint is not None:
                raise InvalidArgument(
                    f"tool_choice {tools.choice.mode.value} makes the reply a tool call, "
                    "enforced by a grammar; it cannot also follow constraint (response_format "
                    "or grammar): drop one of them"
                )
            constraint = Constraint(ConstraintKind.GRAMMAR, grammar)
        return self._job(request_id, tokens, sampling, constraint, stream, n, prefix), plan

    def _chat_tokens(self, messages: Sequence[ChatMessage], tools: Tools = NO_TOOLS) -> list[int]:
        """The prompt of a chat: its messages rendered with the template, tokenized."""
        return self._chat_prompt(messages, tools)[0]

    def _chat_prompt(
        self, messages: Sequence[ChatMessage], tools: Tools
    ) -> tuple[list[int], OutputPlan, str | None]:
        """A chat's prompt tokens, how its output is read, and the grammar its tool choice
        needs (None: none)."""
        self._require_generation()
        check_messages(messages)
        schemas = check_tools(tools, self.limits)
        assert self.template is not None  # set for every generation model
        rendered = render_chat(self.template, messages, tools, schemas)
        check_text("the rendered chat", rendered.text, self.limits)
        tokens = self._tokens(rendered.text)
        # Templates that write the BOS token themselves would otherwise get a second one.
        if len(tokens) > 1 and tokens[0] == tokens[1] == self.backend.bos:
            del tokens[0]
        calls = tools.choice.mode is not ToolChoiceMode.NONE
        plan = OutputPlan(
            tool_format=rendered.tool_format,
            tool_names=frozenset(schemas) if calls else frozenset(),
            reasoning=self.config.reasoning_format,
            think_open=prompt_opens_think(rendered.text),
        )
        grammar = required_grammar(tools, schemas, rendered.tool_format, self.limits)
        return tokens, plan, grammar

    def _job(
        self,
        request_id: str,
        tokens: list[int],
        sampling: SamplingParams,
        constraint: Constraint | None,
        stream: EventStream[GenerationEvent],
        n: int = 1,
        prefix: tuple[int, ...] = (),
    ) -> GenerationJob:
        """The engine's job for a prompt's tokens: `n` sequences, each with its own sampler
        (seeded seed + i when a seed is given, else each its own random seed); `prefix` the
        prompt's chain (common.prefix), which its slots report."""
        if not tokens:
            raise InvalidArgument("prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise InvalidArgument(
                f"prompt is {len(tokens)} tokens but model {self.alias!r} has a context of "
                f"{self.n_ctx} tokens (n_ctx), which must also hold at least one generated "
                "token; shorten the prompt or load the model with a larger n_ctx"
            )
        room = self.n_ctx - len(tokens)
        max_tokens = min(sampling.max_tokens or room, room)
        grammar = constraint_grammar(constraint, self.limits) if constraint is not None else None
        samplers: list[TokenSampler] = []
        try:
            for i in range(n):
                seeded = sampling
                if i and sampling.seed is not None:
                    seeded = replace(sampling, seed=(sampling.seed + i) % SEED_LIMIT)
                samplers.append(self.backend.sampler(seeded, grammar))
        except BaseException:
            for sampler in samplers:
                sampler.close()
            raise
        return GenerationJob(
            request_id, tokens, samplers[0], sampling.stop, max_tokens, stream,
            grammar is not None, sampling.top_logprobs, tuple(samplers[1:]), prefix,
        )  # fmt: skip

    def _embedding_job(
        self,
        request_id: str,
        inputs: Sequence[str],
        normalize: bool,
        stream: EventStream[EmbeddingResult],
    ) -> EmbeddingJob:
        if not 1 <= len(inputs) <= MAX_EMBED_INPUTS:
            raise InvalidArgument(
                f"inputs must hold 1 to {MAX_EMBED_INPUTS} texts, got {len(inputs)}"
            )
        # A generation model embeds on one of its sequences, in causal chunks (EmbeddingJob):
        # an input may fill that sequence's context. An embedding model decodes each input
        # in one batch.
        chunk = 0 if self.config.embedding else EMBED_CHUNK
        limit = self.n_ctx if chunk else min(self.backend.n_batch, self.n_ctx)
        what = "context" if chunk else "n_batch"
        tokenized = []
        for i, text in enumerate(inputs):
            tokens = self._tokens(text)
            if not tokens:
                raise InvalidArgument(f"inputs[{i}] is empty")
            if len(tokens) > limit:
                raise InvalidArgument(
                    f"inputs[{i}] is {len(tokens)} tokens; model {self.alias!r} embeds at most "
                    f"{limit} tokens per input ({what})"
                )
            tokenized.append(tokens)
        return EmbeddingJob(request_id, tokenized, normalize, stream, chunk)

    def _require_generation(self) -> None:
        if self.config.embedding:
            raise FailedPrecondition(
                f"model {self.alias!r} was loaded with embedding: true and serves only Embed; "
                "load it again without embedding to generate"
            )


def _joined(messages: Sequence[ChatMessage]) -> str:
    """What the size limit counts of a chat before it is prepared: its texts and calls
    (the tools are counted by check_tools)."""
    calls = "".join(c.name + c.arguments for m in messages for c in m.tool_calls)
    return "".join(m.content for m in messages) + calls


def _log_finished(rid: str, alias: str, event: GenerationEvent) -> None:
    if isinstance(event, Finished):
        u, t = event.usage, event.timings
        log.info(
            "request %s model=%s prompt=%d cached=%d completion=%d finish=%s "
            "ttft=%.1fms decode=%.1ftok/s",
            rid, alias, u.prompt_tokens, u.cached_prompt_tokens, u.completion_tokens,
            event.finish_reason.value, t.time_to_first_token_ms, t.decode_tokens_per_second,
        )  # fmt: skip
