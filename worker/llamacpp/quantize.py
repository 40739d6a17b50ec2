"""Quantizes a GGUF model with llama.cpp's own quantizer (`llama_model_quantize`).

What llama-quantize does, from Python: the same C function and defaults, so a file made here
is byte-for-byte what `llama-quantize SRC DST TYPE` makes with the same thread count. The
checks before the call (`check_request`) are pure: they read the source's GGUF header with
common.gguf and refuse a missing or non-GGUF source, an existing destination, an unknown
type, and an already quantized source (requantizing loses quality twice; llama.cpp itself
refuses it unless asked), each with a message that names the problem.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from llama_cpp import llama_cpp as C

from common.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument
from common.gguf import GGUFFile, read_gguf
from worker.llamacpp import ensure_backend, log


def _file_types() -> dict[str, int]:
    """llama_ftype names as llama-quantize spells them (Q4_K_M, Q8_0, F16...) -> value,
    read from the bindings so a newer llama.cpp's types appear without a change here."""
    types = {"F32": int(C.LLAMA_FTYPE_ALL_F32)}
    for name in dir(C):
        if name.startswith("LLAMA_FTYPE_MOSTLY_"):
            types[name.removeprefix("LLAMA_FTYPE_MOSTLY_")] = int(getattr(C, name))
    return types


# Every --type the quantizer accepts, by name.
FILE_TYPES: Mapping[str, int] = _file_types()
_TYPE_NAMES = {value: name for name, value in FILE_TYPES.items()}
# Tensor types that carry full-precision weights: a file made of these is not quantized.
_UNQUANTIZED_TENSORS = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}
# llama.cpp's per-tensor progress line: "[  12/ 236] blk.1.attn_k.weight - [...], type = ..."
_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")


@dataclass(frozen=True)
class QuantizeRequest:
    src: Path
    dst: Path
    file_type: str
    allow_requantize: bool = False
    force: bool = False
    threads: int = 0  # 0: llama.cpp's default (the hardware's thread count)


@dataclass(frozen=True)
class QuantizeResult:
    src: Path
    dst: Path
    file_type: str
    src_bytes: int
    dst_bytes: int
    seconds: float


# (tensors done, tensors in all, name of the tensor just written)
TensorProgress = Callable[[int, int, str], None]


def parse_file_type(name: str) -> str:
    """The canonical spelling of a --type, or InvalidArgument listing the valid ones."""
    canonical = name.strip().upper()
    if canonical not in FILE_TYPES:
        valid = ", ".join(sorted(FILE_TYPES))
        raise InvalidArgument(f"unknown quantization type {name!r}; valid types: {valid}")
    return canonical


def quantized_type(info: GGUFFile) -> str | None:
    """The quantized type of a model file ("Q4_K_M", or the first quantized tensor type when
    the file does not say), or None when its weights are full precision (F32/F16/BF16)."""
    file_type = info.metadata.get("general.file_type")
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        name = _TYPE_NAMES.get(file_type)
        if name is not None:
            return None if name in _UNQUANTIZED_TENSORS else name
    for tensor in info.tensors:
        if tensor.type_name not in _UNQUANTIZED_TENSORS:
            return tensor.type_name
    return None


def check_request(request: QuantizeRequest) -> GGUFFile:
    """Refuses a request llama.cpp should not be handed; returns the source's header.

    Raises InvalidArgument (missing, non-GGUF or unreadable source; unknown type),
    AlreadyExists (destination present, no force) or FailedPrecondition (source quantized
    already, no allow_requantize)."""
    parse_file_type(request.file_type)
    if not request.src.exists():
        raise InvalidArgument(f"{request.src} does not exist")
    info = read_gguf(request.src)  # InvalidModelFile (an InvalidArgument) names the problem
    if request.dst.exists() and not request.force:
        raise AlreadyExists(f"{request.dst} exists; pass --force to overwrite it")
    if request.dst.resolve() == request.src.resolve():
        raise InvalidArgument("the destination is the source; write to another file")
    already = quantized_type(info)
    if already is not None and not request.allow_requantize:
        raise FailedPrecondition(
            f"{request.src} is already quantized ({already}); quantize its F16/F32 original, "
            "or pass --allow-requantize (quality suffers twice)"
        )
    return info


class _TensorLines(logging.Handler):
    """Turns llama.cpp's per-tensor log lines into progress calls."""

    def __init__(self, on_tensor: TensorProgress) -> None:
        super().__init__(logging.DEBUG)
        self._on_tensor = on_tensor

    def emit(self, record: logging.LogRecord) -> None:
        match = _TENSOR_LINE.match(record.getMessage())
        if match:
            self._on_tensor(int(match[1]), int(match[2]), match[3])


@contextmanager
def _watch_tensors(on_tensor: TensorProgress | None) -> Iterator[None]:
    # llama.cpp logs each tensor at INFO, which worker.llamacpp.log forwards at DEBUG: lower
    # the llama.cpp logger's level for the call so the records reach the handler.
    if on_tensor is None:
        yield
        return
    logger = logging.getLogger("llama.cpp")
    handler, level = _TensorLines(on_tensor), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def quantize(request: QuantizeRequest, on_tensor: TensorProgress | None = None) -> None:
    """Runs llama.cpp's quantizer; blocks until it is done. Call check_request first.

    Raises Internal with llama.cpp's reason when it fails (a type that needs an importance
    matrix, say); a partial destination is removed then."""
    ensure_backend()
    params = C.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[parse_file_type(request.file_type)]
    params.nthread = request.threads
    params.allow_requantize = request.allow_requantize
    with log.capture() as lines, _watch_tensors(on_tensor):
        rc = C.llama_model_quantize(
            str(request.src).encode(), str(request.dst).encode(), ctypes.byref(params)
        )
    if rc != 0:
        request.dst.unlink(missing_ok=True)
        raise Internal(f"llama.cpp could not quantize {request.src}: {log.reason(lines, 'failed')}")


def quantize_in_thread(
    request: QuantizeRequest, on_tensor: TensorProgress | None = None
) -> tuple[threading.Thread, list[BaseException]]:
    """Starts quantize() on a daemon thread, so the caller's thread stays free to draw
    progress and take Ctrl-C (a C call cannot be interrupted). Returns the thread and a list
    that holds its exception, if it raised one."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            quantize(request, on_tensor)
        except BaseException as exc:  # handed to the caller's thread as is
            errors.append(exc)

    thread = threading.Thread(target=work, name="llama-quantize", daemon=True)
    thread.start()
    return thread, errors
