"""Every bad input gets a precise gRPC status naming the problem, and the worker keeps serving."""

from __future__ import annotations

import math

import grpc
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from support.models import GEMMA, GEMMA_EMBED, N_CTX
from support.rpc import TIMEOUT, generate, rpc_error


def _generate(stub, prompt="Hello", constraint=None, model=GEMMA, **sampling):
    request = gen_pb.GenerateRequest(
        model=model,
        prompt=prompt,
        sampling=gen_pb.SamplingParams(**sampling),
        constraint=constraint,
    )
    return lambda: stub.Generate(request, timeout=TIMEOUT)


@pytest.fixture(autouse=True)
def _still_serving_afterwards(stub):
    yield
    assert (
        generate(stub, GEMMA, "Hello", temperature=0, max_tokens=2).final.usage.completion_tokens
        == 2
    )


def test_unknown_model_is_not_found_and_lists_the_loaded_ones(stub):
    err = rpc_error(_generate(stub, model="no-such-model"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "'no-such-model'" in err.details()
    assert f"'{GEMMA}'" in err.details()


def test_empty_model_name_is_invalid(stub):
    err = rpc_error(_generate(stub, model=""))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model is empty" in err.details()


def test_prompt_longer_than_the_context_names_both_counts(stub):
    prompt = "hello " * 1500
    n_prompt = len(stub.Tokenize(gen_pb.TokenizeRequest(model=GEMMA, text=prompt)).tokens)
    err = rpc_error(_generate(stub, prompt=prompt))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"prompt is {n_prompt} tokens" in err.details()
    assert f"context of {N_CTX} tokens" in err.details()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("temperature", math.nan),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("min_p", 1.2),
        ("repeat_penalty", 0.0),
        ("repeat_penalty", 11.0),
        ("presence_penalty", -2.5),
        ("frequency_penalty", 3.0),
        ("repeat_last_n", -2),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("seed", 0xFFFFFFFF),
    ],
)
def test_out_of_range_sampling_is_invalid_and_names_the_field(stub, field, value):
    err = rpc_error(_generate(stub, **{field: value}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"sampling.{field}" in err.details()


def test_too_many_stop_strings(stub):
    err = rpc_error(_generate(stub, stop=[f"s{i}" for i in range(17)]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.stop" in err.details()


def test_logit_bias_for_a_token_outside_the_vocabulary(stub):
    err = rpc_error(_generate(stub, logit_bias={10_000_000: 1.0}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10000000 is not a token of this model" in err.details()


def test_invalid_grammar_reports_llama_cpp_reason(stub):
    err = rpc_error(
        _generate(stub, constraint=gen_pb.OutputConstraint(grammar="root ::= undefined_rule"))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "constraint.grammar" in err.details()
    assert "undefined_rule" in err.details()


def test_empty_grammar_is_invalid(stub):
    err = rpc_error(_generate(stub, constraint=gen_pb.OutputConstraint(grammar="  ")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "constraint.grammar is empty" in err.details()


def test_json_schema_that_is_not_json(stub):
    err = rpc_error(_generate(stub, constraint=gen_pb.OutputConstraint(json_schema="{not json")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "constraint.json_schema is not valid JSON" in err.details()


def test_chat_without_messages(stub):
    err = rpc_error(lambda: stub.Chat(gen_pb.ChatRequest(model=GEMMA), timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages is empty" in err.details()


def test_chat_message_without_role(stub):
    request = gen_pb.ChatRequest(model=GEMMA, messages=[gen_pb.ChatMessage(role="", content="hi")])
    err = rpc_error(lambda: stub.Chat(request, timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[0].role is empty" in err.details()


def test_generate_on_an_embedding_model_is_a_failed_precondition(stub):
    err = rpc_error(_generate(stub, model=GEMMA_EMBED))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "embedding" in err.details()


def test_embed_on_a_generation_model_longer_than_its_context(stub):
    err = rpc_error(
        lambda: stub.Embed(
            gen_pb.EmbedRequest(model=GEMMA, inputs=["ok", "word " * 5000]), timeout=TIMEOUT
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[1] is" in err.details() and "(context)" in err.details()


def test_embed_without_inputs(stub):
    err = rpc_error(lambda: stub.Embed(gen_pb.EmbedRequest(model=GEMMA_EMBED), timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs must hold 1 to 256 texts, got 0" in err.details()


def test_embed_input_longer_than_the_batch(stub):
    request = gen_pb.EmbedRequest(model=GEMMA_EMBED, inputs=["ok", "word " * 700])
    err = rpc_error(lambda: stub.Embed(request, timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[1] is" in err.details()
    assert "at most 512 tokens per input" in err.details()


def test_detokenize_an_unknown_token_id(stub):
    request = gen_pb.DetokenizeRequest(model=GEMMA, tokens=[2, 5, -7])
    err = rpc_error(lambda: stub.Detokenize(request, timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tokens[2] = -7 is not a token of this model" in err.details()
