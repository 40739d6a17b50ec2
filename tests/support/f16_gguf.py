"""An F16 GGUF made from a quantized one, the source `llamaherd models quantize` needs.

Every tensor is dequantized with the `gguf` package and written back as F16 (1-D tensors,
the norms, stay F32 as llama.cpp's converter keeps them); metadata and tokenizer are copied,
general.file_type says MOSTLY_F16. `blocks` and `vocab` cut the model down (the first N
blocks, the first N tokens) for a small file a test can quantize in a second: still a model
llama.cpp loads and runs, if not a good one.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

_FILE_TYPE_F16 = 1  # llama_ftype LLAMA_FTYPE_MOSTLY_F16
_VOCAB_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")


def write_f16(src: Path, dst: Path, blocks: int | None = None, vocab: int | None = None) -> Path:
    reader = gguf.GGUFReader(str(src))
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        name = field.name
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        value = field.contents()
        if blocks is not None and name == f"{arch}.block_count":
            value = blocks
        if vocab is not None and name in _VOCAB_ARRAYS:
            value = value[:vocab]
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, field.types[0], sub_type=sub_type)
    writer.add_file_type(_FILE_TYPE_F16)
    for tensor in reader.tensors:
        block = int(tensor.name.split(".")[1]) if tensor.name.startswith("blk.") else -1
        if blocks is not None and block >= blocks:
            continue
        data = tensor.data
        if vocab is not None and tensor.name in ("token_embd.weight", "output.weight"):
            data = data[:vocab]  # one row per token, quantized or not
        weights = gguf.quants.dequantize(data, tensor.tensor_type)
        # Norms and other vectors stay F32, as convert_hf_to_gguf.py writes them.
        dtype = np.float32 if weights.ndim == 1 else np.float16
        writer.add_tensor(tensor.name, np.ascontiguousarray(weights, dtype=dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def write_tiny_llama_f16(path: Path, n_embd: int = 64, n_ff: int = 128, seed: int = 0) -> Path:
    """A two-block llama model with random F16 weights and a byte-level SentencePiece
    vocabulary (4 specials + 256 bytes): runnable by llama.cpp and written in milliseconds,
    unlike an F16 made from the embedded Gemma (its tokenizer alone takes the `gguf`
    reader tens of seconds)."""
    rng = np.random.default_rng(seed)
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)]
    n_vocab, n_head, n_blocks = len(tokens), 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(256)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_blocks)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(_FILE_TYPE_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * n_vocab)
    token_types = [gguf.TokenType.UNKNOWN, *[gguf.TokenType.CONTROL] * 3]
    writer.add_token_types(token_types + [gguf.TokenType.BYTE] * 256)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float16)

    writer.add_tensor("token_embd.weight", matrix(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    writer.add_tensor("output.weight", matrix(n_vocab, n_embd))
    for i in range(n_blocks):
        for name in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{name}.weight", np.ones(n_embd, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", matrix(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", matrix(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", matrix(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", matrix(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
