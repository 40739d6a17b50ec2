from __future__ import annotations

import dataclasses

from llamaherd.v1 import telemetry_pb2 as t_pb

from common.hardware import HardwareInfo
from common.wire.telemetry import (
    hardware_from_proto,
    hardware_to_proto,
    sample_from_proto,
    sample_to_proto,
)
from tests.support.samples_factory import dgpu, jetson_sample, node_sample


def test_a_discrete_gpu_sample_survives_the_wire_exactly() -> None:
    sample = node_sample()
    assert sample_from_proto(sample_to_proto(sample)) == sample


def test_a_jetson_sample_survives_the_wire_exactly() -> None:
    gpu = dgpu(name="Orin (nvgpu)", unified=True, power_limit_watts=None)
    sample = node_sample(gpus=(gpu,), jetson=jetson_sample(), sources=("jetson", "host"))
    assert sample_from_proto(sample_to_proto(sample)) == sample


def test_readings_a_device_lacks_stay_absent_rather_than_zero() -> None:
    sample = node_sample(gpus=(dgpu(power_watts=None, utilization_ratio=None),))
    message = sample_to_proto(sample)
    assert not message.gpus[0].HasField("power_watts")
    assert not message.gpus[0].HasField("utilization_ratio")
    assert message.gpus[0].HasField("temperature_celsius")
    back = sample_from_proto(message)
    assert back.gpus[0].power_watts is None and back.gpus[0].utilization_ratio is None


def test_a_host_only_sample_has_no_jetson_part() -> None:
    sample = node_sample(gpus=(), sources=("host",))
    message = sample_to_proto(sample)
    assert not message.HasField("jetson")
    assert sample_from_proto(message).jetson is None


def test_a_zero_reading_is_sent_as_a_reading() -> None:
    # 0 W and 0 % are real readings of an idle GPU, not "unsupported".
    sample = node_sample(gpus=(dgpu(power_watts=0.0, utilization_ratio=0.0),))
    back = sample_from_proto(sample_to_proto(sample))
    assert back.gpus[0].power_watts == 0.0 and back.gpus[0].utilization_ratio == 0.0


def test_every_proto_field_has_a_sample_field() -> None:
    # A field added to telemetry.proto but not to common/telemetry.py would silently stay empty.
    from common import telemetry as samples

    pairs = {
        t_pb.NodeTelemetry: samples.NodeSample,
        t_pb.HostTelemetry: samples.HostSample,
        t_pb.GpuTelemetry: samples.GpuSample,
        t_pb.JetsonTelemetry: samples.JetsonSample,
        t_pb.PowerRail: samples.PowerRail,
        t_pb.Fan: samples.Fan,
        t_pb.Clock: samples.Clock,
        t_pb.Temperature: samples.Temperature,
    }
    for message, cls in pairs.items():
        proto_fields = {f.name for f in message.DESCRIPTOR.fields}
        assert proto_fields == {f.name for f in dataclasses.fields(cls)}, message.__name__


def test_the_capability_profile_survives_the_wire() -> None:
    profile = HardwareInfo(
        kind="jetson-orin", model="NVIDIA Jetson AGX Orin Developer Kit", cpu_cores=12,
        memory_total=64 * 1024**3, gpu_memory_total=0, backends=("CPU", "CUDA", "RPC"),
        unified_memory=True, compute_capability="8.7", cpu_features=("NEON", "DOTPROD"),
        gpus=("Orin (nvgpu)",), jetson_module="NVIDIA Jetson AGX Orin (64GB ram)",
        jetpack="6.2", l4t="36.4.3", reference_decode_tps=212.5,
        telemetry_sources=("jetson", "host"),
        telemetry_skipped=("nvml: the jetson source already reads the GPU",),
        labels=frozenset({"orin", "jetson"}),
    )  # fmt: skip
    message = hardware_to_proto(profile)
    assert list(message.labels) == ["jetson", "orin"]
    assert hardware_from_proto(message) == profile
