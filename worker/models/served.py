"""What a worker needs of a model it serves, wherever the model runs.

A model runs either in this process (worker.models.local.LocalModel: llama.cpp, engine,
chat template) or, when its layers are split over helper nodes, in a child worker that this
one relays to (worker.split.runner.SplitModel). Both implement `ServedModel`, so the
servicer and the registry treat them alike: requests and results are the worker's domain
types (worker.engine.generation, worker.engine.sampling), never protobuf, and errors are
`common.errors.LlamaherdError`s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.gguf import GGUFFile
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig
from common.status import EngineFigures
from worker.engine.generation import (
    ChatMessage,
    Constraint,
    EmbeddingResult,
    GenerationEvent,
    Tools,
)
from worker.engine.sampling import SamplingParams

OnLost = Callable[[str], None]
"""Called with the reason when a serving model breaks on its own (a split model's helper)."""


@dataclass(frozen=True)
class ModelFacts:
    """What was learnt about a model file before loading it."""

    path: Path
    gguf: GGUFFile
    estimate: MemoryEstimate
    n_ctx: int  # per slot, as requested; 0 resolved to the training context
    n_parallel: int = 1  # slots, resolved from the config (0 = sized from memory)


@dataclass(frozen=True)
class Tokenized:
    """A text as tokens, with each token's bytes when they were asked for."""

    tokens: tuple[int, ...]
    pieces: tuple[bytes, ...] = ()  # raw bytes: a piece can be part of a UTF-8 character


class TemplateSource(Protocol):
    @property
    def source(self) -> str:
        """Where the chat template came from (config, chat_format:<name>, gguf, fallback)."""
        ...


class ServedModel(Protocol):
    """A model the worker serves. Streams end with the model's own `LlamaherdError`s; a
    consumer that stops iterating (its client went away) stops the model's work."""

    @property
    def config(self) -> ModelConfig: ...
    @property
    def facts(self) -> ModelFacts: ...
    @property
    def template(self) -> TemplateSource | None: ...

    def figures(self) -> EngineFigures:
        """The engine's live figures (load, recent speed), for status and heartbeats."""
        ...

    def lease(self) -> AbstractContextManager[ServedModel]:
        """Keeps the model from being freed under a request; raises Unavailable once it is
        closing or lost."""
        ...

    def generate(
        self,
        request_id: str,
        prompt: str | Sequence[int],
        sampling: SamplingParams,
        constraint: Constraint | None,
        n: int = 1,
    ) -> AsyncIterator[GenerationEvent]:
        """`prompt` as text or as token ids (used as given); `n` sequences from it."""
        ...

    def chat(
        self,
        request_id: str,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams,
        constraint: Constraint | None,
        tools: Tools = ...,
        n: int = 1,
    ) -> AsyncIterator[GenerationEvent]:
        """The reply to a chat offering `tools` (default none): reasoning and tool calls
        separated from its text as the model's settings and tool choice say; `n` replies
        (sequences, by index) drawn from the one prompt."""
        ...

    async def embed(
        self, request_id: str, inputs: Sequence[str], normalize: bool
    ) -> EmbeddingResult: ...

    async def tokenize(
        self,
        request_id: str,
        text: str,
        add_special: bool = True,
        parse_special: bool = True,
        with_pieces: bool = False,
    ) -> Tokenized: ...

    async def tokenize_chat(
        self,
        request_id: str,
        messages: Sequence[ChatMessage],
        with_pieces: bool = False,
        tools: Tools = ...,
    ) -> Tokenized:
        """The prompt chat(messages) would read: rendered with the chat template, tokenized."""
        ...

    async def detokenize(self, request_id: str, tokens: Sequence[int]) -> str: ...

    async def close(self, reason: str) -> None:
        """Ends the model's requests with Unavailable(reason) and frees what it holds."""
        ...


LocalFactory = Callable[[ModelConfig, ModelFacts], ServedModel]
"""Builds a model in this process; blocking (llama.cpp loads), so called on a thread."""

SplitFactory = Callable[[ModelConfig, ModelFacts, OnLost], Awaitable[ServedModel]]
"""Starts a split model's child worker; `OnLost` reports that it broke while serving."""
