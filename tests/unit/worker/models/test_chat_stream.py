"""The chat output stage: reasoning and tool calls separated from streamed text, whatever
the chunk boundaries (inside markers too), with the same result as parsing the whole reply."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from common.model_settings import ReasoningFormat
from worker.engine.generation import (
    Finished,
    FinishReason,
    GenerationEvent,
    TextDelta,
    Timings,
    ToolCallDelta,
    Usage,
)
from worker.models.chat_stream import CallStream, OutputPlan, new_call_id, shape_output
from worker.models.reasoning import ThinkSplitter, prompt_opens_think
from worker.models.tool_calls import ToolFormat, parse_calls

NAMES = frozenset({"get_weather", "get_time"})
CALL = '{"name": "get_weather", "arguments": {"location": "Paris"}}'
ARGS = '{"location": "Paris"}'

REPLIES = {
    ToolFormat.HERMES: f"Let me check. <tool_call>\n{CALL}\n</tool_call> and <tool_c no",
    ToolFormat.LLAMA3: '{"name": "get_weather", "parameters": {"location": "Paris"}}',
    ToolFormat.MISTRAL: f"[TOOL_CALLS][{CALL}]",
    ToolFormat.GENERIC: f'Sure. {{"name": "x"}} then ```json\n{{"tool_calls": [{CALL}]}}\n```\nok',
}


def _events(
    text: str, cuts: Sequence[int], reason: FinishReason = FinishReason.STOP
) -> list[GenerationEvent]:
    bounds = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    events: list[GenerationEvent] = [TextDelta(p, (i,)) for i, p in enumerate(pieces[:-1])]
    usage, timings = Usage(3, len(pieces)), Timings(1.0, 1.0, 1.0, 1.0, 1.0, 10.0, 10.0)
    events.append(Finished(pieces[-1], (len(pieces),), reason, usage, timings))
    return events


async def _source(events: list[GenerationEvent]) -> AsyncIterator[GenerationEvent]:
    for event in events:
        yield event


def _run(events: list[GenerationEvent], plan: OutputPlan, seed: int = 0) -> list[GenerationEvent]:
    return _run_all([events], plan, seed)[0]


def _run_all(
    streams: list[list[GenerationEvent]], plan: OutputPlan, seed: int = 0
) -> list[list[GenerationEvent]]:
    async def collect(events: list[GenerationEvent]) -> list[GenerationEvent]:
        return [e async for e in shape_output(_source(events), plan, random.Random(seed))]

    async def all_of_them() -> list[list[GenerationEvent]]:
        return [await collect(events) for events in streams]

    return asyncio.run(all_of_them())


def _joined(events: list[GenerationEvent]) -> tuple[str, str, tuple[ToolCallDelta, ...]]:
    text = "".join(e.text for e in events)
    reasoning = "".join(e.reasoning for e in events)
    calls = tuple(c for e in events for c in e.tool_calls)
    return text, reasoning, calls


@pytest.mark.parametrize("fmt", list(ToolFormat))
def test_every_two_cut_split_gives_the_whole_reply_parse(fmt):
    reply = REPLIES[fmt]
    whole = parse_calls(fmt, reply, NAMES)
    assert len(whole.calls) == 1
    plan = OutputPlan(fmt, NAMES, ReasoningFormat.NONE)
    cuts = [(a, b) for a in range(len(reply) + 1) for b in range(a, len(reply) + 1, 3)]
    outs = _run_all([_events(reply, cut) for cut in cuts], plan)
    for cut, out in zip(cuts, outs, strict=True):
        text, _, calls = _joined(out)
        assert text == whole.text, cut
        assert [(c.name, c.arguments) for c in calls] == [("get_weather", ARGS)]
        assert out[-1].finish_reason is FinishReason.TOOL_CALLS
        assert sum(len(e.token_ids) for e in out) == 3  # every token still reported


def test_one_character_at_a_time_streams_text_before_the_call_at_once():
    reply = REPLIES[ToolFormat.HERMES]
    out = _run(_events(reply, range(1, len(reply))), OutputPlan(ToolFormat.HERMES, NAMES))
    # text before the marker passed on as it came, not held to the end
    assert "".join(e.text for e in out[: len("Let me check. ")]) == "Let me check. "
    (delta,) = [c for e in out for c in e.tool_calls]
    assert delta == ToolCallDelta(0, new_call_id(random.Random(0)), "get_weather", ARGS)
    assert delta.id.startswith("call_") and len(delta.id) == 5 + 24


def test_several_calls_get_their_own_index_and_id():
    reply = f"<tool_call>{CALL}</tool_call><tool_call>{CALL}</tool_call>"
    out = _run(_events(reply, [7, 30, 60]), OutputPlan(ToolFormat.HERMES, NAMES))
    calls = [c for e in out for c in e.tool_calls]
    assert [c.index for c in calls] == [0, 1]
    assert calls[0].id != calls[1].id


def test_a_reply_cut_by_length_keeps_its_finish_reason():
    reply = f"<tool_call>{CALL}</tool_call>"
    out = _run(_events(reply, [5], FinishReason.LENGTH), OutputPlan(ToolFormat.HERMES, NAMES))
    assert out[-1].finish_reason is FinishReason.LENGTH


def test_no_call_means_stop_and_all_text():
    reply = "It is sunny <tool_call> maybe"
    out = _run(_events(reply, [12, 14]), OutputPlan(ToolFormat.HERMES, NAMES))
    assert _joined(out) == (reply, "", ())
    assert out[-1].finish_reason is FinishReason.STOP


# ---- reasoning ------------------------------------------------------------------------------
THOUGHT = "<think>\nThe user wants weather.\n</think>\n\n"


@pytest.mark.parametrize("cut", range(len(THOUGHT) + 8))
def test_reasoning_is_split_off_at_any_boundary(cut):
    reply = THOUGHT + "It is sunny."
    plan = OutputPlan(reasoning=ReasoningFormat.AUTO)
    assert _joined(_run(_events(reply, [cut]), plan)) == (
        "It is sunny.", "\nThe user wants weather.\n", ()
    )  # fmt: skip


def test_reasoning_then_a_call():
    reply = THOUGHT + f"<tool_call>{CALL}</tool_call>"
    plan = OutputPlan(ToolFormat.HERMES, NAMES, ReasoningFormat.AUTO)
    for cut in range(len(reply)):
        text, reasoning, calls = _joined(_run(_events(reply, [cut]), plan))
        assert (text, reasoning, len(calls)) == ("", "\nThe user wants weather.\n", 1)


def test_a_template_that_opened_the_think_block():
    assert prompt_opens_think("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_think("<think>x</think><|im_start|>assistant\n")
    assert not prompt_opens_think("user: what does <think> do?<|im_start|>assistant\n")
    plan = OutputPlan(reasoning=ReasoningFormat.AUTO, think_open=True)
    assert _joined(_run(_events("plan</think>Answer", [2]), plan))[:2] == ("Answer", "plan")


def test_reasoning_none_and_a_late_think_leave_the_text():
    reply = THOUGHT + "x"
    assert _joined(_run(_events(reply, [3]), OutputPlan(ToolFormat.GENERIC, NAMES)))[0] == reply
    late = "Answer <think>not reasoning</think>"
    plan = OutputPlan(reasoning=ReasoningFormat.AUTO)
    assert _joined(_run(_events(late, [9]), plan)) == (late, "", ())


def test_an_unclosed_think_is_all_reasoning():
    splitter = ThinkSplitter()
    assert splitter.feed("<think>still going</thi") == ("", "still going")
    assert splitter.flush() == ("", "</thi")


def test_the_stage_costs_little_on_a_plain_chat():
    """A plain chat (reasoning auto, no tools) against no stage at all, 20k deltas each."""
    events = _events("word " * 20_000, range(5, 100_000, 5))
    plain = OutputPlan()
    assert plain.passthrough
    t0 = time.perf_counter()
    _run(events, plain)
    t1 = time.perf_counter()
    out = _run(events, OutputPlan(reasoning=ReasoningFormat.AUTO))
    t2 = time.perf_counter()
    assert out[5] is events[5]  # once the answer began, events pass on unchanged
    print(f"20k deltas: no stage {t1 - t0:.3f} s, reasoning auto {t2 - t1:.3f} s")
    assert (t2 - t1) < 3 * (t1 - t0) + 0.05


def test_bare_json_after_text_is_text_and_is_not_held_back():
    reply = 'Like this: {"name": "get_weather", "parameters": {}} ok'
    out = _run(_events(reply, range(1, len(reply))), OutputPlan(ToolFormat.LLAMA3, NAMES))
    assert _joined(out) == (reply, "", ())
    assert all(e.text == reply[i] for i, e in enumerate(out))  # passed on as it came


@pytest.mark.parametrize("fmt", [ToolFormat.HERMES, ToolFormat.GENERIC])
def test_a_long_call_costs_linear_time(fmt):
    padding = "x" * 200_000
    call = f'{{"name": "get_weather", "arguments": {{"location": "{padding}"}}}}'
    reply = f"<tool_call>{call}</tool_call>" if fmt is ToolFormat.HERMES else call
    stream = CallStream(fmt, NAMES, random.Random(0))
    started = time.perf_counter()
    fed = [stream.feed(char) for char in reply]
    text, calls = stream.flush()
    assert time.perf_counter() - started < 3.0  # re-joining per piece would take minutes
    assert "".join(t for t, _ in fed) + text == ""
    assert [len(c.arguments) for _, d in [*fed, (text, calls)] for c in d] == [len(padding) + 16]
