"""What a routing policy knows about one request: a RouteRequest, built by the front doors.

Both gateways (OpenAI HTTP and gRPC Inference) build one per request from plain text and
hand it through the Router to the policy, in the spirit of Ray Serve's
`choose_replicas(candidates, request)`: a policy that wants to route on the prompt (cache
affinity) or on the caller (session stickiness) reads it here, and no signature changes on
the way. Everything is cheap and bounded: no tokenizer runs on the gateway, and at most
common.prefix.MAX_CHARS characters are hashed whatever the prompt's length: once for the
prefix chain that workers report the same way (common.prefix), and PREFIX_CHARS of them
again for the short `prefix` fingerprint.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from common.prefix import MAX_CHARS, chain_of, chat_text

Task = Literal["generate", "embed"]

# A rough, model-independent token count: English text runs near 4 characters per token
# with the usual BPE and SentencePiece vocabularies. Good enough to compare requests.
CHARS_PER_TOKEN = 4
# Tokens a chat template adds around each message (role markers, turn delimiters).
MESSAGE_OVERHEAD_TOKENS = 4
# The prefix fingerprint covers this many characters of the prompt (~128 tokens): enough to
# tell system prompts and conversation openings apart, small enough to hash on every request.
PREFIX_CHARS = 512
# Session keys longer than this are replaced by a digest, so a policy that keeps per-session
# state holds small keys whatever a client sends.
MAX_SESSION_CHARS = 128


@dataclass(frozen=True)
class RouteRequest:
    """One request as routing sees it.

    `alias` and `task` decide which replicas may serve it; the rest is for policies that
    want it (the built-in ones read only `alias`): `prompt_tokens` is an estimate from the
    text length, `prefix` a stable fingerprint of the prompt's opening ("" when there is
    none, as for embeddings), `prefix_chain` the chained block hashes of the prompt's
    canonical text (common.prefix; empty for embeddings and prompts under one block),
    `session` the caller's session key or None, `node` the node the caller pinned it to or
    None.
    """

    alias: str
    task: Task = "generate"
    prompt_tokens: int = 0
    prefix: str = ""
    session: str | None = None
    # The node the caller pinned the request to (the x-llamaherd-node header, for
    # measuring one node: llamaherd capacity); None: any replica, as routing chooses.
    node: str | None = None
    prefix_chain: tuple[int, ...] = ()


def for_prompt(alias: str, prompt: str, session: str | None = None) -> RouteRequest:
    """A text completion of `prompt`."""
    return RouteRequest(
        alias,
        "generate",
        prompt_tokens=estimate_tokens(len(prompt)),
        prefix=fingerprint(prompt[:PREFIX_CHARS]),
        session=session,
        prefix_chain=chain_of(prompt[:MAX_CHARS]).hashes,
    )


def for_chat(
    alias: str, messages: Sequence[tuple[str, str]], session: str | None = None
) -> RouteRequest:
    """A chat of (role, content) messages, in order.

    The gateway does not render the chat template (only the worker knows it), so the
    prefix covers the first PREFIX_CHARS characters of the messages joined with their roles
    (common.prefix.chat_text): two chats that open with the same system prompt and turns
    share it, as their rendered prompts share a prefix. The prefix chain covers the same
    text, up to MAX_CHARS.
    """
    chars = sum(len(content) for _, content in messages)
    tokens = estimate_tokens(chars) + MESSAGE_OVERHEAD_TOKENS * len(messages)
    opening = chat_text(messages)
    return RouteRequest(
        alias,
        "generate",
        prompt_tokens=tokens,
        prefix=fingerprint(opening[:PREFIX_CHARS]),
        session=session,
        prefix_chain=chain_of(opening).hashes,
    )


def for_embed(alias: str, inputs: Sequence[str], session: str | None = None) -> RouteRequest:
    """An embedding of `inputs`. No prefix: an embedding reuses no cached prompt."""
    tokens = sum(estimate_tokens(len(text)) for text in inputs)
    return RouteRequest(alias, "embed", prompt_tokens=tokens, session=session)


def estimate_tokens(chars: int) -> int:
    """About how many tokens `chars` characters of text make (CHARS_PER_TOKEN each)."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def fingerprint(text: str) -> str:
    """A stable 16-hex-digit digest of `text`, the same in every process and on every run
    (Python's hash() is salted per process, and gateways must agree); "" for no text."""
    if not text:
        return ""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def session_key(candidates: Iterable[str | None]) -> str | None:
    """The first non-empty key among `candidates` (most specific first: an explicit session
    header before the OpenAI `user` field), digested when longer than MAX_SESSION_CHARS."""
    key = next((c for c in candidates if c), None)
    if key is None or len(key) <= MAX_SESSION_CHARS:
        return key
    return "blake2b:" + fingerprint(key)
