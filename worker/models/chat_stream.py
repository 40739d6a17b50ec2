"""The stage between a chat's engine events and the servicer: reasoning split off into
`reasoning`, tool calls parsed out of `text` into ToolCallDeltas, finish reason TOOL_CALLS.

Text that may be the start of a call marker (or of a think block) is held back until it is
known not to be; everything else passes on at once. A chat with no tools to parse and no
reasoning to split skips the stage entirely (`OutputPlan.passthrough`); otherwise each piece
of text is looked at a bounded number of times, so the stage is O(length) per reply.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

from common.model_settings import ReasoningFormat
from worker.engine.generation import (
    Finished,
    FinishReason,
    GenerationEvent,
    TextDelta,
    ToolCallDelta,
)
from worker.models.reasoning import ThinkSplitter
from worker.models.tool_calls import SYNTAX, ParsedCall, ToolFormat, call_start, parse_calls


@dataclass(frozen=True)
class OutputPlan:
    """How a chat's output is read: calls to `tool_names` in `tool_format` (none to parse
    when empty), reasoning per `reasoning`, `think_open` when the prompt opened a think
    block."""

    tool_format: ToolFormat = ToolFormat.GENERIC
    tool_names: frozenset[str] = frozenset()
    reasoning: ReasoningFormat = ReasoningFormat.NONE
    think_open: bool = False

    @property
    def passthrough(self) -> bool:
        return not self.tool_names and self.reasoning is ReasoningFormat.NONE


def new_call_id(rng: random.Random) -> str:
    """A tool call's id: call_ and 24 hex digits, as OpenAI's look."""
    return f"call_{rng.getrandbits(96):024x}"


class CallStream:
    """Parses one sequence's streamed text for tool calls in `fmt`."""

    def __init__(self, fmt: ToolFormat, names: frozenset[str], rng: random.Random) -> None:
        self._fmt = fmt
        self._syntax = SYNTAX[fmt]
        self._names = names
        self._rng = rng
        self._text = ""
        self._pos = 0  # text before this is decided: passed on or parsed
        self._locked = False  # a call began that runs to the end of the reply
        self._closer_from = 0  # where to look for the closer of the open call next
        self.calls = 0

    def feed(self, piece: str) -> tuple[str, tuple[ToolCallDelta, ...]]:
        """The text and calls that `piece` makes final."""
        self._text += piece
        if self._locked:
            return "", ()
        out: list[str] = []
        deltas: list[ToolCallDelta] = []
        text, syntax = self._text, self._syntax
        while True:
            start = call_start(syntax, text, self._pos, final=False)
            if start is None:
                out.append(text[self._pos :])
                self._pos = len(text)
                break
            out.append(text[self._pos : start])
            self._pos = start
            if call_start(syntax, text, start, final=True) != start:
                break  # may still become a marker: hold it back
            if syntax.closer is None:
                self._locked = True  # the calls run to the end: parse them then
                break
            end = text.find(syntax.closer, max(self._closer_from, start))
            if end < 0:
                self._closer_from = max(start, len(text) - len(syntax.closer) + 1)
                break
            block_end = end + len(syntax.closer)
            parsed = parse_calls(self._fmt, text[start:block_end], self._names)
            out.append(parsed.text)
            deltas.extend(self._deltas(parsed.calls))
            self._pos = self._closer_from = block_end
        return "".join(out), tuple(deltas)

    def flush(self) -> tuple[str, tuple[ToolCallDelta, ...]]:
        """The rest, at the end of the reply: calls parsed, what is not a call as text."""
        parsed = parse_calls(self._fmt, self._text[self._pos :], self._names)
        self._pos = len(self._text)
        return parsed.text, self._deltas(parsed.calls)

    def _deltas(self, calls: tuple[ParsedCall, ...]) -> tuple[ToolCallDelta, ...]:
        out = []
        for call in calls:
            out.append(ToolCallDelta(self.calls, new_call_id(self._rng), call.name, call.arguments))
            self.calls += 1
        return tuple(out)


class _Sequence:
    """The stage's state for one of the request's sequences."""

    def __init__(self, plan: OutputPlan, rng: random.Random) -> None:
        self.thinking = (
            ThinkSplitter(plan.think_open) if plan.reasoning is ReasoningFormat.AUTO else None
        )
        self.calls = CallStream(plan.tool_format, plan.tool_names, rng) if plan.tool_names else None

    def delta(self, event: TextDelta) -> TextDelta:
        text, reasoning = self.thinking.feed(event.text) if self.thinking else (event.text, "")
        deltas: tuple[ToolCallDelta, ...] = ()
        if self.calls is not None:
            text, deltas = self.calls.feed(text)
        if text == event.text and not reasoning and not deltas:
            return event
        return dataclasses.replace(
            event, text=text, reasoning=event.reasoning + reasoning, tool_calls=deltas
        )

    def finished(self, event: Finished) -> Finished:
        text, reasoning = event.text, ""
        if self.thinking is not None:
            text, reasoning = self.thinking.feed(event.text)
            rest, more = self.thinking.flush()
            text, reasoning = text + rest, reasoning + more
        deltas: tuple[ToolCallDelta, ...] = ()
        reason = event.finish_reason
        if self.calls is not None:
            text, first = self.calls.feed(text)
            rest, last = self.calls.flush()
            text, deltas = text + rest, first + last
            if self.calls.calls and reason is FinishReason.STOP:
                reason = FinishReason.TOOL_CALLS
        return dataclasses.replace(
            event,
            text=text,
            reasoning=event.reasoning + reasoning,
            tool_calls=deltas,
            finish_reason=reason,
        )


async def shape_output(
    events: AsyncIterator[GenerationEvent], plan: OutputPlan, rng: random.Random
) -> AsyncIterator[GenerationEvent]:
    """`events` with reasoning and tool calls separated as `plan` says."""
    if plan.passthrough:
        async for event in events:
            yield event
        return
    sequences: dict[int, _Sequence] = {}
    async for event in events:
        state = sequences.get(event.index)
        if state is None:
            state = sequences[event.index] = _Sequence(plan, rng)
        if isinstance(event, TextDelta):
            yield state.delta(event)
        else:
            yield state.finished(event)
