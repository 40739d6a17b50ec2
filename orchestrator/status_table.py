"""`llamaherd status` as text: one block per node, one line per model."""

from __future__ import annotations

from llamaherd.v1 import cluster_pb2 as cl_pb
from llamaherd.v1 import inference_pb2 as inf_pb
from llamaherd.v1 import worker_pb2 as w_pb

from worker.memory import format_bytes


def render_status(status: inf_pb.ClusterStatusResponse) -> str:
    up = sum(1 for n in status.nodes if n.up)
    lines = [f"{len(status.nodes)} workers ({up} up), routing: {status.routing_policy}", ""]
    lines.append(f"{'NODE':16} {'STATE':6} {'KIND':12} {'ADDRESS':22} {'FREE MEM':>10}  MODELS")
    for node in status.nodes:
        state = "up" if node.up else "down"
        models = ", ".join(_model(m) for m in node.models) or "-"
        free = format_bytes(node.memory_free_bytes)
        lines.append(
            f"{node.node_id:16} {state:6} {node.hardware.kind:12} {node.address:22} "
            f"{free:>10}  {models}"
        )
        if not node.up:
            lines.append(f"{'':16} {node.down_reason} ({node.seconds_since_report:.0f} s ago)")
    for problem in status.placement_problems:
        lines.append(f"\nnot placed: {problem.alias}: {problem.reason}")
    return "\n".join(lines)


def _model(load: cl_pb.ModelLoad) -> str:
    info = load.info
    state = w_pb.ModelState.Name(info.state).removeprefix("MODEL_STATE_").lower()
    text = f"{info.alias} [{state}"
    if info.state == w_pb.MODEL_STATE_READY:
        text += f", {info.active_requests} running, {info.queued_requests} queued"
        rate = load.decode_tokens_per_second
        if rate:
            text += f", {rate:.0f} tok/s"
    return text + "]"
