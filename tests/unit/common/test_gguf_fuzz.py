"""Property-based fuzzing of the GGUF reader (Hypothesis).

A worker reads any file an operator (or an attacker with a writable model directory) puts
in front of it, so the reader's invariant is: for any bytes, `read_gguf` returns facts whose
properties all evaluate, or raises InvalidModelFile naming the problem; never another
exception, within a time bound, without allocating memory in proportion to what a length
field claims. The inputs: the embedded Gemma's real header truncated and mutated (kept at
the real file's size as a sparse file, so mutations that keep it well formed are read to the
end), and GGUF files built from random metadata and tensor tables.

Brief by default; `make fuzz` (LLAMAHERD_FUZZ=long) runs thousands of examples.
"""

from __future__ import annotations

import functools
import os
import struct
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.fuzz import fuzz_settings

from common.errors import InvalidModelFile
from common.gguf import GGML_TYPES, GGUFFile, read_gguf

TIME_BOUND_S = 5.0  # the real header parses in ~0.1 s; generous for a shared 2-core VM
MEMORY_BOUND = 32 * 2**20  # Python heap; the file itself is mmapped, not copied


@functools.cache
def _gemma() -> tuple[bytes, int, int]:
    """The embedded model's header (metadata and tensor table), its data offset and size."""
    from common.model_settings import DEFAULT_MODEL
    from worker.models.builtin import resolve

    path = resolve("builtin:" + DEFAULT_MODEL)
    facts = read_gguf(path)
    with path.open("rb") as f:
        return f.read(facts.data_offset), facts.data_offset, facts.file_bytes


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    # Hypothesis reruns a test body many times: one directory for all of them.
    with tempfile.TemporaryDirectory(prefix="gguf-fuzz-") as directory:
        yield Path(directory)


def _write(directory: Path, data: bytes, size: int | None = None) -> Path:
    path = directory / "model.gguf"
    with path.open("wb") as f:
        f.write(data)
        if size is not None and size > len(data):
            f.truncate(size)  # sparse: the tensor data reads as zeros and costs no disk
    return path


def _use(facts: GGUFFile) -> None:
    """Every fact the worker's planner and loader read."""
    assert facts.version in (2, 3)
    assert facts.data_offset > 0 and (facts.data_offset <= facts.file_bytes or not facts.tensors)
    _ = (facts.architecture, facts.tensor_bytes, facts.vocab_size, facts.chat_template)
    for key in ("block_count", "context_length", "embedding_length", "attention.head_count"):
        facts.arch_value(key)
    for tensor in facts.tensors:
        assert tensor.type_name and tensor.n_bytes >= 0
        assert facts.data_offset + tensor.offset + tensor.n_bytes <= facts.file_bytes


def _check(path: Path, trace_memory: bool = True) -> GGUFFile | InvalidModelFile:
    """Reads `path` and checks the invariant. Tracing allocations makes the real header's
    262k-entry vocabulary walk ten times slower, so the real-header properties skip it (the
    random files and the regression tests below cover the length fields)."""
    if trace_memory:
        tracemalloc.start()
    started = time.monotonic()
    try:
        facts = read_gguf(path)
        _use(facts)
        result: GGUFFile | InvalidModelFile = facts
    except InvalidModelFile as exc:
        assert str(path) in exc.message, "the refusal names the file"
        result = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - started < TIME_BOUND_S
    assert not trace_memory or peak < MEMORY_BOUND, f"peak Python heap {peak / 2**20:.0f} MiB"
    return result


# ---- the real header, truncated and mutated ------------------------------------------------
@fuzz_settings(examples_scale=0.5)
@given(data=st.data())
def test_a_truncated_real_header_is_refused_as_truncated(scratch: Path, data: st.DataObject):
    header, data_offset, _ = _gemma()
    # Most of the header is the 262k-entry vocabulary: weight the cut towards the parts
    # with structure (scalar metadata at the start, the tensor table at the end).
    cut = data.draw(
        st.integers(0, 4096)
        | st.integers(data_offset - 20_000, data_offset + 4096)
        | st.integers(0, data_offset + 4096)
    )
    result = _check(_write(scratch, header[:cut]), trace_memory=False)
    assert isinstance(result, InvalidModelFile)
    assert "truncated" in result.message or "bytes (a header needs 24)" in result.message


# Where the header's structure is: fixed header, scalar metadata, and the tensor table.
def _positions(data_offset: int) -> st.SearchStrategy[int]:
    return (
        st.integers(0, 23)
        | st.integers(24, 1500)
        | st.integers(data_offset - 16_000, data_offset - 1)
        | st.integers(0, data_offset - 1)
    )


MUTATION_VALUES = st.sampled_from(
    [
        b"\x00", b"\xff", b"\x80", b"\x09\x00\x00\x00", b"\x08\x00\x00\x00",
        b"\xff\xff\xff\xff\xff\xff\xff\x7f", b"\x00\x00\x00\x10\x00\x00\x00\x00",
        b"\x00\x00\x00\x00\x00\x00\x01\x00", struct.pack("<Q", 250 * 2**20),
        struct.pack("<I", 99), struct.pack("<I", 5), b"\xed\xa0\x80",
    ]
) | st.binary(min_size=1, max_size=8)  # fmt: skip


