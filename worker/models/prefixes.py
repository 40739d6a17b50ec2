"""The prefix chains (common.prefix) of what a request leaves in its slots' caches.

A request's slot holds its prompt and then its reply. Routing matches the next request
against the chain of that text in the canonical form a gateway computes from the next
request alone: for a chat, the messages and then the reply as an assistant message (the
client sends it back as the next turn's history); for a completion, the prompt and then the
output. The engine reports the prompt's chain from the start (ModelEngine keeps it per
slot); a Replies collects each sequence's reply text as the model streams it, so the chain
of prompt and reply replaces it once the sequence ends.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.prefix import MAX_CHARS, PrefixChain, chain_of, chat_chain, reply_text
from worker.engine.generation import ChatMessage, Finished, GenerationEvent
from worker.models.chat import split_assistant_prefix


def chat_opening(messages: Sequence[ChatMessage]) -> tuple[PrefixChain, str]:
    """A chat's prompt chain and the start of its reply: the turns as (role, content) (tool
    calls are not in a gateway's canonical text either), and the assistant prefix the reply
    continues ("" for none)."""
    turns, start = split_assistant_prefix(messages)
    return chat_chain((m.role, m.content) for m in turns), start


def prompt_opening(prompt: str | Sequence[int]) -> PrefixChain:
    """A completion's prompt chain; none for a prompt of token ids (no text to compare)."""
    return chain_of(prompt[:MAX_CHARS]) if isinstance(prompt, str) else PrefixChain()


class Replies:
    """Each sequence's reply text, kept only as far as the chain can still grow, and the
    chain of prompt and reply once a sequence finishes.

    `chat`: the reply is an assistant message after the chat's messages (`start` being the
    text it continues), else plain text after the prompt. Feeding costs an append per
    event; the hashing happens once per sequence, at its end.
    """

    def __init__(self, prompt: PrefixChain, chat: bool, start: str = "") -> None:
        self._prompt = prompt
        self._chat = chat
        self._room = MAX_CHARS - prompt.chars  # reply characters the chain can still take
        self._texts: dict[int, list[str]] = {}
        self._lengths: dict[int, int] = {}
        self._start = start

    def feed(self, event: GenerationEvent) -> tuple[int, tuple[int, ...]] | None:
        """Takes one event of the (shaped) stream; at a sequence's end, its index and the
        chain of prompt and reply. None otherwise, and for a prompt that has no chain (a
        reply alone would match nothing a gateway computes)."""
        if not self._prompt.hashes and self._prompt.chars == 0:
            return None
        index = event.index
        if self._lengths.get(index, 0) < self._room and event.text:
            self._texts.setdefault(index, []).append(event.text)
            self._lengths[index] = self._lengths.get(index, 0) + len(event.text)
        if not isinstance(event, Finished):
            return None
        reply = "".join(self._texts.pop(index, ()))
        self._lengths.pop(index, None)
        text = reply_text(self._start + reply) if self._chat else reply
        return index, self._prompt.extend(text).hashes
