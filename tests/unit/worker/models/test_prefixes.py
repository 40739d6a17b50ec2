"""The chains a worker reports for what a request leaves in its slot: the prompt's, then
the prompt's with its reply, in the canonical form a gateway computes for the next turn."""

from __future__ import annotations

from common.prefix import (
    BLOCK_CHARS,
    MAX_CHARS,
    chain_of,
    chat_chain,
    matched_chars,
)
from worker.engine.generation import (
    ChatMessage,
    Finished,
    FinishReason,
    TextDelta,
    Timings,
    ToolCall,
    Usage,
)
from worker.models.chat import with_assistant_prefix
from worker.models.prefixes import Replies, chat_opening, prompt_opening

SYSTEM = "You answer questions about a fleet of Jetson boards, briefly. " * 20
TIMINGS = Timings(0, 0, 0, 0, 0, 0, 0)


def end(text: str = "", index: int = 0) -> Finished:
    return Finished(text, (), FinishReason.STOP, Usage(1, 1), TIMINGS, index=index)


def ended(replies: Replies, event: Finished) -> tuple[int, tuple[int, ...]]:
    """The (index, chain) a sequence's last event gives."""
    result = replies.feed(event)
    assert result is not None
    return result


def delta(text: str, index: int = 0) -> TextDelta:
    return TextDelta(text, (), index=index)


def test_a_chats_reply_chain_is_what_the_gateway_computes_for_its_next_turn() -> None:
    messages = [ChatMessage("system", SYSTEM), ChatMessage("user", "Which runs hottest?")]
    opening, start = chat_opening(messages)
    assert start == "" and opening == chat_chain(
        [("system", SYSTEM), ("user", "Which runs hottest?")]
    )
    replies = Replies(opening, chat=True)
    reply = "The Orin Nano. " * 30
    assert replies.feed(delta(reply[:100])) is None
    index, chain = ended(replies, end(reply[100:]))
    assert index == 0
    follow_up = chat_chain(
        [("system", SYSTEM), ("user", "Which runs hottest?"), ("assistant", reply), ("user", "?")]
    )
    assert chain == follow_up.hashes[: len(chain)]
    assert len(chain) > len(opening.hashes)  # the reply took it deeper


def test_a_reply_continuing_an_assistant_prefix_counts_the_prefix() -> None:
    messages = with_assistant_prefix([ChatMessage("user", SYSTEM)], "Well, ")
    opening, start = chat_opening(messages)
    assert start == "Well, " and opening == chat_chain([("user", SYSTEM)])
    _, chain = ended(Replies(opening, chat=True, start=start), end("x" * 600))
    assert chain == chat_chain([("user", SYSTEM), ("assistant", "Well, " + "x" * 600)]).hashes


def test_tool_calls_are_not_in_the_canonical_text() -> None:
    call = ToolCall("c1", "weather", "{}")
    with_call = [ChatMessage("user", SYSTEM), ChatMessage("assistant", "", tool_calls=(call,))]
    assert chat_opening(with_call)[0] == chat_chain([("user", SYSTEM), ("assistant", "")])


def test_a_completions_reply_is_plain_text_after_the_prompt() -> None:
    prompt = "Once upon a time " * 20
    replies = Replies(prompt_opening(prompt), chat=False)
    replies.feed(delta("there was", index=1))
    _, chain = ended(replies, end(" a board", index=1))
    assert chain == chain_of(prompt + "there was a board").hashes


def test_each_sequence_has_its_own_reply() -> None:
    replies = Replies(prompt_opening("p" * BLOCK_CHARS), chat=False)
    replies.feed(delta("a" * 300, index=0))
    replies.feed(delta("b" * 300, index=1))
    first = replies.feed(end(index=1))
    second = replies.feed(end(index=0))
    assert first == (1, chain_of("p" * BLOCK_CHARS + "b" * 300).hashes)
    assert second == (0, chain_of("p" * BLOCK_CHARS + "a" * 300).hashes)


def test_a_long_reply_is_kept_only_as_far_as_the_chain_reaches() -> None:
    prompt = "q" * (MAX_CHARS - 10)
    replies = Replies(prompt_opening(prompt), chat=False)
    for _ in range(1000):
        replies.feed(delta("r" * 100))
    assert sum(len(t) for t in replies._texts[0]) < 200  # bounded, not 100,000 characters
    _, chain = ended(replies, end())
    assert chain == chain_of(prompt + "r" * 10).hashes


def test_a_prompt_of_token_ids_reports_no_chain() -> None:
    replies = Replies(prompt_opening([1, 2, 3]), chat=False)
    assert replies.feed(end("x" * 1000)) is None


def test_a_short_chat_reaches_a_block_with_its_reply() -> None:
    opening, _ = chat_opening([ChatMessage("user", "hi")])
    assert opening.hashes == ()
    _, chain = ended(Replies(opening, chat=True), end("y" * 300))
    next_turn = chat_chain([("user", "hi"), ("assistant", "y" * 300), ("user", "more")])
    assert matched_chars(next_turn.hashes, chain) == BLOCK_CHARS