@fuzz_settings(examples_scale=0.5)
@given(data=st.data())
def test_a_mutated_real_header_gives_facts_or_a_precise_refusal(scratch: Path, data: st.DataObject):
    header, data_offset, size = _gemma()
    mutated = bytearray(header)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(_positions(data_offset))
        value = data.draw(MUTATION_VALUES)
        mutated[at : at + len(value)] = value[: len(mutated) - at]
    _check(_write(scratch, bytes(mutated), size), trace_memory=False)


# ---- GGUF files from random metadata and tensor tables -------------------------------------
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B",
           10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip


def _string(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


@st.composite
def _scalar(draw: st.DrawFn, type_id: int) -> bytes:
    if type_id == 8:
        return _string(draw(st.text(max_size=20).map(str.encode) | st.binary(max_size=20)))
    fmt = _SCALAR[type_id]
    width = struct.calcsize(fmt)
    return draw(st.binary(min_size=width, max_size=width))


@st.composite
def _value(draw: st.DrawFn) -> bytes:
    type_id = draw(st.sampled_from([*_SCALAR, 8, 9, 13, 2**31]))
    if type_id == 9:
        item = draw(st.sampled_from([*_SCALAR, 8, 9, 77]))
        length = draw(st.integers(0, 6) | st.sampled_from([1025, 2**40, 2**64 - 1]))
        items = b"".join(draw(_scalar(item)) for _ in range(min(length, 6)) if item in _SCALAR)
        if item == 8:
            items = b"".join(draw(_scalar(8)) for _ in range(min(length, 6)))
        return struct.pack("<IIQ", 9, item, length) + items
    if type_id not in _SCALAR and type_id != 8:
        return struct.pack("<I", type_id)
    return struct.pack("<I", type_id) + draw(_scalar(type_id))


KEYS = st.sampled_from(
    ["general.architecture", "general.alignment", "llama.block_count", "llama.vocab_size",
     "llama.context_length", "tokenizer.ggml.tokens", "tokenizer.chat_template",
     "general.name"]
) | st.text(max_size=12)  # fmt: skip


@st.composite
def _tensor(draw: st.DrawFn) -> bytes:
    n_dims = draw(st.integers(0, 5))
    dims = [draw(st.integers(0, 4096) | st.sampled_from([2**32, 2**63, 2**64 - 1]))
            for _ in range(n_dims)]  # fmt: skip
    type_id = draw(st.sampled_from(sorted(GGML_TYPES)) | st.integers(0, 2**32 - 1))
    offset = draw(st.integers(0, 4096).map(lambda n: n * 32) | st.integers(0, 2**64 - 1))
    name = draw(st.text(max_size=10)).encode()
    return (
        _string(name)
        + struct.pack("<I", n_dims)
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", type_id, offset)
    )


@st.composite
def _random_gguf(draw: st.DrawFn) -> tuple[bytes, int]:
    kvs = draw(st.lists(st.tuples(KEYS, _value()), max_size=8))
    tensors = draw(st.lists(_tensor(), max_size=4))
    version = draw(st.sampled_from([2, 3]) | st.integers(0, 2**32 - 1))
    n_tensors = draw(st.just(len(tensors)) | st.integers(0, 2**64 - 1))
    n_kv = draw(st.just(len(kvs)) | st.integers(0, 2**64 - 1))
    body = b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)
    body += b"".join(_string(k.encode("utf-8", "surrogatepass")) + v for k, v in kvs)
    body += b"".join(tensors)
    size = len(body) + draw(st.integers(0, 1 << 20))
    return body, size


@fuzz_settings(examples_scale=2)
@given(gguf=_random_gguf())
def test_random_metadata_and_tensor_tables_give_facts_or_a_precise_refusal(
    scratch: Path, gguf: tuple[bytes, int]
):
    body, size = gguf
    _check(_write(scratch, body, size))


# ---- what the fuzzers found, kept as plain regression tests --------------------------------
def _minimal(key: bytes, value: bytes) -> bytes:
    arch = _string(b"general.architecture") + struct.pack("<I", 8) + _string(b"llama")
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + arch + _string(key) + value


@pytest.mark.parametrize(
    "value",
    [
        struct.pack("<I", 8) + _string(b"many"),  # a string where a count belongs
        struct.pack("<I", 6) + struct.pack("<f", float("inf")),
        struct.pack("<I", 6) + struct.pack("<f", float("nan")),
        struct.pack("<IIQ", 9, 4, 2) + struct.pack("<II", 1, 2),  # an array
    ],
)
def test_a_vocab_size_of_the_wrong_type_is_ignored_not_a_crash(tmp_path: Path, value: bytes):
    facts = read_gguf(_write(tmp_path, _minimal(b"llama.vocab_size", value)))
    assert facts.vocab_size == 0


def test_a_huge_metadata_string_is_summarised_not_copied(tmp_path: Path):
    size = 300 * 2**20
    body = _minimal(b"general.name", struct.pack("<I", 8) + struct.pack("<Q", size - 200))
    path = _write(tmp_path, body, size)
    assert os.stat(path).st_blocks * 512 < 2**20, "sparse"
    result = _check(path)  # asserts the Python heap stays small
    assert isinstance(result, GGUFFile) and result.metadata["general.name"].length == size - 200
