"""Domain types of a generation: what a client asks for and what the engine streams back.

The gRPC adapter (worker.wire) converts to and from these; nothing below the servicer
sees protobuf.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
    """Restricts what a generation may produce; worker.llamacpp.gbnf turns it into the GBNF
    grammar llama.cpp enforces."""

    kind: ConstraintKind
    text: str = ""


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
    stop_sequence: str = ""  # the stop string that ended it, if one did


GenerationEvent = TextDelta | Finished


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int
