"""Model settings and memory estimates to and from their wire form (ModelSpec, MemoryEstimate).

Derived from the fields themselves, so a setting added to ModelConfig and to ModelSpec under
the same name needs no change here (tests/unit/common/wire/test_models.py checks that the two
field sets agree).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from google.protobuf.json_format import MessageToDict
from llamaherd.v1 import worker_pb2 as w_pb

from common.memory import MemoryEstimate
from common.model_settings import ModelConfig


def model_config_to_proto(config: ModelConfig, *, only_set: bool = False) -> w_pb.ModelSpec:
    """Unset (None) settings stay unset, so the receiving worker applies its own defaults.

    With `only_set`, so do the settings the config never set (a catalog entry's, from the
    coordinator): a worker's own defaults apply, whatever version the coordinator runs.
    """
    settings = config.model_dump(exclude_none=True, exclude_unset=only_set)
    return w_pb.ModelSpec(**model_spec_fields(settings))


def model_spec_fields(settings: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig-shaped settings as ModelSpec constructor arguments (enums by value)."""
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in settings.items()}


def model_spec_to_dict(spec: w_pb.ModelSpec) -> dict[str, Any]:
    """The settings a ModelSpec sets, by field name, for ModelConfig.model_validate; fields
    left unset are absent, so ModelConfig's defaults apply."""
    settings = MessageToDict(spec, preserving_proto_field_name=True)
    if spec.HasField("source"):
        # The nested message field by field: MessageToDict writes uint64 as a JSON string.
        source = spec.source
        settings["source"] = {
            "name": source.name,
            "sha256": source.sha256,
            "size_bytes": source.size_bytes,
            "urls": tuple(source.urls),
        }
    return settings


def estimate_to_proto(estimate: MemoryEstimate) -> w_pb.MemoryEstimate:
    return w_pb.MemoryEstimate(total_bytes=estimate.total_bytes, **dataclasses.asdict(estimate))


def estimate_from_proto(reply: w_pb.MemoryEstimate) -> MemoryEstimate:
    return MemoryEstimate(
        **{f.name: getattr(reply, f.name) for f in dataclasses.fields(MemoryEstimate)}
    )
