"""Reads and checks a GGUF file's header, metadata and tensor table without loading weights.

Two jobs: (1) refuse a file that is not a complete, well-formed GGUF with a message that
says what is wrong, before llama.cpp parses it (llama.cpp aborts the whole process on some
malformed files, and a worker must survive any input); (2) give the memory estimate and the
layer planner the shapes they need.

Written from the GGUF specification (ggml/docs/gguf.md). It reads the header through mmap
and skips large arrays (the 250k-entry vocabularies) instead of decoding them, so a 250 MB
model is checked in tens of milliseconds; the `gguf` package's reader takes seconds.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import InvalidModelFile

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# Arrays longer than this are summarised (type and length) rather than decoded.
MAX_DECODED_ARRAY = 1024
# Strings longer than this (a whole tokenizer.json, say), and any string once this many bytes
# of text were decoded, are summarised too: the length fields are the file's to claim, and a
# copy of a claimed 2 GB value must not be made just to look at a header. Chat templates,
# the longest strings anything reads, are tens of kilobytes.
MAX_DECODED_STRING = 1 << 20
MAX_DECODED_TEXT = 16 << 20
MAX_DIMS = 4
MAX_KEY_LENGTH = 65535
# Sanity bounds against corrupt counts; real models are far below these.
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 16

# ggml tensor types: id -> (name, elements per block, bytes per block). From ggml.h.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}  # fmt: skip

# GGUF metadata value types: id -> struct format (None for string/array).
_SCALAR_FORMATS: dict[int, str | None] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    8: None, 9: None, 10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class ArraySummary:
    """A metadata array too long to be worth decoding (e.g. the vocabulary)."""

    item_type: int
    length: int


@dataclass(frozen=True)
class StringSummary:
    """A metadata string too long to be worth decoding (MAX_DECODED_STRING)."""

    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int  # from the start of the data section
    n_bytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type_id][0]


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    version: int
    file_bytes: int
    data_offset: int
    metadata: Mapping[str, Any]
    tensors: tuple[TensorInfo, ...]

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else ""

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    def arch_value(self, key: str, default: Any = None) -> Any:
        """`{architecture}.{key}`, e.g. arch_value('block_count')."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def vocab_size(self) -> int:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, ArraySummary):
            return tokens.length
        if isinstance(tokens, list):
            return len(tokens)
        size = self.arch_value("vocab_size", 0)
        # Any value type may stand under any key: only a count is a vocabulary size.
        return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0

    @property
    def chat_template(self) -> str | None:
        template = self.metadata.get("tokenizer.chat_template")
        return template if isinstance(template, str) and template.strip() else None


class _Reader:
    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path
        self.decoded = 0  # bytes of metadata text decoded so far (MAX_DECODED_TEXT)

    def fail(self, what: str) -> InvalidModelFile:
        return InvalidModelFile(f"{self.path} is not a valid GGUF file: {what}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(
                f"truncated while reading {what} (needs {n} bytes at offset {self.pos}, "
                f"file has {len(self.buf)})"
            )

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str, max_len: int | None = None) -> str:
        length = self.unpack("<Q", f"length of {what}")
        if max_len is not None and length > max_len:
            raise self.fail(f"{what} is {length} bytes long (limit {max_len})")
        self.need(length, what)
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not UTF-8") from exc

    def skip_string(self, what: str) -> None:
        length = self.unpack("<Q", f"length of {what}")
        self.need(length, what)
        self.pos += length

    def text_value(self, what: str) -> str | StringSummary:
        """A metadata string, or its length when it is too long to be worth decoding."""
        at = self.pos
        length = self.unpack("<Q", f"length of {what}")
        if length > min(MAX_DECODED_STRING, MAX_DECODED_TEXT - self.decoded):
            self.need(length, what)
            self.pos += length
            return StringSummary(length)
        self.pos = at
        text = self.string(what)
        self.decoded += length
        return text

    def value(self, type_id: int, key: str) -> Any:
        if type_id == _STRING:
            return self.text_value(f"value of {key}")
        if type_id == _ARRAY:
            return self.array(key)
        fmt = _SCALAR_FORMATS.get(type_id)
        if fmt is None:
            raise self.fail(f"metadata {key} has unknown value type {type_id}")
        return self.unpack(fmt, f"value of {key}")

    def array(self, key: str) -> Any:
        item_type = self.unpack("<I", f"item type of {key}")
        length = self.unpack("<Q", f"length of {key}")
        if item_type == _ARRAY:
            raise self.fail(f"metadata {key} is a nested array, which GGUF does not allow")
        if item_type not in _SCALAR_FORMATS:
            raise self.fail(f"metadata {key} has unknown item type {item_type}")
        if length <= MAX_DECODED_ARRAY:
            return [self.value(item_type, key) for _ in range(length)]
        fmt = _SCALAR_FORMATS[item_type]
        if fmt is None:  # strings: walk the length prefixes without decoding
            for _ in range(length):
                self.skip_string(f"item of {key}")
        else:
            size = struct.calcsize(fmt) * length
            self.need(size, f"items of {key}")
            self.pos += size
        return ArraySummary(item_type, length)


