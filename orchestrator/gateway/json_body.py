"""Reading an HTTP request's JSON body: within a size, a time and a nesting depth, and with
text that can travel on (no lone UTF-16 surrogates).

Python's json module accepts `"\\ud800"` (a lone surrogate escape) and returns a str that no
UTF-8 encoder takes: protobuf, a worker and a tokenizer would all fail on it later, as a
500. It also recurses once per nesting level, so a few thousand `[` raise RecursionError.
Both are the client's mistakes, refused here as 400 naming the problem and the field.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from orchestrator.gateway.errors import BadRequest

MAX_BODY_BYTES = 16 * 1024 * 1024
# Deeper than any OpenAI request needs (a JSON schema in response_format nests a few
# levels per object), far below where Python's parser runs out of stack.
MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")
# Union members pydantic names in an error's location; not fields ("str", "list").
_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict"}
Body = TypeVar("Body", bound=BaseModel)


class BodyTimeout(BadRequest):
    """The client did not send its whole body in time: 408, and the connection closes."""

    http_status = 408


async def read_body(
    chunks: AsyncIterator[bytes], declared_length: int | None, timeout_s: float
) -> bytes:
    """The body from `chunks` (the ASGI body messages), at most MAX_BODY_BYTES, all of it
    within `timeout_s`: a client that stops sending mid-body must not hold a connection."""
    if declared_length is not None and declared_length > MAX_BODY_BYTES:
        raise _too_large()
    try:
        return await asyncio.wait_for(_gather(chunks), timeout_s)
    except asyncio.TimeoutError:
        raise BodyTimeout(
            f"the request body did not arrive within {timeout_s:g} s; send it whole, "
            "with a correct Content-Length"
        ) from None


async def _gather(chunks: AsyncIterator[bytes]) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _too_large()
    return bytes(body)


def _too_large() -> BadRequest:
    return BadRequest(f"request body is larger than {MAX_BODY_BYTES // 2**20} MiB")


def parse_json(raw: bytes) -> Any:
    """The JSON document in `raw`, refused (BadRequest) when it is not JSON, nests deeper
    than MAX_DEPTH or holds a lone surrogate in any string (the error names the field)."""
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
    check_document(document)
    return document


def check_document(document: Any) -> None:
    """Walks the document without recursion (it may be deep) and refuses what parse_json
    describes."""
    pending: list[tuple[Any, str, int]] = [(document, "", 0)]
    while pending:
        value, path, depth = pending.pop()
        if isinstance(value, str):
            _check_text(value, path or "body")
            continue
        if isinstance(value, dict | list) and depth >= MAX_DEPTH:
            raise _too_deep()
        if isinstance(value, dict):
            for key, item in value.items():
                # The path goes into the error message: escape what UTF-8 cannot carry.
                name = key.encode("utf-8", "backslashreplace").decode("utf-8")
                field = f"{path}.{name}" if path else name
                _check_text(key, f"the name of field {field}")
                pending.append((item, field, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))


def _check_text(text: str, field: str) -> None:
    if not text.isascii() and _SURROGATE.search(text):
        raise BadRequest(
            f"{field} holds a lone UTF-16 surrogate (\\ud800-\\udfff not in a valid pair): "
            "not text; encode the string as valid Unicode",
            param=field,
        )


def _too_deep() -> BadRequest:
    return BadRequest(f"request body nests JSON more than {MAX_DEPTH} levels deep")


def validated(model: type[Body], body: object) -> Body:
    """`body` (a parsed JSON body) as `model`; its first problem as a 400 naming the field,
    e.g. `messages[0].role: Input should be 'user' or 'assistant'`."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        return model.model_validate(body)
    except PydanticValidationError as exc:
        error = exc.errors()[0]
        where = field_path(error["loc"])
        raise BadRequest(f"{where}: {error['msg']}", where) from None


def field_path(loc: tuple[int | str, ...]) -> str:
    """`messages[0].role` from pydantic's error location, without the union members it
    names on the way ("str", "list[_Message]")."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.isidentifier() and part.islower() and part not in _TYPE_NAMES:
            text += f".{part}" if text else part
    return text or "body"
