"""Domain types of a generation: what a client asks for and what the engine streams back.

The gRPC adapter (worker.api.convert) converts to and from these; nothing below the servicer
sees protobuf.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from common.errors import InvalidArgument


class FinishReason(enum.Enum):
    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens or the context is full


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


class ConstraintKind(enum.Enum):
    GRAMMAR = "grammar"
    JSON_SCHEMA = "json_schema"
    JSON_OBJECT = "json_object"


@dataclass(frozen=True)
class Constraint:
    kind: ConstraintKind
    text: str = ""

    def to_gbnf(self) -> str:
        """The GBNF grammar that enforces this constraint."""
        if self.kind is ConstraintKind.GRAMMAR:
            return self.text
        if self.kind is ConstraintKind.JSON_OBJECT:
            return JSON_GBNF
        try:
            json.loads(self.text)
        except ValueError as exc:
            raise InvalidArgument(f"constraint.json_schema is not valid JSON: {exc}") from exc
        try:
            grammar: str = json_schema_to_gbnf(self.text)
        except (
            Exception
        ) as exc:  # the converter raises bare Exceptions on schemas it cannot express
            raise InvalidArgument(f"constraint.json_schema cannot be enforced: {exc}") from exc
        return grammar


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    queue_ms: float
    prompt_ms: float
    time_to_first_token_ms: float
    decode_ms: float
    total_ms: float
    prompt_tokens_per_second: float
    decode_tokens_per_second: float


@dataclass(frozen=True)
class TextDelta:
    """Text that became final, with the tokens sampled since the previous delta."""

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Finished:
    """The last event of a generation: any remaining text, and the accounting."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    timings: Timings


GenerationEvent = TextDelta | Finished


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int
