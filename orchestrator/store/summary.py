"""A GGUF file's model in a few facts (architecture, size, quantization, layers, context),
read from its header by common.gguf: pure, no weights loaded."""

from __future__ import annotations

from collections import Counter
from math import prod
from typing import Any

from common.gguf import GGUFFile
from orchestrator.store.index import GgufSummary

# llama.cpp's llama_ftype (include/llama.h), the value of `general.file_type`, without its
# LLAMA_FTYPE_MOSTLY_ prefix: what quantization tools call the file's type.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
}  # fmt: skip


def summarise(gguf: GGUFFile) -> GgufSummary:
    """The summary the store indexes; a value the file does not state is 0 or ''."""
    return GgufSummary(
        architecture=gguf.architecture,
        parameters=_parameters(gguf),
        quantization=_quantization(gguf),
        n_layers=_count(gguf.arch_value("block_count")),
        context_length=_count(gguf.arch_value("context_length")),
        has_chat_template=gguf.chat_template is not None,
    )


def _count(value: Any) -> int:
    """A metadata value that should be a count: any other type (a file may put any type
    under any key) counts as absent."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _parameters(gguf: GGUFFile) -> int:
    stated = _count(gguf.metadata.get("general.parameter_count"))
    return stated or sum(prod(t.shape) for t in gguf.tensors)


def _quantization(gguf: GGUFFile) -> str:
    file_type = gguf.metadata.get("general.file_type")
    if isinstance(file_type, int) and file_type in FILE_TYPES:
        return FILE_TYPES[file_type]
    # No (known) file type: name the tensor type holding most of the bytes.
    by_type: Counter[str] = Counter()
    for tensor in gguf.tensors:
        by_type[tensor.type_name] += tensor.n_bytes
    return by_type.most_common(1)[0][0] if by_type else ""
