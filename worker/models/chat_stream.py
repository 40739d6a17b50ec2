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
    """Parses one sequence's streamed text for tool calls in `fmt`.

    Holds back only what is undecided: a possible marker (a few characters), a call whose
    closer has not come yet, or, for formats whose calls run to the end of the reply,
    everything from the first call on. Pieces are kept in lists, never re-joined per piece,
    so a reply costs O(its length)."""

    def __init__(self, fmt: ToolFormat, names: frozenset[str], rng: random.Random) -> None:
        self._fmt = fmt
        self._syntax = SYNTAX[fmt]
        self._names = names
        self._rng = rng
        self._pending = ""  # may start a marker: held back
        self._open: list[str] | None = None  # a call that waits for its closer, or the end
        self._tail = ""  # the open call's last characters, where a closer may have begun
        self._started = False  # text other than whitespace was passed on
        self.calls = 0

    def feed(self, piece: str) -> tuple[str, tuple[ToolCallDelta, ...]]:
        """The text and calls that `piece` makes final."""
        if self._open is None:
            return self._scan(self._pending + piece)
        self._open.append(piece)
        closer = self._syntax.closer
        if closer is None:
            return "", ()
        window = self._tail + piece
        found = window.find(closer)
        if found < 0:
            self._tail = window[-(len(closer) - 1) :]
            return "", ()
        block = "".join(self._open)
        end = len(block) - len(window) + found + len(closer)
        self._open, self._tail = None, ""
        parsed = parse_calls(self._fmt, block[:end], self._names)
        first = self._deltas(parsed.calls)  # numbered before any call after it
        self._pass([], parsed.text)
        text, deltas = self._scan(block[end:])
        return parsed.text + text, first + deltas

    def _scan(self, text: str) -> tuple[str, tuple[ToolCallDelta, ...]]:
        out: list[str] = []
        deltas: tuple[ToolCallDelta, ...] = ()
        syntax, pos = self._syntax, 0
        while True:
            if self._started and not syntax.bare_anywhere:
                syntax = dataclasses.replace(syntax, bare=())  # bare JSON only opens a reply
            start = call_start(syntax, text, pos, final=False)
            if start is None:
                start = len(text)
            self._pass(out, text[pos:start])
            pos = start
            if start == len(text) or call_start(syntax, text, start, final=True) != start:
                self._pending = text[start:]  # may still become a marker: hold it back
                break
            closer = syntax.closer
            end = -1 if closer is None else text.find(closer, start)
            if closer is None or end < 0:
                self._open, self._pending = [text[start:]], ""
                self._tail = text[-(len(closer) - 1) :] if closer else ""
                break
            block_end = end + len(closer)
            parsed = parse_calls(self._fmt, text[start:block_end], self._names)
            self._pass(out, parsed.text)
            deltas += self._deltas(parsed.calls)
            pos = block_end
        return "".join(out), deltas

    def _pass(self, out: list[str], text: str) -> None:
        out.append(text)
        if not self._started and text.strip():
            self._started = True

    def flush(self) -> tuple[str, tuple[ToolCallDelta, ...]]:
        """The rest, at the end of the reply: calls parsed, what is not a call as text."""
        rest = "".join(self._open) if self._open is not None else self._pending
        self._open, self._pending = None, ""
        parsed = parse_calls(self._fmt, rest, self._names)
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
