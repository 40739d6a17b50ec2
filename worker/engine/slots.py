"""Which sequence slot of a model's context a new request takes.

Each slot is one llama.cpp sequence with its own share of the KV cache. A finished request
leaves its tokens in its slot, so the next request that starts the same way (the next turn
of a chat, a shared system prompt) reuses them instead of recomputing. Pure logic: the
engine owns the slots, this module only chooses among them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass(frozen=True)
class SlotView:
    """What the choice needs to know of an idle slot."""

    seq_id: int
    cached: Sequence[int]  # tokens whose keys and values the slot holds, in order
    last_used: int  # engine step at which it last finished a request; 0 = never used


def choose_slot(
    idle: Sequence[SlotView], prompt: Sequence[int], busy: Collection[int] = ()
) -> tuple[int, int]:
    """The idle slot for `prompt` and how many of its cached tokens the prompt can keep.

    A slot that shares a substantial prefix with the prompt (at least half of the shorter
    of the two: the next turn of its conversation, a repeat, a long shared system prompt)
    wins, the longest prefix first. Otherwise a slot next to the `busy` ones (sequence ids
    decoding now), one that closes a gap between two first: llama.cpp decodes sequences of
    per-sequence KV streams in one micro-batch only when their ids are consecutive, so
    scattered slots cost a pass over the weights (and, for a split model, a round trip to
    every helper) per run of ids at every step. Then the least recently used slot, so that
    a new request sharing only a chat template's first tokens does not overwrite a
    conversation that may still continue. Either way the chosen slot's shared prefix is kept.
    """
    if not idle:
        raise ValueError("no idle slot to choose from")

    def rank(slot: SlotView) -> tuple[int, int, int, int]:
        shared = common_prefix(slot.cached, prompt)
        substantial = shared and 2 * shared >= min(len(slot.cached), len(prompt))
        neighbours = (slot.seq_id - 1 in busy) + (slot.seq_id + 1 in busy)
        return (shared if substantial else 0), neighbours, -slot.last_used, -slot.seq_id

    best = max(idle, key=rank)
    return best.seq_id, common_prefix(best.cached, prompt)
