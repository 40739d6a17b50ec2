"""The gRPC Inference API of a real gateway in front of two real workers."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import inference_pb2 as inf_pb
from llamaherd.v1 import inference_pb2_grpc
from support.models import GEMMA, GEMMA_EMBED

NODE_KEY = "x-llamaherd-node"
GREEDY = gen_pb.SamplingParams(temperature=0, max_tokens=16)


@pytest.fixture(scope="module")
def inference(cluster) -> Iterator[inference_pb2_grpc.InferenceStub]:
    with grpc.insecure_channel(cluster.coordinator.gateway) as channel:
        yield inference_pb2_grpc.InferenceStub(channel)


def _node(call) -> str:
    return dict(call.initial_metadata())[NODE_KEY]


def _generate(stub, prompt: str, sampling=GREEDY, model=GEMMA) -> tuple[str, str, list]:
    call = stub.Generate(gen_pb.GenerateRequest(model=model, prompt=prompt, sampling=sampling))
    chunks = list(call)
    return "".join(c.text for c in chunks), _node(call), chunks


def test_status_lists_both_workers_with_their_models(inference):
    status = inference.ClusterStatus(inf_pb.ClusterStatusRequest(), timeout=5)
    nodes = {n.status.node_id: n for n in status.nodes}
    assert set(nodes) == {"worker-a", "worker-b"}
    assert all(n.up for n in nodes.values())
    assert {m.alias for m in nodes["worker-b"].status.models} == {GEMMA, GEMMA_EMBED}
    assert {m.alias for m in nodes["worker-a"].status.models} == {GEMMA}
    assert nodes["worker-a"].status.hardware.kind == "x86-cpu"
    assert "RPC" in nodes["worker-a"].status.hardware.backends
    assert status.routing_policy == "session-affinity"


def test_list_models_counts_ready_replicas(inference):
    models = {m.alias: m for m in inference.ListModels(inf_pb.ListClusterModelsRequest()).models}
    assert models[GEMMA].ready_replicas == 2
    assert sorted(models[GEMMA].nodes) == ["worker-a", "worker-b"]
    assert models[GEMMA_EMBED].embedding and list(models[GEMMA_EMBED].nodes) == ["worker-b"]
    assert "nowhere" not in models


def test_generate_streams_from_a_worker_holding_the_model(inference):
    text, node, chunks = _generate(inference, "The capital of France is")
    assert node in {"worker-a", "worker-b"}
    assert len(chunks) > 2, "tokens must arrive as a stream, not one message"
    assert text.strip()
    final = chunks[-1]
    assert final.finish_reason == gen_pb.FINISH_REASON_LENGTH
    assert final.usage.completion_tokens == 16


def test_chat_is_relayed_unchanged(inference):
    request = gen_pb.ChatRequest(
        model=GEMMA,
        messages=[gen_pb.ChatMessage(role="user", content="Say hello.")],
        sampling=GREEDY,
    )
    chunks = list(inference.Chat(request))
    assert chunks[-1].usage.prompt_tokens > 5
    assert "".join(c.text for c in chunks).strip()


def test_embeddings_go_to_the_only_worker_that_holds_them(inference):
    for _ in range(3):
        response, call = inference.Embed.with_call(
            gen_pb.EmbedRequest(model=GEMMA_EMBED, inputs=["a cat", "a dog"])
        )
        assert _node(call) == "worker-b"
        assert len(response.embeddings) == 2 and len(response.embeddings[0].values) == 640


def test_two_replicas_share_concurrent_requests(inference):
    sampling = gen_pb.SamplingParams(temperature=0, max_tokens=24)
    with ThreadPoolExecutor(6) as pool:
        results = list(
            pool.map(lambda i: _generate(inference, f"Story {i}: once", sampling), range(6))
        )
    nodes = [node for _, node, _ in results]
    assert set(nodes) == {"worker-a", "worker-b"}, nodes
    assert all(chunks[-1].usage.completion_tokens == 24 for _, _, chunks in results)


def test_same_greedy_request_gives_the_same_text_on_either_replica(inference):
    texts = {}
    for _ in range(6):
        text, node, _chunks = _generate(inference, "List three colours:")
        texts.setdefault(node, set()).add(text)
        if len(texts) == 2:
            break
    assert all(len(t) == 1 for t in texts.values())
    assert len({t for ts in texts.values() for t in ts}) == 1, texts


def test_unknown_model_is_not_found_and_lists_the_served_ones(inference):
    with pytest.raises(grpc.RpcError) as err:
        _generate(inference, "hi", model="no-such-model")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in err.value.details() and GEMMA in err.value.details()


def test_model_that_fits_nowhere_is_unavailable_with_the_reason(inference):
    with pytest.raises(grpc.RpcError) as err:
        _generate(inference, "hi", model="nowhere")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "lacks labels gpu-80g" in err.value.details()
    status = inference.ClusterStatus(inf_pb.ClusterStatusRequest())
    assert [p.alias for p in status.placement_problems] == ["nowhere"]


def test_a_generation_model_embeds_through_the_gateway(inference):
    reply = inference.Embed(gen_pb.EmbedRequest(model=GEMMA, inputs=["x", "y z"]))
    assert [len(e.values) for e in reply.embeddings] == [640, 640]


def test_worker_refusals_pass_through_with_their_code(inference):
    bad = gen_pb.SamplingParams(temperature=7)
    with pytest.raises(grpc.RpcError) as err:
        _generate(inference, "hi", sampling=bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "temperature" in err.value.details()


def test_empty_model_is_invalid(inference):
    with pytest.raises(grpc.RpcError) as err:
        _generate(inference, "hi", model="")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_n_sequences_and_logprobs_pass_through_unchanged(inference):
    sampling = gen_pb.SamplingParams(temperature=0.8, seed=4, max_tokens=3, top_logprobs=2)
    call = inference.Generate(
        gen_pb.GenerateRequest(model=GEMMA, prompt="The sky is", sampling=sampling, n=2)
    )
    chunks = list(call)
    finals = sorted(c.index for c in chunks if c.finish_reason)
    assert finals == [0, 1], "each sequence ends with its own final chunk"
    for index in (0, 1):
        mine = [c for c in chunks if c.index == index]
        tokens = sum(len(c.token_ids) for c in mine)
        assert tokens == 3 and sum(len(c.logprobs) for c in mine) == tokens
        assert all(len(lp.top) == 2 for c in mine for lp in c.logprobs)
