"""Embeddings from the real Gemma model loaded with embedding: true (mean pooling)."""

from __future__ import annotations

import math

from llamaherd.v1 import generation_pb2 as gen_pb
from support.models import GEMMA_EMBED
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
