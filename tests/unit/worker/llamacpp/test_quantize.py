"""`llamaherd models quantize`'s refusals, before llama.cpp is called: each one line, exit 2.
The quantization itself is in tests/integration/worker/test_quant_tools.py."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from support.gguf_files import write_gguf

from common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from common.gguf import read_gguf
from orchestrator.cli import main
from worker.llamacpp.quantize import (
    FILE_TYPES,
    QuantizeRequest,
    check_request,
    parse_file_type,
    quantized_type,
)

LLAMA_FTYPE_MOSTLY_F16 = 1
LLAMA_FTYPE_MOSTLY_Q4_K_M = 15


def _f16(path: Path) -> Path:
    return write_gguf(path, extra_uint32={"general.file_type": LLAMA_FTYPE_MOSTLY_F16})


def test_types_are_llama_quantizes_names_in_any_case():
    assert parse_file_type("q4_k_m") == "Q4_K_M"
    assert {"F16", "Q8_0", "Q5_K_M", "Q4_K_M", "BF16", "F32"} <= set(FILE_TYPES)


def test_an_unknown_type_is_refused_with_the_valid_ones():
    with pytest.raises(InvalidArgument) as caught:
        parse_file_type("Q9_K")
    assert "unknown quantization type 'Q9_K'" in caught.value.message
    assert "Q4_K_M" in caught.value.message and "Q8_0" in caught.value.message


def test_a_missing_source_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="does not exist"):
        check_request(QuantizeRequest(tmp_path / "none.gguf", tmp_path / "out.gguf", "Q8_0"))


def test_a_source_that_is_not_gguf_is_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model, but long enough to have a header's worth of bytes")
    with pytest.raises(InvalidArgument, match="not a valid GGUF file"):
        check_request(QuantizeRequest(text, tmp_path / "out.gguf", "Q8_0"))


def test_an_existing_destination_is_refused_unless_forced(tmp_path):
    src, dst = _f16(tmp_path / "f16.gguf"), tmp_path / "out.gguf"
    dst.write_bytes(b"mine")
    with pytest.raises(AlreadyExists, match="pass --force"):
        check_request(QuantizeRequest(src, dst, "Q8_0"))
    check_request(QuantizeRequest(src, dst, "Q8_0", force=True))


def test_the_source_as_destination_is_refused_even_forced(tmp_path):
    src = _f16(tmp_path / "f16.gguf")
    with pytest.raises(InvalidArgument, match="destination is the source"):
        check_request(QuantizeRequest(src, src, "Q8_0", force=True))


def test_a_quantized_source_is_refused_unless_requantizing_is_allowed(tmp_path):
    src = write_gguf(
        tmp_path / "q4.gguf", extra_uint32={"general.file_type": LLAMA_FTYPE_MOSTLY_Q4_K_M}
    )
    request = QuantizeRequest(src, tmp_path / "out.gguf", "Q8_0")
    with pytest.raises(FailedPrecondition) as caught:
        check_request(request)
    assert "already quantized (Q4_K_M)" in caught.value.message
    assert "--allow-requantize" in caught.value.message
    check_request(QuantizeRequest(src, tmp_path / "out.gguf", "Q8_0", allow_requantize=True))


def test_full_precision_files_are_not_quantized(tmp_path):
    assert quantized_type(read_gguf(_f16(tmp_path / "f16.gguf"))) is None
    # No general.file_type: the tensor types decide (write_gguf's tensors are F32).
    assert quantized_type(read_gguf(write_gguf(tmp_path / "f32.gguf"))) is None


def test_without_a_file_type_a_quantized_tensor_marks_the_file(tmp_path):
    # One Q8_0 row: 32 weights in 34 bytes (an f16 scale and 32 int8).
    raw = np.zeros((4, 34), np.uint8)
    path = tmp_path / "q8.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", raw, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert quantized_type(read_gguf(path)) == "Q8_0"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--type", "Q9"], "unknown quantization type 'Q9'; valid types: BF16,"),
        (["--type", "Q8_0", "--src", "missing.gguf"], "missing.gguf does not exist"),
        (["--type", "Q8_0", "--dst", "taken.gguf"], "taken.gguf exists; pass --force"),
        (["--type", "Q8_0", "--src", "q4.gguf"], "is already quantized (Q4_K_M)"),
    ],
)
def test_the_command_refuses_in_one_line_with_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    _f16(tmp_path / "f16.gguf")
    write_gguf(tmp_path / "q4.gguf", extra_uint32={"general.file_type": LLAMA_FTYPE_MOSTLY_Q4_K_M})
    (tmp_path / "taken.gguf").write_bytes(b"mine")
    src, dst = "f16.gguf", "out.gguf"
    rest: list[str] = []
    pairs = iter(args)
    for flag in pairs:
        value = next(pairs)
        if flag == "--src":
            src = value
        elif flag == "--dst":
            dst = value
        else:
            rest += [flag, value]
    assert main(["models", "quantize", src, dst, *rest]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llamaherd models quantize: ")
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "out.gguf").exists()
