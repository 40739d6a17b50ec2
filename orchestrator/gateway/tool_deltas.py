"""Tool calls put together from a generation's ToolCallDelta pieces, for the front doors
whose replies carry whole calls (Anthropic's tool_use blocks, Ollama's message.tool_calls).

The worker's contract (generation.proto, ToolCallDelta): calls are numbered by `index` in
the order the model made them; the first delta of a call carries its id and name, later ones
append to its arguments, and a call is complete when the generation ends. Pure code, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from llamaherd.v1 import generation_pb2 as gen_pb

from common.errors import Internal

CALL_PREFIX = "call_"


@dataclass
class AssembledCall:
    """One call: its id (the worker's `call_...`), function name and arguments JSON text."""

    id: str
    name: str
    arguments: str = ""

    def arguments_object(self) -> dict[str, Any]:
        """The arguments as the JSON object they are (an empty text is no arguments)."""
        return arguments_object(self.name, self.arguments)


class ToolCallAssembler:
    """Collects deltas by call index; `calls` are the calls so far, in the model's order."""

    def __init__(self) -> None:
        self._calls: dict[int, AssembledCall] = {}

    def add(self, deltas: Iterable[gen_pb.ToolCallDelta]) -> list[int]:
        """Adds a chunk's deltas; returns the indexes of calls this chunk started."""
        started = []
        for delta in deltas:
            call = self._calls.get(delta.index)
            if call is None:
                call = self._calls[delta.index] = AssembledCall(delta.id, delta.name)
                started.append(delta.index)
            else:
                call.id = call.id or delta.id
                call.name = call.name or delta.name
            call.arguments += delta.arguments
        return started

    def call(self, index: int) -> AssembledCall:
        return self._calls[index]

    @property
    def calls(self) -> list[AssembledCall]:
        return [self._calls[i] for i in sorted(self._calls)]


def assembled(chunks: Iterable[gen_pb.GenerationChunk]) -> list[AssembledCall]:
    """The whole calls of a finished generation's chunks."""
    assembler = ToolCallAssembler()
    for chunk in chunks:
        assembler.add(chunk.tool_calls)
    return assembler.calls


def arguments_object(name: str, arguments: str) -> dict[str, Any]:
    """A call's arguments JSON text as an object. The worker parses calls out of the model's
    output and sends only well-formed ones, so anything else is the worker's fault."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise Internal(f"the worker sent arguments of {name!r} that are not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Internal(f"the worker sent arguments of {name!r} that are not a JSON object")
    return value


def suffix_of(call_id: str) -> str:
    """The unique part of a worker call id (`call_` + hex), for ids in other APIs' forms."""
    return call_id.removeprefix(CALL_PREFIX)
