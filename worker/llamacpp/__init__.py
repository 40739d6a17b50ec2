"""A small typed layer over llama.cpp's C API (through llama-cpp-python's ctypes bindings).

The worker drives llama.cpp directly instead of through llama-cpp-python's high-level
`Llama` object: it needs its own batching, per-request samplers and KV bookkeeping, and the
high-level object redirects the process's stdout/stderr while loading, which would silence
every other thread of a server. Everything that touches a raw pointer lives in this package.
"""

from __future__ import annotations

import threading
from typing import Any

from llama_cpp import llama_cpp as C

from worker.llamacpp import log

# A raw llama.cpp pointer (model, context, vocab, sampler). The ctypes bindings are untyped,
# and nothing outside this package may hold one.
Handle = Any

_backend_lock = threading.Lock()
_backend_ready = False


def ensure_backend() -> None:
    """Initialises llama.cpp once per process and routes its log to Python logging."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            log.install()
            C.llama_backend_init()
            _backend_ready = True


def system_info() -> str:
    ensure_backend()
    info: bytes = C.llama_print_system_info()
    return info.decode("utf-8", errors="replace").strip()


def supports_rpc() -> bool:
    """Whether this llama.cpp build has the ggml RPC backend (layer pipelining needs it)."""
    return bool(C.llama_supports_rpc())
