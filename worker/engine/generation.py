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
    TOOL_CALLS = "tool_calls"  # the model ended its turn having called at least one tool


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: `arguments` is a JSON object as JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant: the calls it made
    tool_call_id: str = ""  # tool: the call this message answers
    name: str = ""  # tool: the function's name


@dataclass(frozen=True)
class Tool:
    """A function the model may call; `parameters_json` is a JSON Schema as JSON text."""

    name: str
    description: str = ""
    parameters_json: str = ""


class ToolChoiceMode(enum.Enum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    FUNCTION = "function"


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    function: str = ""  # FUNCTION only


@dataclass(frozen=True)
class Tools:
    """What a chat request offers the model to call; empty `tools` means no tool calling."""

    tools: tuple[Tool, ...] = ()
    choice: ToolChoice = ToolChoice()
    parallel: bool = True


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
class TokenLogprob:
    token_id: int
    piece: bytes  # can be part of a UTF-8 character
    logprob: float


@dataclass(frozen=True)
class TokenLogprobs:
    """A sampled token's log-probability and the most likely alternatives at its step."""

    chosen: TokenLogprob
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ToolCallDelta:
    """Part of a streamed tool call: the first delta of call `index` has its id and name,
    later ones append to its arguments."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class TextDelta:
    """Text that became final, with the tokens sampled since the previous delta."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...] = ()  # when asked: one per token id
    index: int = 0  # which of the request's n sequences
    reasoning: str = ""  # reasoning text, separated from `text`
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The last event of a generation (of one sequence, when n > 1): any remaining text,
    and the accounting."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    stop_sequence: str = ""  # the stop string that ended it, if one did
    logprobs: tuple[TokenLogprobs, ...] = ()
    index: int = 0
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()


GenerationEvent = TextDelta | Finished


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int
