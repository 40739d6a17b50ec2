"""What a routing policy knows about one request: a RouteRequest, built by the front doors.

Both gateways (OpenAI HTTP and gRPC Inference) build one per request from plain text and
hand it through the Router to the policy, in the spirit of Ray Serve's
`choose_replicas(candidates, request)`: a policy that wants to route on the prompt (cache
affinity) or on the caller (session stickiness) reads it here, and no signature changes on
the way. Everything is cheap and bounded: no tokenizer runs on the gateway, and at most
PREFIX_CHARS characters are hashed whatever the prompt's length.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

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
# Field separators for the chat prefix: control characters that real messages rarely hold,
# so ("ab", "c") and ("a", "bc") do not fingerprint alike.
_ROLE_END = "\x1f"
_MESSAGE_END = "\x1e"


@dataclass(frozen=True)
class RouteRequest:
    """One request as routing sees it.

    `alias` and `task` decide which replicas may serve it; the rest is for policies that
    want it (the built-in ones read only `alias`): `prompt_tokens` is an estimate from the
    text length, `prefix` a stable fingerprint of the prompt's opening ("" when there is
    none, as for embeddings), `session` the caller's session key or None, `node` the node
    the caller pinned it to or None.
    """

    alias: str
    task: Task = "generate"
    prompt_tokens: int = 0
    prefix: str = ""
    session: str | None = None
    # The node the caller pinned the request to (the x-llamaherd-node header, for
    # measuring one node: llamaherd capacity); None: any replica, as routing chooses.
    node: str | None = None


def for_prompt(alias: str, prompt: str, session: str | None = None) -> RouteRequest:
    """A text completion of `prompt`."""
    return RouteRequest(
        alias,
        "generate",
        prompt_tokens=estimate_tokens(len(prompt)),
        prefix=fingerprint(prompt[:PREFIX_CHARS]),
        session=session,
    )


def for_chat(
    alias: str, messages: Sequence[tuple[str, str]], session: str | None = None
) -> RouteRequest:
    """A chat of (role, content) messages, in order.

    The gateway does not render the chat template (only the worker knows it), so the
    prefix covers the first PREFIX_CHARS characters of the messages joined with their roles:
    two chats that open with the same system prompt and turns share it, as their rendered
    prompts share a prefix.
    """
    chars = sum(len(content) for _, content in messages)
    tokens = estimate_tokens(chars) + MESSAGE_OVERHEAD_TOKENS * len(messages)
    return RouteRequest(
        alias,
        "generate",
        prompt_tokens=tokens,
        prefix=fingerprint(_chat_opening(messages)),
        session=session,
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


def _chat_opening(messages: Sequence[tuple[str, str]]) -> str:
    """The first PREFIX_CHARS characters of the messages in a canonical form, built without
    joining more than that (a long conversation costs no more than a short one)."""
    parts: list[str] = []
    left = PREFIX_CHARS
    for role, content in messages:
        # Slice the content before concatenating, so a huge message is never copied.
        part = f"{role}{_ROLE_END}{content[:left]}{_MESSAGE_END}"[:left]
        parts.append(part)
        left -= len(part)
        if left <= 0:
            break
    return "".join(parts)
