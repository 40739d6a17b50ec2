"""Prefix chains: the canonical text, the chained block hashes at sparse depths, the bound
on the work, and matching a request's chain against a node's hashes."""

from __future__ import annotations

import hashlib

import pytest

from common.prefix import (
    BLOCK_CHARS,
    DEPTHS,
    MAX_CHARS,
    PrefixChain,
    chain_of,
    chat_chain,
    chat_text,
    matched_chars,
    reply_text,
)

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(800))
SYSTEM = ("system", "You are a terse assistant for a fleet of Jetson boards. " * 40)


def _sha(text: str) -> int:
    digest = hashlib.sha256(b"llamaherd/prefix/1\x00" + text.encode()).digest()
    return int.from_bytes(digest[:8], "little")


def test_each_hash_covers_the_text_up_to_its_depth() -> None:
    chain = chain_of(TEXT)
    assert len(TEXT) > MAX_CHARS
    assert len(chain.hashes) == len(DEPTHS)
    for depth, value in zip(DEPTHS, chain.hashes, strict=True):
        assert value == _sha(TEXT[: depth * BLOCK_CHARS])


def test_the_chain_is_the_same_in_every_process() -> None:
    # A constant: gateways and workers in different processes must agree on every hash.
    assert chain_of("a" * BLOCK_CHARS).hashes == (2518870309561151040,)


@pytest.mark.parametrize(
    ("chars", "hashes"),
    [(0, 0), (BLOCK_CHARS - 1, 0), (BLOCK_CHARS, 1), (5 * BLOCK_CHARS, 4), (47 * BLOCK_CHARS, 10)],
)
def test_only_full_blocks_at_the_kept_depths_are_hashed(chars: int, hashes: int) -> None:
    assert len(chain_of(TEXT[:chars]).hashes) == hashes


def test_text_past_the_cap_changes_nothing() -> None:
    assert chain_of(TEXT[:MAX_CHARS]) == chain_of(TEXT)
    assert chain_of(TEXT).chars == MAX_CHARS
    full = chain_of(TEXT)
    assert full.extend("anything").hashes == full.hashes


@pytest.mark.parametrize("cut", [0, 1, BLOCK_CHARS - 1, BLOCK_CHARS, 1000, 5000, MAX_CHARS - 1])
def test_extending_a_chain_equals_hashing_the_whole_text(cut: int) -> None:
    whole = chain_of(TEXT)
    assert chain_of(TEXT[:cut]).extend(TEXT[cut:]) == whole
    # in several steps too, and the chain extended is left as it was
    start = chain_of(TEXT[:cut])
    before = start.hashes
    stepped = start.extend(TEXT[cut : cut + 300]).extend(TEXT[cut + 300 :])
    assert stepped == whole
    assert start.hashes == before


def test_a_different_opening_shares_no_hash_and_a_shared_one_shares_its_depths() -> None:
    first = chain_of("x" * 700 + "first")
    second = chain_of("x" * 700 + "second" * 100)
    other = chain_of("y" * 700)
    assert first.hashes[:2] == second.hashes[:2]  # 512 shared characters: depths 1 and 2
    assert not set(other.hashes) & set(first.hashes)


def test_chat_text_is_role_separated_and_cut_without_copying_more() -> None:
    assert chat_text([("user", "ab"), ("user", "c")]) != chat_text([("user", "a"), ("user", "bc")])
    assert chat_text([("system", "ab")]) != chat_text([("user", "ab")])
    huge = chat_text([("user", "z" * 10_000_000), ("assistant", "ok")], limit=100)
    assert huge == ("user\x1f" + "z" * 10_000_000)[:100]


def test_the_next_turn_of_a_chat_matches_its_reply() -> None:
    # What a worker holds after answering: the messages and the reply as an assistant turn.
    history = [SYSTEM, ("user", "Which board runs hottest?")]
    reply = "The Orin Nano, under sustained load. " * 20
    held = chat_chain(history).extend(reply_text(reply))
    # The client sends the reply back as the next turn's history.
    follow_up = chat_chain([*history, ("assistant", reply), ("user", "And the coolest?")])
    shared = len(chat_text([*history, ("assistant", reply)]))
    chars = matched_chars(follow_up.hashes, held.hashes)
    assert chars == max(d * BLOCK_CHARS for d in DEPTHS if d * BLOCK_CHARS <= shared)
    # A different reply in the history matches only as far as the messages before it.
    other = chat_chain([*history, ("assistant", "No idea."), ("user", "And the coolest?")])
    opening = len(chat_text(history))
    deepest_before = max(d * BLOCK_CHARS for d in DEPTHS if d * BLOCK_CHARS <= opening)
    assert matched_chars(other.hashes, held.hashes) == deepest_before


def test_matching_takes_the_deepest_hash_held_and_nothing_for_none() -> None:
    chain = chain_of(TEXT).hashes
    assert matched_chars(chain, ()) == 0
    assert matched_chars(chain, {1, 2, 3}) == 0
    assert matched_chars(chain, {chain[0], chain[5], 7}) == DEPTHS[5] * BLOCK_CHARS
    assert matched_chars(chain, (chain[0], chain[5], 7)) == DEPTHS[5] * BLOCK_CHARS
    assert matched_chars(chain, frozenset(chain)) == MAX_CHARS
    assert matched_chars((), chain) == 0


def test_text_utf8_cannot_encode_still_hashes() -> None:
    assert len(chain_of("\ud800" * BLOCK_CHARS).hashes) == 1


def test_an_empty_chain_extends_from_nothing() -> None:
    assert PrefixChain().extend("") == PrefixChain()
    assert PrefixChain().depth_chars == 0
    assert chain_of(TEXT).depth_chars == MAX_CHARS
