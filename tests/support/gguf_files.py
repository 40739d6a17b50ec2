"""Small GGUF files written with the `gguf` package (from the llama.cpp project), for the
fast and the malformed-file cases. The real-model cases use the embedded Gemma."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

import gguf
import numpy as np


def write_gguf(
    path: Path,
    architecture: str = "llama",
    *,
    block_count: int = 2,
    embedding_length: int = 64,
    head_count: int = 4,
    head_count_kv: int | None = None,
    context_length: int = 128,
    vocab_size: int = 32,
    extra_uint32: Mapping[str, int] | None = None,
    tensors: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """A structurally valid GGUF with transformer metadata (not a runnable model)."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(block_count)
    writer.add_embedding_length(embedding_length)
    writer.add_head_count(head_count)
    writer.add_head_count_kv(head_count_kv or head_count)
    writer.add_context_length(context_length)
    writer.add_token_list([f"t{i}" for i in range(vocab_size)])
    for key, value in (extra_uint32 or {}).items():
        writer.add_uint32(key, value)
    for name, array in (
        tensors or {"token_embd.weight": np.zeros((vocab_size, embedding_length), np.float32)}
    ).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def patch_uint32(path: Path, key: str, value: int) -> None:
    """Overwrites the value of a uint32 metadata entry in place (a corrupt-file maker)."""
    data = bytearray(path.read_bytes()[: 16 * 2**20])
    encoded = key.encode()
    at = data.index(struct.pack("<Q", len(encoded)) + encoded) + 8 + len(encoded)
    (value_type,) = struct.unpack_from("<I", data, at)
    assert value_type == 4, f"{key} is not a uint32"
    with path.open("r+b") as f:
        f.seek(at + 4)
        f.write(struct.pack("<I", value))


def truncated_copy(source: Path, dest: Path, keep_fraction: float = 0.5) -> Path:
    data = source.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep_fraction)])
    return dest
