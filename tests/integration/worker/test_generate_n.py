"""Generate over gRPC on a real worker with the real Gemma: n sequences with log-probabilities,
and a prompt given as token ids."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as pb
from support.rpc import TIMEOUT, collect

PAIR = "gemma-pair"
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def pair(stub) -> Iterator[str]:
    spec = pb.ModelSpec(alias=PAIR, path="builtin:gemma-3-270m", n_ctx=256, n_parallel=2)
    stub.LoadModel(pb.LoadModelRequest(spec=spec), timeout=TIMEOUT)
    yield PAIR
    stub.UnloadModel(pb.UnloadModelRequest(alias=PAIR), timeout=TIMEOUT)


def _greedy(**fields) -> gen_pb.GenerateRequest:
    sampling = gen_pb.SamplingParams(temperature=0.0, max_tokens=5, top_logprobs=2)
    return gen_pb.GenerateRequest(model=PAIR, sampling=sampling, **fields)


def test_two_sequences_with_logprobs_each_end_with_their_own_final_chunk(stub, pair):
    chunks = collect(stub.Generate(_greedy(prompt=PROMPT, n=2), timeout=TIMEOUT)).chunks
    texts = {}
    for index in (0, 1):
        mine = [c for c in chunks if c.index == index]
        finals = [c for c in mine if c.finish_reason != gen_pb.FINISH_REASON_UNSPECIFIED]
        assert finals == [mine[-1]] and finals[0].finish_reason == gen_pb.FINISH_REASON_LENGTH
        assert finals[0].usage.completion_tokens == 5
        texts[index] = "".join(c.text for c in mine)
        for chunk in mine:
            assert [lp.chosen.token_id for lp in chunk.logprobs] == list(chunk.token_ids)
            for lp in chunk.logprobs:
                assert len(lp.top) == 2 and lp.top[0].token_id == lp.chosen.token_id
                assert lp.top[0].logprob >= lp.top[1].logprob and lp.chosen.logprob <= 0
    assert texts[0] == texts[1] and texts[0].startswith(", there")


def test_a_prompt_of_token_ids_reads_as_its_text_and_n_beyond_the_slots_is_refused(stub, pair):
    tokens = stub.Tokenize(gen_pb.TokenizeRequest(model=PAIR, text=PROMPT), timeout=TIMEOUT)
    by_ids = collect(stub.Generate(_greedy(prompt_tokens=tokens.tokens), timeout=TIMEOUT))
    by_text = collect(stub.Generate(_greedy(prompt=PROMPT), timeout=TIMEOUT))
    assert by_ids.text == by_text.text and by_ids.final.usage.prompt_tokens == len(tokens.tokens)
    with pytest.raises(grpc.RpcError) as refused:
        collect(stub.Generate(_greedy(prompt=PROMPT, n=3), timeout=TIMEOUT))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "n = 3" in refused.value.details() and "has 2 (n_parallel)" in refused.value.details()
