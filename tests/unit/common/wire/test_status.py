"""The status model survives the wire whole, and its states stay in step with the proto."""

from __future__ import annotations

import dataclasses

from llamaherd.v1 import worker_pb2 as w_pb

from common.hardware import HardwareInfo
from common.leases import Lease
from common.memory import MemoryEstimate
from common.model_settings import ModelConfig, ModelSource
from common.status import (
    MAX_PREFIX_HASHES,
    DownloadProgress,
    EngineFigures,
    ModelState,
    ModelStatus,
    NodeStatus,
    StoredFile,
)
from common.wire.status import (
    model_status_from_proto,
    model_status_to_proto,
    node_status_from_report,
    node_status_to_report,
)
from tests.support.samples_factory import node_sample


def _model(state: ModelState = ModelState.READY) -> ModelStatus:
    config = ModelConfig(alias="m", path="/models/m.gguf", n_threads=4, n_parallel=2)
    return ModelStatus(
        alias="m", config=config.with_node_defaults(4), state=state, error="",
        architecture="gemma3", file_bytes=253_000_000, n_ctx_train=32768,
        estimate=MemoryEstimate(1, 2, 3, n_layers=18), chat_template_source="gguf",
        engine=EngineFigures(slots_total=2, queued=3, active=2, cached_tokens=40,
                             decode_tps=41.5, prompt_tps=900.0, completed=17),
    )  # fmt: skip


def test_every_state_has_a_proto_value_of_the_same_name() -> None:
    # A state added to ModelState but not to worker.proto could not be sent.
    names = {n.removeprefix("MODEL_STATE_") for n in w_pb.ModelState.keys()}  # noqa: SIM118
    assert {s.name for s in ModelState} == names - {"UNSPECIFIED"}


def test_a_model_status_round_trips_in_every_state() -> None:
    for state in ModelState:
        status = _model(state)
        assert model_status_from_proto(model_status_to_proto(status)) == status


def test_a_state_this_side_does_not_know_is_not_routable() -> None:
    wire = model_status_to_proto(_model())
    wire.state = 99  # from a newer worker
    assert model_status_from_proto(wire).state is ModelState.FAILED


def test_a_node_report_round_trips() -> None:
    node = NodeStatus(
        node_id="jetson-1:50051", address="10.0.0.5:50051",
        hardware=HardwareInfo("jetson-orin", labels=frozenset({"jetson"})),
        models=(_model(), _model(ModelState.LOADING)), memory_free=7, version="0.1.0",
        telemetry=node_sample(), leases=(Lease("big@a", "10.0.0.5:50100", "10.0.0.1"),),
        stored_files=(StoredFile("ab" * 32, 253_000_000, "gemma"), StoredFile("cd" * 32, 9)),
        model_disk_free_bytes=5 << 40, files_port=51051,
    )  # fmt: skip
    report = node_status_to_report(node, sequence=12)
    assert report.sequence == 12
    assert node_status_from_report(report) == node


def test_a_downloading_model_carries_its_progress_and_source() -> None:
    source = ModelSource(name="gemma", sha256="ab" * 32, size_bytes=253_000_000,
                         urls=("http://10.0.0.6:9100", "http://10.0.0.1:8002"))  # fmt: skip
    config = ModelConfig(alias="g", path="store:gemma", source=source).with_node_defaults(2)
    progress = DownloadProgress(bytes_done=1 << 20, bytes_total=253_000_000,
                                bytes_per_second=2.5e6, eta_s=100.0,
                                source="10.0.0.6:9100", attempt=2)  # fmt: skip
    status = ModelStatus(alias="g", config=config, state=ModelState.DOWNLOADING,
                         download=progress)  # fmt: skip
    wire = model_status_to_proto(status)
    assert wire.spec.source.size_bytes == 253_000_000 and wire.download.attempt == 2
    assert model_status_from_proto(wire) == status


def test_a_report_without_disk_figures_reads_as_unknown() -> None:
    node = NodeStatus(node_id="n", address="h:1", hardware=HardwareInfo("x86-cpu"))
    back = node_status_from_report(node_status_to_report(node, sequence=1))
    assert back.model_disk_free_bytes is None and back.stored_files == ()
    assert back.files_port is None


def test_prefix_hashes_round_trip_over_the_full_unsigned_range() -> None:
    # fixed64 on the wire: the chain's hashes are unsigned 64-bit integers, extremes included.
    hashes = (0, 1, 2**63, 2**64 - 1, 123456789)
    status = dataclasses.replace(
        _model(), engine=dataclasses.replace(_model().engine, prefix_hashes=hashes)
    )
    assert model_status_from_proto(model_status_to_proto(status)) == status


def test_a_report_of_too_many_prefix_hashes_is_cut_to_the_bound() -> None:
    wire = model_status_to_proto(_model())
    wire.prefix_hashes.extend(range(MAX_PREFIX_HASHES + 10))
    engine = model_status_from_proto(wire).engine
    assert engine.prefix_hashes == tuple(range(MAX_PREFIX_HASHES))
