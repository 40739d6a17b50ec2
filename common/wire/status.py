"""The status model (common.status) to and from its wire form: ModelInfo and NodeReport."""

from __future__ import annotations

import dataclasses

from llamaherd.v1 import cluster_pb2 as cl_pb
from llamaherd.v1 import worker_pb2 as w_pb

from common.model_settings import ModelConfig
from common.status import (
    MAX_PREFIX_HASHES,
    DownloadProgress,
    EngineFigures,
    ModelState,
    ModelStatus,
    NodeStatus,
    StoredFile,
)
from common.wire.leases import lease_from_proto, lease_to_proto
from common.wire.models import (
    estimate_from_proto,
    estimate_to_proto,
    model_config_to_proto,
    model_spec_to_dict,
)
from common.wire.telemetry import (
    hardware_from_proto,
    hardware_to_proto,
    sample_from_proto,
    sample_to_proto,
)

# Paired by name: a state is added to ModelState and to worker.proto under the same name.
_STATES = {w_pb.ModelState.Value("MODEL_STATE_" + state.name): state for state in ModelState}
_NUMBERS = {state: number for number, state in _STATES.items()}


def download_to_proto(progress: DownloadProgress) -> w_pb.DownloadProgress:
    return w_pb.DownloadProgress(**dataclasses.asdict(progress))


def download_from_proto(wire: w_pb.DownloadProgress) -> DownloadProgress:
    return DownloadProgress(
        **{f.name: getattr(wire, f.name) for f in dataclasses.fields(DownloadProgress)}
    )


def stored_file_to_proto(stored: StoredFile) -> cl_pb.StoredFile:
    return cl_pb.StoredFile(**dataclasses.asdict(stored))


def stored_file_from_proto(wire: cl_pb.StoredFile) -> StoredFile:
    return StoredFile(sha256=wire.sha256, size_bytes=wire.size_bytes, name=wire.name)


def model_status_to_proto(status: ModelStatus) -> w_pb.ModelInfo:
    figures = status.engine
    return w_pb.ModelInfo(
        alias=status.alias,
        spec=model_config_to_proto(status.config),
        state=_NUMBERS[status.state],
        error=status.error,
        architecture=status.architecture,
        file_bytes=status.file_bytes,
        n_ctx_train=status.n_ctx_train,
        memory=estimate_to_proto(status.estimate) if status.estimate is not None else None,
        chat_template_source=status.chat_template_source,
        queued_requests=figures.queued,
        active_requests=figures.active,
        slots_total=figures.slots_total,
        cached_tokens=figures.cached_tokens,
        decode_tokens_per_second=figures.decode_tps,
        prompt_tokens_per_second=figures.prompt_tps,
        completed_requests=figures.completed,
        prefix_hashes=figures.prefix_hashes,
        download=download_to_proto(status.download) if status.download is not None else None,
    )


def model_status_from_proto(info: w_pb.ModelInfo) -> ModelStatus:
    """Raises ValueError (pydantic's) when the spec is not a valid model config."""
    return ModelStatus(
        alias=info.alias,
        config=ModelConfig.model_validate(model_spec_to_dict(info.spec)),
        # A state this side does not know yet (a newer worker) is not one to route to.
        state=_STATES.get(info.state, ModelState.FAILED),
        error=info.error,
        architecture=info.architecture,
        file_bytes=info.file_bytes,
        n_ctx_train=info.n_ctx_train,
        estimate=estimate_from_proto(info.memory) if info.HasField("memory") else None,
        chat_template_source=info.chat_template_source,
        engine=EngineFigures(
            slots_total=info.slots_total,
            queued=info.queued_requests,
            active=info.active_requests,
            cached_tokens=info.cached_tokens,
            decode_tps=info.decode_tokens_per_second,
            prompt_tps=info.prompt_tokens_per_second,
            completed=info.completed_requests,
            # Bounded here too: a report is trusted for its figures, not for its size.
            prefix_hashes=tuple(info.prefix_hashes[:MAX_PREFIX_HASHES]),
        ),
        download=download_from_proto(info.download) if info.HasField("download") else None,
    )


def node_status_to_report(status: NodeStatus, sequence: int) -> cl_pb.NodeReport:
    return cl_pb.NodeReport(
        node_id=status.node_id,
        address=status.address,
        hardware=hardware_to_proto(status.hardware),
        models=[model_status_to_proto(m) for m in status.models],
        memory_free_bytes=status.memory_free,
        sequence=sequence,
        version=status.version,
        telemetry=sample_to_proto(status.telemetry) if status.telemetry is not None else None,
        rpc_servers=[lease_to_proto(lease) for lease in status.leases],
        stored_files=[stored_file_to_proto(f) for f in status.stored_files],
        model_disk_free_bytes=status.model_disk_free_bytes or 0,
        files_port=status.files_port or 0,
    )


def node_status_from_report(report: cl_pb.NodeReport) -> NodeStatus:
    """Raises ValueError when a model's spec is not a valid model config."""
    return NodeStatus(
        node_id=report.node_id,
        address=report.address,
        hardware=hardware_from_proto(report.hardware),
        models=tuple(model_status_from_proto(m) for m in report.models),
        memory_free=report.memory_free_bytes,
        version=report.version,
        telemetry=sample_from_proto(report.telemetry) if report.HasField("telemetry") else None,
        leases=tuple(lease_from_proto(r) for r in report.rpc_servers),
        stored_files=tuple(stored_file_from_proto(f) for f in report.stored_files),
        # 0 on the wire: a worker that does not report it (an older one), not a full disk.
        model_disk_free_bytes=report.model_disk_free_bytes or None,
        files_port=report.files_port or None,
    )
