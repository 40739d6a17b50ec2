"""The GGUF summary the store indexes, from real GGUF headers (the gguf package writes them)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from support.gguf_files import write_gguf

from common.gguf import read_gguf
from orchestrator.store.summary import summarise


def test_the_file_type_names_the_quantization(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", extra_uint32={"general.file_type": 15})
    assert summarise(read_gguf(path)).quantization == "Q4_K_M"


def test_without_a_file_type_the_largest_tensor_type_names_it(tmp_path: Path) -> None:
    tensors = {
        "small": np.zeros((4, 32), np.float32),  # 512 bytes
        "big": np.zeros((64, 64), np.float16),  # 8 KiB
    }
    path = write_gguf(tmp_path / "m.gguf", tensors=tensors)
    summary = summarise(read_gguf(path))
    assert summary.quantization == "F16"
    assert summary.parameters == 4 * 32 + 64 * 64


def test_a_chat_template_and_a_stated_parameter_count(tmp_path: Path) -> None:
    path = tmp_path / "chat.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_block_count(24)
    writer.add_context_length(32768)
    writer.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    writer.add_uint64("general.parameter_count", 494_032_768)
    writer.add_tensor("t", np.zeros((2, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    summary = summarise(read_gguf(path))
    assert summary.architecture == "qwen2"
    assert (summary.n_layers, summary.context_length) == (24, 32768)
    assert summary.has_chat_template is True
    assert summary.parameters == 494_032_768


def test_values_of_the_wrong_type_count_as_absent(tmp_path: Path) -> None:
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("llama.block_count", "many")
    writer.add_tensor("t", np.zeros((2, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    summary = summarise(read_gguf(path))
    assert (summary.n_layers, summary.context_length, summary.has_chat_template) == (0, 0, False)
