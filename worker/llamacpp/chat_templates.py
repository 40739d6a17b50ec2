"""llama.cpp's built-in chat templates (llama_chat_apply_template), which need no Jinja.

The template logic lives in llama.cpp; worker.models.chat chooses which template a model
uses and turns refusals into client errors.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from llama_cpp import llama_cpp as C


def builtin_template_names() -> list[str]:
    """The names llama_chat_apply_template knows (chatml, gemma, llama3, ...)."""
    count = C.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * count)()
    C.llama_chat_builtin_templates(names, count)
    return [n.decode() for n in names if n]


def apply_builtin_template(name: str, messages: Sequence[tuple[str, str]]) -> str | None:
    """Renders (role, content) pairs with the built-in template `name`, ending with the
    assistant's turn opened; None if llama.cpp refuses (unknown template or messages)."""
    encoded = [(role.encode(), content.encode()) for role, content in messages]
    chat = (C.llama_chat_message * len(encoded))()
    for slot, (role, content) in zip(chat, encoded, strict=True):
        slot.role = role
        slot.content = content
    # A first guess that fits most chats; llama.cpp reports the size it needs otherwise.
    size = sum(len(r) + len(c) for r, c in encoded) * 2 + 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = C.llama_chat_apply_template(name.encode(), chat, len(encoded), True, buf, size)
        if n < 0:
            return None
        if n <= size:
            return buf.raw[:n].decode("utf-8", errors="replace")
        size = n
