"""How much memory a model needs, estimated from its GGUF metadata before llama.cpp runs.

Pure functions of a GGUF file's metadata (common.gguf), shared by the worker (before it loads
a model) and the coordinator (placement sizes a store model for nodes that lack its file).

The estimate follows what llama.cpp allocates for the context parameters the worker uses
(worker.llamacpp.context): f16 K and V caches over every layer with n_ctx cells padded to
256 (the worker keeps full-size sliding-window caches, so every layer holds n_ctx cells),
and a compute buffer whose peak, for the models we serve, is the logits of one micro-batch.
Tests compare these figures with the sizes llama.cpp itself reports.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from common.errors import InvalidModelFile
from common.gguf import GGUFFile
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig

KV_CELL_PADDING = 256
# llama.cpp's compile-time limits (src/llama-hparams.h). It aborts the whole process, rather
# than failing the load, on a file that declares more.
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
KV_BYTES_PER_ELEMENT = 2  # f16 K and V
# Slots a generation model gets when its config leaves n_parallel at 0: as many as memory
# allows, up to this many (the worker halves it while the estimate does not fit).
AUTO_PARALLEL = 4
FLOAT_BYTES = 4


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a transformer that decide its runtime memory."""

    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> ModelShape:
        arch = gguf.architecture
        if not arch:
            raise InvalidModelFile(f"{gguf.path} has no general.architecture in its metadata")

        def required(key: str) -> int:
            value = gguf.arch_value(key)
            if isinstance(value, list) and value:
                value = max(value)
            if not isinstance(value, int) or value <= 0:
                raise InvalidModelFile(f"{gguf.path} lacks a positive {arch}.{key} in its metadata")
            return value

        n_layer = required("block_count")
        if n_layer > LLAMA_MAX_LAYERS:
            raise InvalidModelFile(
                f"{gguf.path} declares {n_layer} layers; llama.cpp supports at most "
                f"{LLAMA_MAX_LAYERS}"
            )
        experts = gguf.arch_value("expert_count", 0)
        if isinstance(experts, int) and experts > LLAMA_MAX_EXPERTS:
            raise InvalidModelFile(
                f"{gguf.path} declares {experts} experts; llama.cpp supports at most "
                f"{LLAMA_MAX_EXPERTS}"
            )
        n_embd = required("embedding_length")
        n_head = required("attention.head_count")
        n_head_kv = _per_layer(gguf.arch_value("attention.head_count_kv", n_head), n_layer)
        head_k = gguf.arch_value("attention.key_length") or n_embd // n_head
        head_v = gguf.arch_value("attention.value_length") or n_embd // n_head
        n_ff = gguf.arch_value("feed_forward_length", 0)
        n_ff = max(n_ff) if isinstance(n_ff, list) and n_ff else n_ff
        return cls(
            architecture=arch,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim_k=int(head_k),
            head_dim_v=int(head_v),
            n_ff=int(n_ff or 0),
            n_vocab=gguf.vocab_size,
            n_ctx_train=int(gguf.arch_value("context_length", 0) or 0),
        )


def _per_layer(value: object, n_layer: int) -> tuple[int, ...]:
    if isinstance(value, list):
        if len(value) != n_layer:
            raise InvalidModelFile(f"head_count_kv lists {len(value)} layers, model has {n_layer}")
        return tuple(int(v) for v in value)
    return (int(value),) * n_layer if isinstance(value, int) else (0,) * n_layer


def kv_cells(n_ctx: int) -> int:
    return -(-n_ctx // KV_CELL_PADDING) * KV_CELL_PADDING


def estimate_kv_cache(shape: ModelShape, n_ctx: int, n_seq: int = 1) -> int:
    """Bytes of the K and V caches: per layer, cells x (K width + V width) x f16."""
    per_cell = sum(h * (shape.head_dim_k + shape.head_dim_v) for h in shape.n_head_kv)
    return kv_cells(n_ctx) * n_seq * per_cell * KV_BYTES_PER_ELEMENT


def estimate_compute(
    shape: ModelShape, n_ubatch: int, n_ctx: int, embedding: bool, n_seq: int = 1
) -> int:
    """Peak of llama.cpp's compute buffer for one micro-batch, plus its output buffer.

    The peak is the largest of three points in the graph: the logits of the whole
    micro-batch (dominant for large vocabularies; decoder models compute them even in an
    embedding context), the attention scores over the context (no flash attention), and
    the feed-forward activations. Embedding contexts also keep a pooled vector per token.
    """
    logits = n_ubatch * (shape.n_vocab + 2 * shape.n_embd) * FLOAT_BYTES
    # The output buffer holds logits for at least one token per sequence.
    output = shape.n_vocab * n_seq + (n_ubatch * shape.n_embd if embedding else 0)
    return max(logits, _layer_compute(shape, n_ubatch, n_ctx)) + output * FLOAT_BYTES


def estimate_memory(
    gguf: GGUFFile,
    shape: ModelShape,
    n_ctx: int,
    n_batch: int,
    embedding: bool = False,
    n_seq: int = 1,
) -> MemoryEstimate:
    """For a context of `n_seq` slots with `n_ctx` tokens of KV cache each."""
    kv = estimate_kv_cache(shape, n_ctx, n_seq)
    per_layer = _layer_weights(gguf)
    return MemoryEstimate(
        weights_bytes=gguf.tensor_bytes,
        kv_cache_bytes=kv,
        compute_bytes=estimate_compute(shape, n_batch, n_ctx, embedding, n_seq),
        n_layers=shape.n_layer,
        layer_weights_bytes=max(per_layer.values(), default=0),
        # Layers' caches differ only by their KV heads; the largest bounds any of them.
        layer_kv_cache_bytes=-(-kv * max(shape.n_head_kv) // max(1, sum(shape.n_head_kv))),
        layer_compute_bytes=_layer_compute(shape, n_batch, n_ctx),
    )


_BLOCK = re.compile(r"blk\.(\d+)\.")


def _layer_weights(gguf: GGUFFile) -> Counter[int]:
    per_layer: Counter[int] = Counter()
    for tensor in gguf.tensors:
        match = _BLOCK.match(tensor.name)
        if match:
            per_layer[int(match.group(1))] += tensor.n_bytes
    return per_layer


def _layer_compute(shape: ModelShape, n_ubatch: int, n_ctx: int) -> int:
    """A device's compute buffer when it holds layers but not the logits: the larger of
    attention scores and feed-forward activations of one micro-batch."""
    attention = n_ubatch * (shape.n_head * kv_cells(n_ctx) + 3 * shape.n_embd)
    ffn = n_ubatch * (2 * shape.n_ff + 2 * shape.n_embd)
    return max(attention, ffn) * FLOAT_BYTES


def context_for(config: ModelConfig, shape: ModelShape) -> int | None:
    """The KV cache tokens per slot `config` asks for: its n_ctx, or the model's training
    context when n_ctx is 0; None when that is 0 too (the file declares none)."""
    return (config.n_ctx or shape.n_ctx_train) or None


def most_slots(config: ModelConfig) -> int:
    """The most sequence slots the worker gives `config`: its n_parallel, else one for an
    embedding model, else up to AUTO_PARALLEL (never more than n_batch)."""
    return config.n_parallel or (1 if config.embedding else min(AUTO_PARALLEL, config.n_batch))
