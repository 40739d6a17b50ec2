"""The node's description on the wire: NodeSample <-> NodeTelemetry (by field name) and
HardwareInfo <-> Hardware. Light on imports, so the coordinator can use it without loading
llama.cpp.

The proto messages in telemetry.proto mirror the dataclasses in samples.py field for field,
so one generic converter serves both directions: nested dataclasses become messages, tuples
become repeated fields and None leaves an `optional` field unset. A field added to one side
but not the other fails the round-trip test rather than silently dropping data.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from google.protobuf.message import Message
from llamaherd.v1 import cluster_pb2 as cl_pb
from llamaherd.v1 import telemetry_pb2 as t_pb

from common.hardware import HardwareInfo
from common.telemetry import NodeSample

T = TypeVar("T")


def sample_to_proto(sample: NodeSample) -> t_pb.NodeTelemetry:
    message = t_pb.NodeTelemetry()
    _fill(message, sample)
    return message


def sample_from_proto(message: t_pb.NodeTelemetry) -> NodeSample:
    return _build(NodeSample, message)


def _fill(message: Message, value: Any) -> None:
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if item is None:
            continue
        if dataclasses.is_dataclass(item):
            _fill(getattr(message, f.name), item)
        elif isinstance(item, tuple):
            target = getattr(message, f.name)
            for element in item:
                if dataclasses.is_dataclass(element):
                    _fill(target.add(), element)
                else:
                    target.append(element)
        else:
            setattr(message, f.name, item)


def _build(cls: type[T], message: Message) -> T:
    values: dict[str, Any] = {}
    for field in _fields(cls):
        values[field.name] = _value(field, message)
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class _Field:
    """What decoding one dataclass field needs, read once from its type hint."""

    name: str
    optional: bool  # `X | None`: an unset optional proto field is None
    repeated: bool  # `tuple[X, ...]`
    nested: type | None  # the dataclass of the field (or of its elements), if any


def _value(field: _Field, message: Message) -> Any:
    name = field.name
    if (
        field.optional
        and message.DESCRIPTOR.fields_by_name[name].has_presence
        and not message.HasField(name)
    ):
        return None
    raw = getattr(message, name)
    if field.repeated:
        if field.nested is not None:
            return tuple(_build(field.nested, m) for m in raw)
        return tuple(raw)
    if field.nested is not None:
        return _build(field.nested, raw)
    return raw


_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _fields(cls: type) -> tuple[_Field, ...]:
    # Inspecting the type hints on every report was most of a heartbeat's decoding time
    # at fleet scale (tests/bench/simulate_fleet.py): done once per class.
    if cls not in _FIELDS:
        hints = _hints(cls)
        fields: list[_Field] = []
        for f in dataclasses.fields(cls):
            inner, optional = _unwrap_optional(hints[f.name])
            repeated = typing.get_origin(inner) is tuple
            target = typing.get_args(inner)[0] if repeated else inner
            nested = (
                target if isinstance(target, type) and dataclasses.is_dataclass(target) else None
            )
            fields.append(_Field(f.name, optional, repeated, nested))
        _FIELDS[cls] = tuple(fields)
    return _FIELDS[cls]


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    # Resolving string annotations is slow enough to matter at one sample a second.
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def hardware_to_proto(hardware: HardwareInfo) -> cl_pb.Hardware:
    return cl_pb.Hardware(
        kind=hardware.kind,
        model=hardware.model,
        cpu_cores=hardware.cpu_cores,
        memory_total_bytes=hardware.memory_total,
        gpu_memory_total_bytes=hardware.gpu_memory_total,
        backends=hardware.backends,
        labels=sorted(hardware.labels),
        unified_memory=hardware.unified_memory,
        compute_capability=hardware.compute_capability,
        cpu_features=hardware.cpu_features,
        gpus=hardware.gpus,
        reference_decode_tokens_per_second=hardware.reference_decode_tps,
        jetson_module=hardware.jetson_module,
        jetpack=hardware.jetpack,
        l4t=hardware.l4t,
        telemetry_sources=hardware.telemetry_sources,
        telemetry_skipped=hardware.telemetry_skipped,
    )


def hardware_from_proto(message: cl_pb.Hardware) -> HardwareInfo:
    return HardwareInfo(
        kind=message.kind or "unknown",
        model=message.model,
        cpu_cores=message.cpu_cores,
        memory_total=message.memory_total_bytes,
        gpu_memory_total=message.gpu_memory_total_bytes,
        backends=tuple(message.backends),
        unified_memory=message.unified_memory,
        compute_capability=message.compute_capability,
        cpu_features=tuple(message.cpu_features),
        gpus=tuple(message.gpus),
        reference_decode_tps=message.reference_decode_tokens_per_second,
        jetson_module=message.jetson_module,
        jetpack=message.jetpack,
        l4t=message.l4t,
        telemetry_sources=tuple(message.telemetry_sources),
        telemetry_skipped=tuple(message.telemetry_skipped),
        labels=frozenset(message.labels),
    )
