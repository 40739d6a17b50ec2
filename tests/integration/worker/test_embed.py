"""Embeddings from the real Gemma model: loaded with embedding: true, and as a generation
model (mean-pooled hidden states, as llama-server and Ollama give)."""

from __future__ import annotations

import math

from llamaherd.v1 import generation_pb2 as gen_pb
from support.models import GEMMA, GEMMA_EMBED
from support.rpc import TIMEOUT

N_EMBD = 640


def _embed(stub, inputs, normalize=None):
    request = gen_pb.EmbedRequest(model=GEMMA_EMBED, inputs=inputs, normalize=normalize)
    return stub.Embed(request, timeout=TIMEOUT)


def _norm(values) -> float:
    return math.sqrt(sum(v * v for v in values))


def test_one_normalised_vector_per_input(stub):
    reply = _embed(stub, ["The cat sat on the mat.", "Quarterly revenue grew by 4%."])
    assert len(reply.embeddings) == 2
    for emb in reply.embeddings:
        assert len(emb.values) == N_EMBD
        assert math.isclose(_norm(emb.values), 1.0, rel_tol=1e-4)
    assert list(reply.embeddings[0].values) != list(reply.embeddings[1].values)
    assert reply.prompt_tokens > 10


def test_embeddings_are_deterministic_and_independent_of_batch_neighbours(stub):
    alone = _embed(stub, ["hello world"]).embeddings[0].values
    together = _embed(stub, ["something else entirely", "hello world"]).embeddings[1].values
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(alone, together, strict=True))


def test_normalisation_can_be_turned_off(stub):
    raw = _embed(stub, ["hello world"], normalize=False).embeddings[0].values
    unit = _embed(stub, ["hello world"]).embeddings[0].values
    scale = _norm(raw)
    assert not math.isclose(scale, 1.0, rel_tol=1e-3)
    assert all(math.isclose(r / scale, u, abs_tol=1e-5) for r, u in zip(raw, unit, strict=True))


# ---- embeddings from the generation model (no embedding: true) ---------------------------


def _embed_generation(stub, inputs, normalize=None):
    request = gen_pb.EmbedRequest(model=GEMMA, inputs=inputs, normalize=normalize)
    return stub.Embed(request, timeout=TIMEOUT)


def _cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (_norm(a) * _norm(b))


def test_a_generation_model_embeds_with_mean_pooled_normalised_states(stub):
    texts = ["The cat sat on the mat.", "A kitten rested on the rug.", "Quarterly revenue grew."]
    reply = _embed_generation(stub, texts)
    assert [len(e.values) for e in reply.embeddings] == [N_EMBD] * 3
    for emb in reply.embeddings:
        assert math.isclose(_norm(emb.values), 1.0, rel_tol=1e-4)
    cat, kitten, revenue = (list(e.values) for e in reply.embeddings)
    assert _cosine(cat, kitten) > _cosine(cat, revenue)


def test_a_generation_models_embedding_matches_the_embedding_models(stub):
    """Chunked mean pooling on a generation context (inputs longer than one chunk of 32
    tokens) gives the same vector as the embedding context's one-decode mean."""
    text = " ".join(f"word{i}" for i in range(60))
    chunked = _embed_generation(stub, [text]).embeddings[0].values
    whole = _embed(stub, [text]).embeddings[0].values
    assert _cosine(list(chunked), list(whole)) > 0.999


def test_a_generation_models_embeddings_are_deterministic_and_leave_generation_alone(stub):
    request = gen_pb.GenerateRequest(
        model=GEMMA,
        prompt="Once upon a time",
        sampling=gen_pb.SamplingParams(temperature=0, max_tokens=8),
    )
    before = "".join(c.text for c in stub.Generate(request, timeout=TIMEOUT))
    first = _embed_generation(stub, ["hello world"]).embeddings[0].values
    again = _embed_generation(stub, ["something else", "hello world"]).embeddings[1].values
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(first, again, strict=True))
    after = "".join(c.text for c in stub.Generate(request, timeout=TIMEOUT))
    assert after == before
