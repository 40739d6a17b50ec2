"""Prefix fingerprints: what a request's opening looks like, in a form both the gateway and
the worker compute without a tokenizer or the chat template.

A worker's slots keep the KV cache of the last request each one ran, so a request that
opens the same way (the next turn of a conversation, a shared system prompt) skips
recomputing that part. To route such a request to the node that holds its opening, both
sides agree on one canonical text for it:

- a chat: its messages as (role, content) pairs in order, each written
  role + ROLE_END + content + MESSAGE_END (control characters that real messages rarely
  hold, so ("ab", "c") and ("a", "bc") differ), after which an assistant reply is one more
  message (role "assistant");
- a text completion: the prompt, after which its output is more text.

That text is cut into blocks of BLOCK_CHARS characters and hashed as a chain: the hash
at depth d covers blocks 0..d-1 (SHA-256 of that much text, its first 8 bytes as an
unsigned 64-bit integer). Only the depths in DEPTHS are kept, a geometric series, so one
request's chain holds at most len(DEPTHS) hashes and at most MAX_CHARS characters are
hashed whatever its length. A node holds a request's opening as deep as the deepest of
the request's hashes it reports (`matched_chars`). Pure and deterministic: the same
text gives the same hashes in every process, on every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Characters per block: about 64 tokens of English text.
BLOCK_CHARS = 256
# The block depths whose hashes a chain keeps: dense where most prompts end, then about
# x1.5 per step, so a long prompt is matched within a third of its length.
DEPTHS: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
# The most text a chain covers (32,768 characters, about 8,000 tokens); beyond it every
# request of the same opening looks alike, which is what routing needs to know.
MAX_CHARS = DEPTHS[-1] * BLOCK_CHARS
# Separators of the canonical chat text (see the module docstring).
ROLE_END = "\x1f"
MESSAGE_END = "\x1e"
ASSISTANT = "assistant"
# Hashed before the text: a later scheme with a new tag never matches this one's hashes.
_SCHEME = b"llamaherd/prefix/1\x00"
_BASE = hashlib.sha256(_SCHEME)  # SHA-256 runs on the CPU's SHA extensions: ~4x blake2b


def chat_text(messages: Iterable[tuple[str, str]], limit: int = MAX_CHARS) -> str:
    """The first `limit` characters of the canonical text of (role, content) `messages`,
    built without copying more than that (a huge message costs no more than a short one)."""
    parts: list[str] = []
    left = limit
    for role, content in messages:
        if left <= 0:
            break
        # Slice the content before concatenating, so a huge message is never copied.
        part = f"{role}{ROLE_END}{content[:left]}{MESSAGE_END}"[:left]
        parts.append(part)
        left -= len(part)
    return "".join(parts)


def reply_text(content: str) -> str:
    """An assistant reply's canonical text, as it follows its chat's messages."""
    return f"{ASSISTANT}{ROLE_END}{content}{MESSAGE_END}"


@dataclass(frozen=True)
class PrefixChain:
    """The chained block hashes of a canonical text, and what it takes to extend it.

    `hashes[i]` covers the first DEPTHS[i] blocks. `extend` hashes only what follows the
    last full block already hashed, so a worker that fingerprints a prompt and later the
    prompt with its reply hashes each character once.
    """

    hashes: tuple[int, ...] = ()
    chars: int = 0  # canonical text seen so far, at most MAX_CHARS
    # The text after the last hashed full block (under one block), and the hash state up
    # to that block; not part of equality.
    _tail: str = field(default="", repr=False, compare=False)
    _state: Any = field(default=None, repr=False, compare=False)

    def extend(self, text: str) -> PrefixChain:
        """The chain of this one's text followed by `text` (cut at MAX_CHARS)."""
        room = MAX_CHARS - self.chars
        if room <= 0 or not text:
            return self
        text = text[:room]
        state = (self._state if self._state is not None else _BASE).copy()
        pending = self._tail + text
        start = self.chars - len(self._tail)  # the offset of `pending` in the whole text
        end = self.chars + len(text)
        hashes = list(self.hashes)
        hashed = start  # the offset hashed so far
        # Digest at every kept depth within the text, then hash on to its last full block.
        for depth in DEPTHS[len(hashes) :]:
            stop = depth * BLOCK_CHARS
            if stop > end:
                break
            state.update(_encode(pending[hashed - start : stop - start]))
            hashed = stop
            hashes.append(int.from_bytes(state.digest()[:8], "little"))
        full = end - end % BLOCK_CHARS
        if full > hashed:
            state.update(_encode(pending[hashed - start : full - start]))
            hashed = full
        return PrefixChain(tuple(hashes), end, pending[hashed - start :], state)

    @property
    def depth_chars(self) -> int:
        """The characters its deepest hash covers (0: none)."""
        return DEPTHS[len(self.hashes) - 1] * BLOCK_CHARS if self.hashes else 0


def chain_of(text: str) -> PrefixChain:
    """The chain of `text` (its first MAX_CHARS characters)."""
    return PrefixChain().extend(text)


def chat_chain(messages: Iterable[tuple[str, str]]) -> PrefixChain:
    """The chain of a chat's canonical text."""
    return chain_of(chat_text(messages))


def matched_chars(chain: Sequence[int], held: Collection[int]) -> int:
    """How many characters of the text whose chain is `chain` a node holding the hashes
    `held` has cached, as far as the hashes tell: the depth of the deepest hash of `chain`
    in `held`, 0 for none (a deeper hash covers every shallower one, so the search stops
    at the first found from the deepest up). `held` is best a set: at most len(DEPTHS)
    lookups."""
    if not held:
        return 0
    for i in range(len(chain) - 1, -1, -1):
        if chain[i] in held:
            return DEPTHS[i] * BLOCK_CHARS
    return 0


def _encode(text: str) -> bytes:
    # surrogatepass: a lone surrogate (invalid JSON escapes pass through some clients) still
    # hashes, the same on both sides, rather than failing the request.
    return text.encode("utf-8", "surrogatepass")
