"""A real worker reports the prefix hashes of what its slot holds after a request, and they
are the ones a gateway computes (common.prefix) for the next turn of that conversation."""

from __future__ import annotations

from llamaherd.v1 import worker_pb2 as pb
from support.models import GEMMA
from support.rpc import TIMEOUT, chat, generate

from common.prefix import BLOCK_CHARS, DEPTHS, chain_of, chat_chain, chat_text
from common.prefix import matched_chars as matched

# ~600 characters: two blocks, short enough to prefill in moments on one thread.
SYSTEM = "You are the duty engineer of a fleet of Jetson boards; answer in one line. " * 8


def _hashes(stub) -> tuple[int, ...]:
    models = stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
    return tuple(next(m for m in models if m.alias == GEMMA).prefix_hashes)


def _deepest(chars: int) -> int:
    """The characters the deepest kept depth within `chars` covers."""
    return max(d * BLOCK_CHARS for d in DEPTHS if d * BLOCK_CHARS <= chars)


def test_a_chats_slot_reports_the_chain_its_next_turn_matches(stub):
    history = [("system", SYSTEM), ("user", "Which board runs hottest?")]
    reply = chat(stub, GEMMA, history, max_tokens=12, temperature=0.0).text
    held = _hashes(stub)
    assert 0 < len(held) <= 64
    next_turn = [*history, ("assistant", reply), ("user", "And the coolest?")]
    chars = matched(chat_chain(next_turn).hashes, held)
    # As deep as the history and the reply go: the worker hashed the same text.
    assert chars == _deepest(len(chat_text([*history, ("assistant", reply)])))
    # A conversation with another system prompt matches nothing.
    stranger = chat_chain([("system", SYSTEM.upper()), ("user", "Which board runs hottest?")])
    assert matched(stranger.hashes, held) == 0


def test_a_completions_slot_reports_its_prompt_and_output(stub):
    prompt = "Log of node jetson-07, one line per hour: temperature nominal. " * 5
    output = generate(stub, GEMMA, prompt, max_tokens=8, temperature=0.0).text
    held = _hashes(stub)
    continued = chain_of(prompt + output + " and more").hashes
    assert matched(continued, held) == _deepest(len(prompt + output))
