"""Tokenize and Detokenize with the model's own vocabulary."""

from __future__ import annotations

from llamaherd.v1 import generation_pb2 as gen_pb
from support.models import GEMMA

BOS = 2  # Gemma's <bos>


def test_tokenize_adds_bos_and_round_trips(stub):
    text = "Hello, llamaherd! Ünïcödé ✓"
    tokens = stub.Tokenize(gen_pb.TokenizeRequest(model=GEMMA, text=text)).tokens
    assert tokens[0] == BOS
    back = stub.Detokenize(gen_pb.DetokenizeRequest(model=GEMMA, tokens=tokens[1:])).text
    assert back == text


def test_tokenize_without_special_tokens(stub):
    with_bos = stub.Tokenize(gen_pb.TokenizeRequest(model=GEMMA, text="hi")).tokens
    without = stub.Tokenize(
        gen_pb.TokenizeRequest(model=GEMMA, text="hi", add_special=False)
    ).tokens
    assert list(with_bos) == [BOS, *without]


def test_special_tokens_written_as_text(stub):
    text = "<start_of_turn>user"
    parsed = stub.Tokenize(gen_pb.TokenizeRequest(model=GEMMA, text=text, add_special=False)).tokens
    literal = stub.Tokenize(
        gen_pb.TokenizeRequest(model=GEMMA, text=text, add_special=False, parse_special=False)
    ).tokens
    assert len(parsed) < len(literal)
    assert parsed[0] == 105  # <start_of_turn> is one token


def test_pieces_are_the_bytes_of_each_token(stub):
    reply = stub.Tokenize(
        gen_pb.TokenizeRequest(model=GEMMA, text="ab ✓", add_special=False, with_pieces=True)
    )
    assert len(reply.pieces) == len(reply.tokens)
    assert b"".join(reply.pieces).decode() == "ab ✓"


def test_a_chat_is_counted_as_chat_reads_it_prefix_included(stub):
    messages = [gen_pb.ChatMessage(role="system", content="Be brief."),
                gen_pb.ChatMessage(role="user", content="Name a colour.")]  # fmt: skip
    for prefix in ("", "The colour"):
        chat = gen_pb.ChatRequest(
            model=GEMMA, messages=messages, assistant_prefix=prefix,
            sampling=gen_pb.SamplingParams(max_tokens=1, temperature=0),
        )  # fmt: skip
        counted = stub.Tokenize(gen_pb.TokenizeRequest(model=GEMMA, chat=chat), timeout=30)
        (*_, last) = stub.Chat(chat, timeout=60)
        assert len(counted.tokens) == last.usage.prompt_tokens
        assert counted.tokens[0] == BOS and list(counted.tokens).count(BOS) == 1
    plain = stub.Tokenize(gen_pb.TokenizeRequest(model=GEMMA, text="Name a colour.")).tokens
    assert len(counted.tokens) > len(plain) + 5, "the template's turns are counted"
