"""Routes llama.cpp's log into Python logging, and lets a caller capture its own errors.

llama.cpp reports why it refused something (a bad grammar, an unknown architecture) only in
its log. `capture()` collects the warning and error lines emitted on the calling thread
while a call runs, so the refusal can name llama.cpp's reason instead of "failed".
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from llama_cpp import llama_cpp as C

logger = logging.getLogger("llama.cpp")

# ggml_log_level (ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5) -> logging level.
# llama.cpp's INFO is a per-tensor narrative of every load: DEBUG here. Its WARN is mostly
# advisory ("n_ctx < n_ctx_train"): INFO.
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.ERROR}
_CONTINUE = 5

_local = threading.local()
_installed = False
_install_lock = threading.Lock()


def _pending() -> list[str]:
    if not hasattr(_local, "parts"):
        _local.parts = []
        _local.level = logging.DEBUG
    parts: list[str] = _local.parts
    return parts


@C.llama_log_callback  # type: ignore[untyped-decorator]
def _on_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    parts = _pending()
    if level != _CONTINUE:
        _local.level = _LEVELS.get(level, logging.DEBUG)
    parts.append(text.decode("utf-8", errors="replace"))
    if not parts[-1].endswith("\n"):
        return
    line = "".join(parts).rstrip()
    parts.clear()
    if not line:
        return
    lvl: int = _local.level
    sink: list[tuple[int, str]] | None = getattr(_local, "capture", None)
    if sink is not None and lvl >= logging.INFO:
        sink.append((lvl, line))
    logger.log(lvl, "%s", line)


def install() -> None:
    """Points llama.cpp's log at `_on_log` (once per process)."""
    global _installed
    with _install_lock:
        if not _installed:
            C.llama_log_set(_on_log, ctypes.c_void_p(0))
            _installed = True


@contextmanager
def capture() -> Iterator[list[tuple[int, str]]]:
    """Collects llama.cpp warnings and errors (level, line) logged by this thread in the block."""
    previous = getattr(_local, "capture", None)
    lines: list[tuple[int, str]] = []
    _local.capture = lines
    try:
        yield lines
    finally:
        _local.capture = previous


def reason(lines: list[tuple[int, str]], default: str) -> str:
    """The errors among the captured lines (warnings if there are none), for a message."""
    errors = [line for level, line in lines if level >= logging.ERROR]
    chosen = errors or [line for _, line in lines]
    # Drop llama.cpp's "function_name: " prefixes; keep at most the last three lines.
    texts = [line.split(": ", 1)[-1] for line in chosen[-3:]]
    return "; ".join(dict.fromkeys(texts)) if texts else default
