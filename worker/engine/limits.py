"""Limits on what one request may make the worker do, and the cheap checks that apply them.

A request is prepared (chat template rendered, JSON schema converted, grammar compiled,
text tokenized) on a bounded pool of threads, never on the event loop; these limits bound
how long and how much memory that preparation and the request's grammar may take. Each
check runs before the expensive step it protects, in time linear in the input, and a
request over a limit gets InvalidArgument naming the limit, its setting and the value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidArgument

# JSON-schema keywords whose value is a repetition count that the schema-to-grammar
# converter expands into as many grammar items.
REPETITION_KEYWORDS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
)


@dataclass(frozen=True)
class RequestLimits:
    """The worker settings of the same names (worker.config.WorkerSettings)."""

    max_prompt_bytes: int = 4 * 1024**2
    max_grammar_bytes: int = 16 * 1024
    max_schema_bytes: int = 64 * 1024
    max_json_depth: int = 64
    max_repetition: int = 2000
    max_template_iterations: int = 100_000
    max_sample_ms: float = 250.0
    prepare_timeout_s: float = 10.0

    @property
    def max_sample_s(self) -> float:
        return self.max_sample_ms / 1000.0


def check_text(what: str, text: str, limits: RequestLimits) -> None:
    """Refuses a text to tokenize that is larger than max_prompt_bytes.

    Counts characters first (cheap) and encodes only when the count alone cannot decide."""
    limit = limits.max_prompt_bytes
    if len(text) * 4 <= limit:  # at most 4 UTF-8 bytes a character
        return
    size = len(text) if len(text) > limit else len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise InvalidArgument(
            f"{what} is {size} bytes; the worker tokenizes at most {limit} bytes per text "
            "(max_prompt_bytes)"
        )


def check_size(what: str, size: int, limit: int, setting: str) -> None:
    """Refuses `size` bytes of `what` when over `limit` (the worker setting `setting`)."""
    if size > limit:
        raise InvalidArgument(f"{what} is {size} bytes; the limit is {limit} bytes ({setting})")


def json_depth(text: str) -> int:
    """How deeply the JSON text nests arrays and objects, found without parsing it (the
    parser recurses, so a deep document would exhaust the stack before any check)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_schema(text: str, limits: RequestLimits) -> Any:
    """The JSON schema of a request, parsed once it has passed the size, depth and
    repetition limits; what is not JSON is refused with the parser's reason."""
    check_size(
        "constraint.json_schema", len(text.encode("utf-8", "surrogatepass")),
        limits.max_schema_bytes, "max_schema_bytes",
    )  # fmt: skip
    depth = json_depth(text)
    if depth > limits.max_json_depth:
        raise InvalidArgument(
            f"constraint.json_schema nests {depth} levels deep; the limit is "
            f"{limits.max_json_depth} (max_json_depth)"
        )
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"constraint.json_schema is not valid JSON: {exc}") from exc
    for path, keyword, value in _repetitions(schema, "$"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value > limits.max_repetition:
            raise InvalidArgument(
                f"constraint.json_schema {path}.{keyword} is {value}; the limit is "
                f"{limits.max_repetition} (max_repetition)"
            )
    return schema


def _repetitions(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """Every repetition keyword in a parsed schema, with where it is (iteratively: the
    depth is already bounded, but a wide schema must not cost recursion either)."""
    stack = [(node, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in REPETITION_KEYWORDS:
                    yield where, key, value
                stack.append((value, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((value, f"{where}[{i}]") for i, value in enumerate(item))
