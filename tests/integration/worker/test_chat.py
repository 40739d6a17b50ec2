"""Chat: messages rendered with the model's chat template, streamed like Generate."""

from __future__ import annotations

from llamaherd.v1 import generation_pb2 as gen_pb
from support.models import GEMMA
from support.rpc import chat, generate

# Gemma's turn format, as llama.cpp's built-in "gemma" template writes it.
GEMMA_TURNS = "<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"


def test_chat_renders_the_gemma_template(stub):
    question = "What is the capital of France?"
    rendered = GEMMA_TURNS.format(user=question)
    expected_tokens = stub.Tokenize(gen_pb.TokenizeRequest(model=GEMMA, text=rendered)).tokens

    reply = chat(stub, GEMMA, [("user", question)], temperature=0, max_tokens=12)
    assert reply.final.usage.prompt_tokens == len(expected_tokens)
    # Chat is Generate on the rendered prompt: same greedy tokens.
    raw = generate(stub, GEMMA, rendered, temperature=0, max_tokens=12)
    assert reply.token_ids == raw.token_ids
    assert reply.text == raw.text


def test_chat_with_system_and_history(stub):
    messages = [
        ("system", "Answer briefly."),
        ("user", "Name a colour."),
        ("assistant", "Blue."),
        ("user", "Another one?"),
    ]
    reply = chat(stub, GEMMA, messages, temperature=0, max_tokens=8)
    assert reply.final.finish_reason in {gen_pb.FINISH_REASON_STOP, gen_pb.FINISH_REASON_LENGTH}
    assert reply.final.usage.prompt_tokens > 20


def test_next_turn_reuses_the_cached_conversation(stub):
    history = [("user", "Tell me a story about a fox.")]
    first = chat(stub, GEMMA, history, temperature=0, max_tokens=10)
    history += [("assistant", first.text), ("user", "And then?")]
    second = chat(stub, GEMMA, history, temperature=0, max_tokens=4)
    assert second.final.usage.cached_prompt_tokens >= first.final.usage.prompt_tokens
