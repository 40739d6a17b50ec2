"""Turns sampled token bytes into the text a client may see, as soon as it is final.

Two things can keep text back: a token that ends inside a multi-byte UTF-8 character, and
text that could be the beginning of a stop string. Pure logic, no llama.cpp.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    """Feed token bytes in; get back (text safe to send, whether a stop string matched)."""

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(stop)
        self._held = ""
        self.stopped = False
        self.matched = ""  # the stop string that matched, once one did

    def feed(self, piece: bytes) -> str:
        """Returns the text that became final with this piece. After a stop, returns ''."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(piece)
        if not self._stops:
            self._held = ""
            return text
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._longest_stop_prefix_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self) -> str:
        """Everything still held back, once generation ended without a stop string."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped = True
            return text[:cut]
        return text

    def _first_stop(self, text: str) -> int | None:
        found = [(i, n, s) for n, s in enumerate(self._stops) if (i := text.find(s)) >= 0]
        if not found:
            return None
        position, _, self.matched = min(found)  # the earliest; a tie goes to the first listed
        return position

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that a stop string starts with."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if stop.startswith(text[-n:]):
                    best = n
                    break
        return best
