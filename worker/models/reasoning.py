"""Separating a reasoning model's thinking from its answer, as text streams in.

Reasoning models (DeepSeek R1, Qwen 3, QwQ, ...) write ``<think>...</think>`` before the
answer; some chat templates open the block themselves at the end of the prompt, so the
output starts inside it. With the model's `reasoning_format` `auto`, the text of that block
goes to `reasoning` and the rest to `text`; `none` leaves everything in `text`. Only a block
at the start of the reply counts: a ``<think>`` later in an answer is the answer's text.
"""

from __future__ import annotations

import enum

OPEN = "<think>"
CLOSE = "</think>"


class _State(enum.Enum):
    START = "start"  # nothing but whitespace yet: a block may still open
    THINKING = "thinking"
    AFTER = "after"  # the block closed; whitespace right after it is dropped
    ANSWER = "answer"


def prompt_opens_think(prompt: str) -> bool:
    """Whether the rendered prompt ends inside a think block the template opened (as
    DeepSeek R1's does: its generation prompt ends with <think>). Only at the very end: a
    user's message mentioning <think> earlier in the prompt opens nothing."""
    return prompt.rstrip().endswith(OPEN)


class ThinkSplitter:
    """Splits streamed text into (answer, reasoning) pieces; O(1) per piece once the answer
    began, and holds back at most a marker's length while a marker may be forming."""

    def __init__(self, starts_inside: bool = False) -> None:
        self._state = _State.THINKING if starts_inside else _State.START
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        """The answer and reasoning text that `text` makes final."""
        if self._state is _State.ANSWER:
            return text, ""
        self._held += text
        return self._advance(final=False)

    def flush(self) -> tuple[str, str]:
        """What is still held back, at the end of the reply."""
        if self._state is _State.ANSWER:
            return "", ""
        return self._advance(final=True)

    def _advance(self, final: bool) -> tuple[str, str]:
        answer: list[str] = []
        reasoning: list[str] = []
        while True:
            held = self._held
            if self._state is _State.START:
                stripped = held.lstrip()
                if stripped.startswith(OPEN):
                    self._held = stripped[len(OPEN) :]
                    self._state = _State.THINKING
                    continue
                if not final and OPEN.startswith(stripped):
                    break  # only whitespace or the start of the marker so far
                self._state = _State.ANSWER
                answer.append(held)
                self._held = ""
                break
            if self._state is _State.THINKING:
                end = held.find(CLOSE)
                if end >= 0:
                    reasoning.append(held[:end])
                    self._held = held[end + len(CLOSE) :]
                    self._state = _State.AFTER
                    continue
                keep = 0 if final else _partial_tail(held, CLOSE)
                reasoning.append(held[: len(held) - keep])
                self._held = held[len(held) - keep :]
                break
            if self._state is _State.AFTER:
                stripped = held.lstrip()
                if stripped or final:
                    self._state = _State.ANSWER
                    answer.append(stripped)
                self._held = ""
                break
            break
        return "".join(answer), "".join(reasoning)


def _partial_tail(text: str, marker: str) -> int:
    """How many characters at the end of `text` may begin `marker`."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0
