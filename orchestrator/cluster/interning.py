"""Equal parts of node reports shared as one object in the registry.

Every heartbeat decodes into new objects, so a 10,000-node snapshot held 10,000 equal
copies of each board's hardware description and of each catalog model's load settings.
Sharing one instance per value costs a dictionary lookup per report and makes every
snapshot smaller in memory and on the wire: pickle writes a shared object once and then
refers to it, so a snapshot update to the gateways (orchestrator.cluster.feed) shrinks by
about a quarter and decodes a third faster (tests/bench/simulate_fleet.py). Only frozen
values are shared, so no reader can tell.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from orchestrator.cluster.types import Node

T = TypeVar("T")

LIMIT = 65_536  # distinct values kept; past it the table starts afresh (no leak)


class Interner:
    """The shared instance of each distinct hardware description and model config seen."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._values: dict[object, object] = {}

    def node(self, node: Node) -> Node:
        """`node`, equal in every field, with its hardware and its models' configs shared."""
        status = node.status
        hardware = self._shared(status.hardware)
        models = tuple(
            model if (config := self._shared(model.config)) is model.config
            else dataclasses.replace(model, config=config)
            for model in status.models
        )  # fmt: skip
        if hardware is status.hardware and all(
            a is b for a, b in zip(models, status.models, strict=True)
        ):
            return node
        return dataclasses.replace(
            node, status=dataclasses.replace(status, hardware=hardware, models=models)
        )

    def _shared(self, value: T) -> T:
        found = self._values.get(value)
        if found is not None:
            return found  # type: ignore[return-value]  # equal to value, so of its type
        if len(self._values) >= self._limit:
            self._values.clear()
        self._values[value] = value
        return value
