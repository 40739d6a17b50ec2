"""Model settings and estimates survive the wire, field by field."""

from __future__ import annotations

import dataclasses

import pytest
from llamaherd.v1 import worker_pb2 as w_pb
from pydantic import ValidationError

from common.memory import MemoryEstimate
from common.model_settings import FlashAttention, ModelConfig, ModelSource, Pooling
from common.wire.models import (
    estimate_from_proto,
    estimate_to_proto,
    model_config_to_proto,
    model_spec_to_dict,
)


def test_model_settings_and_model_spec_have_the_same_fields() -> None:
    # A setting added to one but not the other would silently never cross the wire.
    assert set(ModelConfig.model_fields) == {f.name for f in w_pb.ModelSpec.DESCRIPTOR.fields}


def test_every_setting_round_trips() -> None:
    config = ModelConfig(
        alias="m", path="/models/m.gguf", n_ctx=2048, n_gpu_layers=-1, n_threads=3,
        n_threads_batch=5, n_batch=256, flash_attn=FlashAttention.OFF, chat_format="chatml",
        chat_template="{{ x }}", embedding=True, pooling=Pooling.CLS, n_parallel=2,
        max_queue=7, rpc_servers=("10.0.0.2:50052",), tensor_split=(1.0, 2.0),
    )  # fmt: skip
    back = ModelConfig.model_validate(model_spec_to_dict(model_config_to_proto(config)))
    assert back == config


def test_unset_settings_stay_unset_so_the_worker_applies_its_defaults() -> None:
    spec = model_config_to_proto(ModelConfig(alias="m", path="/m.gguf"))
    assert not spec.HasField("n_threads") and not spec.HasField("n_threads_batch")
    assert ModelConfig.model_validate(model_spec_to_dict(spec)).n_threads is None


def test_only_set_leaves_the_defaults_to_the_worker() -> None:
    config = ModelConfig.model_validate({"alias": "m", "path": "/m.gguf", "n_ctx": 2048})
    spec = model_config_to_proto(config, only_set=True)
    assert [f.name for f, _ in spec.ListFields()] == ["alias", "path", "n_ctx"]
    assert ModelConfig.model_validate(model_spec_to_dict(spec)) == config


def test_an_estimate_round_trips_with_its_total() -> None:
    estimate = MemoryEstimate(1, 2, 3, n_layers=4, layer_weights_bytes=5,
                              layer_kv_cache_bytes=6, layer_compute_bytes=7)  # fmt: skip
    wire = estimate_to_proto(estimate)
    assert wire.total_bytes == 6
    assert estimate_from_proto(wire) == estimate
    assert {f.name for f in dataclasses.fields(MemoryEstimate)} | {"total_bytes"} == {
        f.name for f in w_pb.MemoryEstimate.DESCRIPTOR.fields
    }


SHA = "0123456789abcdef" * 4


def _source(**changes: object) -> ModelSource:
    fields: dict[str, object] = {
        "name": "llama-3-8b.q4", "sha256": SHA, "size_bytes": 5 << 30,
        "urls": ("http://10.0.0.6:9100", "https://store:8002"),
    }  # fmt: skip
    return ModelSource.model_validate(fields | changes)


def test_model_source_and_its_message_have_the_same_fields() -> None:
    assert set(ModelSource.model_fields) == {f.name for f in w_pb.ModelSource.DESCRIPTOR.fields}


def test_a_store_model_round_trips_with_its_source() -> None:
    config = ModelConfig(alias="m", path="store:llama-3-8b.q4", source=_source())
    for only_set in (False, True):
        spec = model_config_to_proto(config, only_set=only_set)
        assert spec.source.size_bytes == 5 << 30 and list(spec.source.urls) == list(
            config.source.urls if config.source else ()
        )
        assert ModelConfig.model_validate(model_spec_to_dict(spec)) == config


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"urls": ("file:///etc/passwd",)}, "not an http"),
        ({"urls": ("ftp://h/x",)}, "not an http"),
        ({"urls": ("http:///nohost",)}, "not an http"),
        ({"urls": ()}, "at least 1"),
        ({"name": "../etc"}, "pattern"),
        ({"name": "a..b"}, "contains '..'"),
        ({"name": "a/b"}, "pattern"),
        ({"sha256": SHA.upper()}, "pattern"),
        ({"sha256": SHA[:-1]}, "pattern"),
        ({"size_bytes": 0}, "greater than 0"),
    ],
)
def test_a_bad_source_is_refused_naming_the_problem(
    changes: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        _source(**changes)


def test_a_store_path_and_its_source_go_together() -> None:
    with pytest.raises(ValidationError, match="no source is given"):
        ModelConfig(alias="m", path="store:x")
    with pytest.raises(ValidationError, match=r"has path 'store:llama-3-8b\.q4'"):
        ModelConfig(alias="m", path="/models/x.gguf", source=_source())
