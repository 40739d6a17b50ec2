"""`llamaherd status` as text: one block per node, one line per model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llamaherd.v1 import cluster_pb2 as cl_pb
from llamaherd.v1 import inference_pb2 as inf_pb
from llamaherd.v1 import telemetry_pb2 as t_pb
from llamaherd.v1 import worker_pb2 as w_pb

from common.layout import device_layer_counts, offloaded_layers
from common.memory import format_bytes


def render_status(status: inf_pb.ClusterStatusResponse) -> str:
    up = sum(1 for n in status.nodes if n.up)
    lines = [f"{len(status.nodes)} workers ({up} up), routing: {status.routing_policy}", ""]
    lines.append(f"{'NODE':16} {'STATE':6} {'KIND':12} {'ADDRESS':22} {'FREE MEM':>10}  MODELS")
    lenders = {lease.endpoint: n.node_id for n in status.nodes for lease in n.rpc_servers}
    layers = lent_layers(status.nodes)
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
        lines.extend(f"{'':16} {line}" for line in split_lines(node, lenders, layers))
    for problem in status.placement_problems:
        lines.append(f"\nnot placed: {problem.alias}: {problem.reason}")
    return "\n".join(lines)


def split_lines(
    node: inf_pb.NodeStatus, lenders: Mapping[str, str], layers: Mapping[str, str]
) -> list[str]:
    """Where the layers of the node's split models live, and the devices it lends.

    `lenders` maps RPC endpoints to the nodes that lend them; `layers` maps them to the
    layers they hold (lent_layers).
    """
    lines = []
    for load in node.models:
        spec = load.info.spec
        if not spec.rpc_servers:
            continue
        head, *helpers = _spans(load.info)
        where = [f"{head} here (head)"]
        where += [f"{span} on {lenders.get(endpoint, endpoint)}"
                  for span, endpoint in zip(helpers, spec.rpc_servers, strict=True)]  # fmt: skip
        lines.append(f"{load.info.alias} split: " + ", ".join(where))
    for lease in node.rpc_servers:
        parts = [
            f"lends {lease.device or 'a device'} to {lease.lease_id}",
            layers.get(lease.endpoint, "not in use"),
            f"{format_bytes(lease.reserved_bytes)} reserved",
            lease.endpoint,
        ]
        if not lease.running:
            parts.append("stopped: " + (lease.error or "no error reported"))
        lines.append(" · ".join(parts))
    return lines


def lent_layers(nodes: Sequence[inf_pb.NodeStatus]) -> dict[str, str]:
    """The layers each RPC endpoint holds, from the split models of every node."""
    held: dict[str, str] = {}
    for node in nodes:
        for load in node.models:
            if load.info.spec.rpc_servers:
                _, *helpers = _spans(load.info)
                held.update(zip(load.info.spec.rpc_servers, helpers, strict=True))
    return held


def _spans(info: w_pb.ModelInfo) -> list[str]:
    """The layers of a split model's head, then of each RPC server, as llama.cpp places
    them: the last n_gpu_layers layers over the servers in tensor_split proportions."""
    spec, total = info.spec, info.memory.n_layers
    servers = len(spec.rpc_servers)
    offloaded = offloaded_layers(spec.n_gpu_layers, total) if total else spec.n_gpu_layers
    shares = list(spec.tensor_split[:servers])
    if len(shares) < servers or sum(shares) <= 0:
        shares = [1.0] * servers  # llama.cpp's own default is unknown here: say equal
    counts = device_layer_counts(offloaded, shares)
    if not total:  # no layer count reported: say how many, not which
        return ["the first layers", *(_layers(None, c) for c in counts)]
    spans, first = [_layers(0, total - offloaded)], total - offloaded
    for count in counts:
        spans.append(_layers(first, count))
        first += count
    return spans


def _layers(first: int | None, count: int) -> str:
    if count <= 0:
        return "no layers"
    if first is None:
        return "1 layer" if count == 1 else f"{count} layers"
    return f"layer {first}" if count == 1 else f"layers {first}-{first + count - 1}"


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
