"""Which slot a request takes: the one its prompt continues, else one next to the busy
slots, else the least recently used."""

from __future__ import annotations

import pytest

from worker.engine.slots import SlotView, choose_slot, common_prefix


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [([], [1], 0), ([1, 2, 3], [1, 2, 3], 3), ([1, 2, 3], [1, 2], 2), ([1, 2], [3, 2], 0)],
)
def test_common_prefix(a, b, n):
    assert common_prefix(a, b) == n == common_prefix(b, a)


def test_the_next_turn_of_a_conversation_goes_back_to_its_slot():
    conversation = [1, 10, 11, 12, 13, 14, 15]
    idle = [SlotView(0, [1, 20, 21], 1), SlotView(1, conversation, 5), SlotView(2, [], 0)]
    assert choose_slot(idle, [*conversation, 16, 17]) == (1, len(conversation))


def test_an_exact_repeat_finds_its_prompt_even_behind_a_long_completion():
    prompt = [1, 5, 6, 7]
    idle = [SlotView(0, [], 0), SlotView(1, [*prompt, *range(100, 160)], 3)]
    assert choose_slot(idle, prompt) == (1, 4)


def test_a_shared_system_prompt_is_reused():
    system = list(range(1, 41))
    idle = [SlotView(0, [*system, 90, 91, 92], 2), SlotView(1, [], 0)]
    assert choose_slot(idle, [*system, 70, 71]) == (0, 40)


def test_sharing_only_a_template_header_does_not_take_a_busy_conversations_slot():
    header = [1, 2, 3]
    idle = [SlotView(0, [*header, *range(10, 60)], 7), SlotView(1, [9, 9], 2)]
    # Three shared tokens of a 30-token prompt: not worth overwriting slot 0's conversation.
    seq_id, keep = choose_slot(idle, [*header, *range(200, 227)])
    assert (seq_id, keep) == (1, 0)


def test_without_a_match_the_least_recently_used_slot_is_taken():
    idle = [SlotView(0, [4], 9), SlotView(1, [5], 2), SlotView(2, [6], 5)]
    assert choose_slot(idle, [7, 8]) == (1, 0)


def test_never_used_slots_go_first_in_order():
    idle = [SlotView(2, [], 0), SlotView(0, [], 0), SlotView(1, [3], 4)]
    assert choose_slot(idle, [7]) == (0, 0)


def test_no_idle_slot_is_a_programming_error():
    with pytest.raises(ValueError, match="no idle slot"):
        choose_slot([], [1])


def test_a_new_request_takes_a_slot_next_to_the_busy_ones():
    # Slot 0 is the least recently used, but 4 keeps the decoding ids consecutive (2-4):
    # llama.cpp decodes them in one micro-batch only then.
    idle = [SlotView(0, [4], 1), SlotView(4, [5], 6), SlotView(6, [6], 3)]
    assert choose_slot(idle, [7, 8], busy={2, 3}) == (4, 0)


def test_a_slot_that_closes_a_gap_between_busy_ones_goes_first():
    idle = [SlotView(1, [4], 9), SlotView(4, [5], 1), SlotView(6, [6], 2)]
    assert choose_slot(idle, [7, 8], busy={2, 3, 5}) == (4, 0)


def test_a_continued_conversation_still_goes_back_to_its_slot_when_others_are_busy():
    conversation = [1, 10, 11, 12, 13]
    idle = [SlotView(1, [9], 1), SlotView(6, conversation, 4)]
    assert choose_slot(idle, [*conversation, 14], busy={0, 2}) == (6, len(conversation))
