"""One model as the worker hosts it: llama.cpp objects, chat template, engine, and leases.

Turns a client's request into an engine job, refusing what cannot run (prompt longer than
the context, an unknown token, a grammar llama.cpp rejects) before it is queued. Leases
keep the llama.cpp objects alive while any request uses them, so unloading never frees a
model under a running tokenizer call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.errors import FailedPrecondition, InvalidArgument, Unavailable
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig
from worker.engine.batching import EmbeddingJob, GenerationJob, ModelEngine
from worker.engine.generation import ChatMessage, Constraint, EmbeddingResult, GenerationEvent
from worker.engine.sampling import SamplingParams, check_token_ids
from worker.engine.streams import EventStream
from worker.llamacpp import rpc
from worker.llamacpp.backend import LlamaBackend
from worker.llamacpp.context import ContextParams
from worker.llamacpp.gbnf import constraint_grammar
from worker.llamacpp.model import LlamaModel
from worker.models.chat import ChatTemplate, check_messages, select_template
from worker.models.gguf import GGUFFile

MAX_EMBED_INPUTS = 256


@dataclass(frozen=True)
class ModelFacts:
    """What was learnt about a model file before loading it."""

    path: Path
    gguf: GGUFFile
    estimate: MemoryEstimate
    n_ctx: int  # per slot, as requested; 0 resolved to the training context
    n_parallel: int = 1  # slots, resolved from the config (0 = sized from memory)


class HostedModel:
    def __init__(self, config: ModelConfig, facts: ModelFacts) -> None:
        self.config = config
        self.facts = facts
        if config.is_split:
            # Only in a split model's child process (worker.split.runner): ggml aborts the
            # process that holds the RPC connections when one of them fails.
            rpc.use_servers(list(config.rpc_servers))
        self.model = LlamaModel(facts.path, config.n_gpu_layers, config.tensor_split)
        try:
            self.context = LlamaBackend(
                self.model,
                ContextParams(
                    n_ctx=facts.n_ctx * facts.n_parallel,
                    n_seq_max=facts.n_parallel,
                    n_batch=config.n_batch,
                    n_threads=config.threads,
                    n_threads_batch=config.threads_batch,
                    embedding=config.embedding,
                    pooling=config.pooling,
                    flash_attn=config.flash_attn,
                ),
            )
        except BaseException:
            self.model.close()
            raise
        self.template: ChatTemplate | None = None
        if not config.embedding:
            self.template = select_template(
                config_template=config.chat_template,
                chat_format=config.chat_format,
                gguf_template=facts.gguf.chat_template,
                architecture=facts.gguf.architecture,
                bos_token=self.model.token_text(self.model.bos),
                eos_token=self.model.token_text(self.model.eos),
            )
        self.engine = ModelEngine(config.alias, self.context, config.max_queue)
        self._leases = 0
        self._closing: str | None = None
        self._lease_cond = threading.Condition()

    @property
    def alias(self) -> str:
        return self.config.alias

    @property
    def n_ctx(self) -> int:
        """What one request may fill: prompt and completion."""
        return self.context.n_ctx_seq

    # ---- lifetime --------------------------------------------------------------------
    @contextmanager
    def lease(self) -> Iterator[HostedModel]:
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

    def close(self, reason: str, timeout: float = 30.0) -> None:
        """Stops the engine, waits for in-flight users, then frees llama.cpp's memory."""
        with self._lease_cond:
            self._closing = reason
        self.engine.close(reason, timeout)
        with self._lease_cond:
            self._lease_cond.wait_for(lambda: self._leases == 0, timeout)
        self.context.close()
        self.model.close()

    # ---- requests --------------------------------------------------------------------
    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return self.model.tokenize(text, add_special, parse_special)

    def pieces(self, tokens: Sequence[int]) -> list[bytes]:
        return [self.model.piece(t, special=True) for t in tokens]

    def detokenize(self, tokens: Sequence[int]) -> str:
        check_token_ids("tokens", tokens, self.model.n_vocab)
        return self.model.detokenize(tokens)

    def generate_job(
        self,
        request_id: str,
        prompt: str,
        sampling: SamplingParams,
        constraint: Constraint | None,
        stream: EventStream[GenerationEvent],
    ) -> GenerationJob:
        self._require_generation()
        return self._job(request_id, self.tokenize(prompt), sampling, constraint, stream)

    def chat_job(
        self,
        request_id: str,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams,
        constraint: Constraint | None,
        stream: EventStream[GenerationEvent],
    ) -> GenerationJob:
        self._require_generation()
        check_messages(messages)
        assert self.template is not None  # set for every generation model
        tokens = self.tokenize(self.template.render(messages))
        # Templates that write the BOS token themselves would otherwise get a second one.
        if len(tokens) > 1 and tokens[0] == tokens[1] == self.model.bos:
            del tokens[0]
        return self._job(request_id, tokens, sampling, constraint, stream)

    def _job(
        self,
        request_id: str,
        tokens: list[int],
        sampling: SamplingParams,
        constraint: Constraint | None,
        stream: EventStream[GenerationEvent],
    ) -> GenerationJob:
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
        grammar = constraint_grammar(constraint) if constraint is not None else None
        sampler = self.context.sampler(sampling, grammar)
        return GenerationJob(request_id, tokens, sampler, sampling.stop, max_tokens, stream)

    def embedding_job(
        self,
        request_id: str,
        inputs: Sequence[str],
        normalize: bool,
        stream: EventStream[EmbeddingResult],
    ) -> EmbeddingJob:
        if not self.config.embedding:
            raise FailedPrecondition(
                f"model {self.alias!r} serves generation; embeddings need a model loaded "
                "with embedding: true"
            )
        if not 1 <= len(inputs) <= MAX_EMBED_INPUTS:
            raise InvalidArgument(
                f"inputs must hold 1 to {MAX_EMBED_INPUTS} texts, got {len(inputs)}"
            )
        limit = min(self.context.n_batch, self.n_ctx)
        tokenized = []
        for i, text in enumerate(inputs):
            tokens = self.tokenize(text)
            if not tokens:
                raise InvalidArgument(f"inputs[{i}] is empty")
            if len(tokens) > limit:
                raise InvalidArgument(
                    f"inputs[{i}] is {len(tokens)} tokens; model {self.alias!r} embeds at most "
                    f"{limit} tokens per input (n_batch)"
                )
            tokenized.append(tokens)
        return EmbeddingJob(request_id, tokenized, normalize, stream)

    def _require_generation(self) -> None:
        if self.config.embedding:
            raise FailedPrecondition(
                f"model {self.alias!r} was loaded with embedding: true and serves only Embed; "
                "load it again without embedding to generate"
            )
