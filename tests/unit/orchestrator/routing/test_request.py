"""RouteRequest builders: the token estimate, the prefix fingerprint and the session key."""

from __future__ import annotations

import pytest

from orchestrator.routing.request import (
    CHARS_PER_TOKEN,
    MAX_SESSION_CHARS,
    MESSAGE_OVERHEAD_TOKENS,
    PREFIX_CHARS,
    RouteRequest,
    estimate_tokens,
    fingerprint,
    for_chat,
    for_embed,
    for_prompt,
    session_key,
)

SYSTEM = ("system", "You are a terse assistant for a fleet of Jetson boards. " * 12)


@pytest.mark.parametrize(("chars", "tokens"), [(0, 0), (1, 1), (4, 1), (5, 2), (400, 100)])
def test_estimate_rounds_characters_up_to_tokens(chars: int, tokens: int) -> None:
    assert CHARS_PER_TOKEN == 4
    assert estimate_tokens(chars) == tokens


# ---- fingerprint ------------------------------------------------------------------------


def test_fingerprint_is_the_same_in_every_process() -> None:
    # A literal, so a salted hash (Python's hash()) or a changed algorithm fails here:
    # gateways in different processes must give one prompt one fingerprint.
    assert fingerprint("Once upon a time") == "e4b6f49f92512aa4"


def test_fingerprint_of_nothing_is_empty() -> None:
    assert fingerprint("") == ""


def test_fingerprint_takes_text_that_utf8_cannot_encode() -> None:
    # A lone surrogate can arrive through JSON ("\\ud800"); it must not fail the request.
    assert len(fingerprint("\ud800 dangling")) == 16


# ---- prompts ------------------------------------------------------------------------------


def test_prompt_request_estimates_tokens_and_fingerprints_the_opening() -> None:
    request = for_prompt("m", "x" * 10, session="s")
    assert request == RouteRequest("m", "generate", 3, fingerprint("x" * 10), "s")


def test_prompts_sharing_their_opening_share_a_prefix() -> None:
    opening = "a" * PREFIX_CHARS
    first, second = for_prompt("m", opening + " one"), for_prompt("m", opening + " two")
    assert first.prefix == second.prefix
    assert first.prefix == fingerprint(opening)


def test_prompts_differing_inside_the_opening_differ() -> None:
    assert for_prompt("m", "Hello there").prefix != for_prompt("m", "Hello world").prefix


# ---- chats --------------------------------------------------------------------------------


def test_chat_estimate_counts_every_message_with_its_template_overhead() -> None:
    messages = [("system", "x" * 7), ("user", "y" * 9)]
    expected = estimate_tokens(16) + 2 * MESSAGE_OVERHEAD_TOKENS
    assert for_chat("m", messages).prompt_tokens == expected == 12


def test_chats_opening_alike_share_a_prefix_whatever_follows() -> None:
    first = for_chat("m", [SYSTEM, ("user", "Which board runs hottest?")])
    second = for_chat("m", [SYSTEM, ("user", "List the boards.")])
    assert len(SYSTEM[1]) > PREFIX_CHARS  # the system prompt alone fills the opening
    assert first.prefix == second.prefix
    assert first.prefix != ""


def test_chat_prefix_tells_message_boundaries_and_roles_apart() -> None:
    split_one = for_chat("m", [("user", "ab"), ("user", "c")])
    split_two = for_chat("m", [("user", "a"), ("user", "bc")])
    other_role = for_chat("m", [("system", "ab"), ("user", "c")])
    assert len({split_one.prefix, split_two.prefix, other_role.prefix}) == 3


def test_chat_prefix_is_the_first_prefix_chars_of_the_canonical_form() -> None:
    # A huge first message and the same message cut just past the window fingerprint alike:
    # only the opening counts, however long the conversation.
    huge = for_chat("m", [("user", "z" * 1_000_000), ("assistant", "ok")])
    cut = for_chat("m", [("user", "z" * (PREFIX_CHARS + 1))])
    assert huge.prefix == cut.prefix
    assert huge.prompt_tokens == estimate_tokens(1_000_002) + 2 * MESSAGE_OVERHEAD_TOKENS


def test_short_chats_differ_by_their_later_messages() -> None:
    first = for_chat("m", [("user", "Hi"), ("assistant", "Hello"), ("user", "one")])
    second = for_chat("m", [("user", "Hi"), ("assistant", "Hello"), ("user", "two")])
    assert first.prefix != second.prefix


# ---- embeddings ---------------------------------------------------------------------------


def test_embed_request_has_the_embed_task_summed_tokens_and_no_prefix() -> None:
    request = for_embed("e", ["abcd", "abcde"], session="s")
    assert request == RouteRequest("e", "embed", prompt_tokens=1 + 2, prefix="", session="s")


# ---- session key --------------------------------------------------------------------------


def test_session_key_takes_the_first_non_empty_candidate() -> None:
    assert session_key(["header", "user"]) == "header"
    assert session_key([None, "user"]) == "user"
    assert session_key(["", "user"]) == "user"
    assert session_key([None, None]) is None
    assert session_key([]) is None


def test_long_session_keys_are_digested_to_a_bounded_stable_key() -> None:
    exact = "k" * MAX_SESSION_CHARS
    assert session_key([exact]) == exact
    long_a, long_b = "a" * 10_000, "a" * 9_999 + "b"
    key_a = session_key([long_a])
    assert key_a is not None
    assert len(key_a) <= MAX_SESSION_CHARS
    assert key_a == session_key([long_a])
    assert key_a != session_key([long_b])
