"""`llamaherd status` as text: one block per node, one line per model."""

from __future__ import annotations

from llamaherd.v1 import cluster_pb2 as cl_pb
from llamaherd.v1 import inference_pb2 as inf_pb
from llamaherd.v1 import telemetry_pb2 as t_pb
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
        lines.extend(f"{'':16} {line}" for line in telemetry_lines(node))
    for problem in status.placement_problems:
        lines.append(f"\nnot placed: {problem.alias}: {problem.reason}")
    return "\n".join(lines)


def telemetry_lines(node: inf_pb.NodeStatus) -> list[str]:
    """The key figures of a node's latest sample: CPU, RAM, speed, then one line per GPU
    and the Jetson's power mode and board power."""
    hw, t = node.hardware, node.telemetry
    lines = []
    figures = []
    if t.HasField("host"):
        host = t.host
        figures.append(f"cpu {host.cpu_usage_ratio:.0%} (load {host.load_average[0]:.2f})"
                       if host.load_average else f"cpu {host.cpu_usage_ratio:.0%}")  # fmt: skip
        figures.append(
            f"ram {format_bytes(host.memory_used_bytes)} / {format_bytes(host.memory_total_bytes)}"
        )
    if hw.reference_decode_tokens_per_second:
        figures.append(f"speed {hw.reference_decode_tokens_per_second:.0f} tok/s (reference)")
    hottest = _hottest(t)
    if hottest is not None:
        figures.append(f"hottest {hottest.sensor} {hottest.celsius:.0f}°C")
    if figures:
        lines.append(" · ".join(figures))
    lines.extend(_gpu_line(gpu) for gpu in t.gpus)
    if t.HasField("jetson"):
        lines.append(_jetson_line(t.jetson))
    return lines


def _gpu_line(gpu: t_pb.GpuTelemetry) -> str:
    parts = [f"gpu{gpu.index} {gpu.name}"]
    if gpu.HasField("utilization_ratio"):
        parts.append(f"{gpu.utilization_ratio:.0%} busy")
    used, total = format_bytes(gpu.memory_used_bytes), format_bytes(gpu.memory_total_bytes)
    parts.append(f"{'unified ' if gpu.unified else ''}mem {used} / {total}")
    if gpu.HasField("temperature_celsius"):
        parts.append(f"{gpu.temperature_celsius:.0f}°C")
    if gpu.HasField("power_watts"):
        limit = f" / {gpu.power_limit_watts:.0f}" if gpu.HasField("power_limit_watts") else ""
        parts.append(f"{gpu.power_watts:.0f}{limit} W")
    if gpu.throttle_reasons:
        parts.append("throttled: " + ", ".join(gpu.throttle_reasons))
    return " · ".join(parts)


def _jetson_line(jetson: t_pb.JetsonTelemetry) -> str:
    parts = [jetson.module or jetson.model, f"JetPack {jetson.jetpack}" if jetson.jetpack else ""]
    if jetson.HasField("nvpmodel"):
        parts.append(f"power mode {jetson.nvpmodel}")
    if jetson.HasField("jetson_clocks"):
        parts.append(f"jetson_clocks {'on' if jetson.jetson_clocks else 'off'}")
    if jetson.HasField("power_total_watts"):
        parts.append(f"board {jetson.power_total_watts:.1f} W")
    return " · ".join(p for p in parts if p)


def _hottest(t: t_pb.NodeTelemetry) -> t_pb.Temperature | None:
    readings = [*t.host.temperatures, *t.jetson.temperatures]
    return max(readings, key=lambda r: r.celsius, default=None)


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