def read_gguf(path: Path) -> GGUFFile:
    """Parses and checks `path`; raises InvalidModelFile naming the first problem found."""
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            if size < 24:
                raise InvalidModelFile(
                    f"{path} is not a valid GGUF file: only {size} bytes (a header needs 24)"
                )
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    return _parse(_Reader(view, path), path, size)
                finally:
                    view.release()
    except IsADirectoryError as exc:
        raise InvalidModelFile(f"{path} is a directory, not a GGUF file") from exc
    except OSError as exc:
        raise InvalidModelFile(f"cannot read {path}: {exc.strerror or exc}") from exc


def _parse(r: _Reader, path: Path, size: int) -> GGUFFile:
    magic = bytes(r.buf[:4])
    if magic != MAGIC:
        raise r.fail(f"it starts with {magic!r}, not the GGUF magic {MAGIC!r}")
    r.pos = 4
    version = r.unpack("<I", "version")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in SUPPORTED_VERSIONS:
            raise r.fail("it is a big-endian GGUF, which llama.cpp on this host cannot use")
        raise r.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = r.unpack("<Q", "tensor count")
    n_kv = r.unpack("<Q", "metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise r.fail(f"implausible counts ({n_tensors} tensors, {n_kv} metadata entries)")

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string("metadata key", MAX_KEY_LENGTH)
        type_id = r.unpack("<I", f"value type of {key}")
        metadata[key] = r.value(type_id, key)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"general.alignment must be a power of two, got {alignment!r}")

    infos = [_tensor_info(r) for _ in range(n_tensors)]
    data_offset = -(-r.pos // alignment) * alignment
    tensors = tuple(_check_tensor(r, info, data_offset, alignment, size) for info in infos)
    if n_tensors and data_offset > size:
        raise r.fail(f"truncated: tensor data would start at byte {data_offset} of {size}")
    return GGUFFile(path, version, size, data_offset, metadata, tensors)


def _tensor_info(r: _Reader) -> tuple[str, tuple[int, ...], int, int]:
    name = r.string("tensor name", MAX_KEY_LENGTH)
    n_dims = r.unpack("<I", f"dimension count of tensor {name}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise r.fail(f"tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
    shape = tuple(r.unpack("<Q", f"shape of tensor {name}") for _ in range(n_dims))
    type_id = r.unpack("<I", f"type of tensor {name}")
    offset = r.unpack("<Q", f"offset of tensor {name}")
    return name, shape, type_id, offset


def _check_tensor(
    r: _Reader,
    info: tuple[str, tuple[int, ...], int, int],
    data_offset: int,
    alignment: int,
    size: int,
) -> TensorInfo:
    name, shape, type_id, offset = info
    if type_id not in GGML_TYPES:
        raise r.fail(f"tensor {name} has unknown ggml type {type_id} (newer than this llama.cpp?)")
    type_name, block, block_bytes = GGML_TYPES[type_id]
    if any(d == 0 for d in shape):
        raise r.fail(f"tensor {name} has an empty dimension {list(shape)}")
    if shape[0] % block:
        raise r.fail(f"tensor {name} ({type_name}) row of {shape[0]} is not a multiple of {block}")
    elements = 1
    for d in shape:
        elements *= d
    n_bytes = elements // block * block_bytes
    if offset % alignment:
        raise r.fail(f"tensor {name} data offset {offset} is not aligned to {alignment}")
    end = data_offset + offset + n_bytes
    if end > size:
        raise r.fail(
            f"truncated: tensor {name} needs bytes up to {end} but the file has {size} "
            "(an interrupted download?)"
        )
    return TensorInfo(name, shape, type_id, offset, n_bytes)
