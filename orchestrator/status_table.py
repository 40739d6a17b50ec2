"""`llamaherd status` as text: one block per node, one line per model, from the same
ClusterView that `--json` prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from common.memory import format_bytes
from common.status import DownloadProgress, ModelStatus, NodeStatus
from common.telemetry import GpuSample, JetsonSample, NodeSample, Temperature
from orchestrator.cluster.capacity import CapacityRecord, replicas_needed
from orchestrator.cluster.splits import (
    LayerRange,
    layers_text,
    lenders,
    lent_ranges,
    model_layer_ranges,
)
from orchestrator.cluster.view import ClusterView, PowerView


def render_status(view: ClusterView, target_streams: int | None = None) -> str:
    up = sum(1 for n in view.nodes if n.up)
    lines = [f"{len(view.nodes)} workers ({up} up), routing: {view.routing_policy}"]
    if view.power is not None:
        lines.append(power_line(view.power))
    lines.append("")
    lines.append(f"{'NODE':16} {'STATE':6} {'KIND':12} {'ADDRESS':22} {'FREE MEM':>10}  MODELS")
    statuses = [n.status for n in view.nodes]
    lent_by = lenders(statuses)
    layers = {endpoint: _layers(held) for endpoint, held in lent_ranges(statuses).items()}
    for entry in view.nodes:
        node = entry.status
        state = "up" if entry.up else "down"
        models = ", ".join(_model(m) for m in node.models) or "-"
        free = format_bytes(node.memory_free)
        lines.append(
            f"{node.node_id:16} {state:6} {node.hardware.kind:12} {node.address:22} "
            f"{free:>10}  {models}"
        )
        if not entry.up:
            lines.append(f"{'':16} {entry.down_reason} ({entry.seconds_since_report:.0f} s ago)")
        lines.extend(f"{'':16} {line}" for line in telemetry_lines(node))
        lines.extend(f"{'':16} {line}" for line in split_lines(node, lent_by, layers))
    for problem in view.placement_problems:
        lines.append(f"\nnot placed: {problem.alias}: {problem.reason}")
    lines.extend(capacity_lines(view.capacities, target_streams))
    return "\n".join(lines)


def power_line(power: PowerView) -> str:
    """The cluster's draw against its power budget, and whether new requests get in."""
    line = f"power: {power.draw_w:.0f} W of a {power.budget_w:g} W budget"
    if not power.admitting:
        line += f", over: new requests refused until below {power.resume_below_w:g} W"
    if power.unmeasured_nodes:
        count = len(power.unmeasured_nodes)
        verb = "reports" if count == 1 else "report"
        line += f"; {count} unmeasured ({', '.join(power.unmeasured_nodes)} {verb} no power)"
    return line


def capacity_lines(records: Sequence[CapacityRecord], target_streams: int | None) -> list[str]:
    """The measured capacities (llamaherd capacity), one line per node and model, then per
    model the streams measured in all and, for `target_streams`, the replicas it needs."""
    if not records:
        return []
    lines = ["", "measured capacity (llamaherd capacity):"]
    by_model: dict[str, list[CapacityRecord]] = {}
    for r in records:
        by_model.setdefault(r.model, []).append(r)
        per_watt = r.streams_per_watt
        power = f", {per_watt:.3g} streams/W ({r.watts:.0f} W)" if per_watt is not None else ""
        lines.append(
            f"  {r.model} on {r.node}, n_ctx {r.n_ctx}: {r.max_streams} streams at {r.slo}; "
            f"prefill {r.prefill_tps:.0f} tok/s, decode {r.decode_tps_stream:.1f} tok/s per "
            f"stream, {r.decode_tps_total:.1f} in all{power}"
        )
    for model, measured in sorted(by_model.items()):
        streams = [r.max_streams for r in measured]
        line = f"  {model}: {sum(streams)} streams on {len(streams)} measured replicas"
        if target_streams is not None:
            needed = replicas_needed(target_streams, streams)
            line += (
                f"; {target_streams} streams need {needed} replicas"
                if needed is not None
                else f"; {target_streams} streams: no replica meets the SLO"
            )
        lines.append(line)
    return lines


def split_lines(
    node: NodeStatus, lenders: Mapping[str, str], layers: Mapping[str, str]
) -> list[str]:
    """Where the layers of the node's split models live, and the devices it lends.

    `lenders` maps RPC endpoints to the nodes that lend them; `layers` maps them to the
    layers they hold, as text.
    """
    lines = []
    for model in node.models:
        servers = model.config.rpc_servers
        if not servers:
            continue
        head, *helpers = (_layers(held) for held in model_layer_ranges(model))
        where = [f"{head} here (head)"]
        where += [f"{span} on {lenders.get(endpoint, endpoint)}"
                  for span, endpoint in zip(helpers, servers, strict=True)]  # fmt: skip
        lines.append(f"{model.alias} split: " + ", ".join(where))
    for lease in node.leases:
        parts = [
            f"lends {lease.device or 'a device'} to {lease.lease_id}",
            layers.get(lease.endpoint, "not in use"),
            f"{format_bytes(lease.reserved_bytes)} reserved",
            lease.endpoint,
        ]
        if lease.guard:
            parts.append(f"guard {lease.guard}")
        if not lease.running:
            parts.append("stopped: " + (lease.error or "no error reported"))
        lines.append(" · ".join(parts))
    return lines


def _layers(held: LayerRange) -> str:
    return layers_text(held.first, held.count)


def telemetry_lines(node: NodeStatus) -> list[str]:
    """The key figures of a node's latest sample: CPU, RAM, speed, then one line per GPU
    and the Jetson's power mode and board power."""
    hw, t = node.hardware, node.telemetry
    lines = []
    figures = []
    if t is not None and t.host is not None:
        host = t.host
        figures.append(f"cpu {host.cpu_usage_ratio:.0%} (load {host.load_average[0]:.2f})"
                       if host.load_average else f"cpu {host.cpu_usage_ratio:.0%}")  # fmt: skip
        figures.append(
            f"ram {format_bytes(host.memory_used_bytes)} / {format_bytes(host.memory_total_bytes)}"
        )
    if hw.reference_decode_tps:
        figures.append(f"speed {hw.reference_decode_tps:.0f} tok/s (reference)")
    hottest = _hottest(t) if t is not None else None
    if hottest is not None:
        figures.append(f"hottest {hottest.sensor} {hottest.celsius:.0f}°C")
    if figures:
        lines.append(" · ".join(figures))
    if t is not None:
        lines.extend(_gpu_line(gpu) for gpu in t.gpus)
        if t.jetson is not None:
            lines.append(_jetson_line(t.jetson))
    return lines


def _gpu_line(gpu: GpuSample) -> str:
    parts = [f"gpu{gpu.index} {gpu.name}"]
    if gpu.utilization_ratio is not None:
        parts.append(f"{gpu.utilization_ratio:.0%} busy")
    used, total = format_bytes(gpu.memory_used_bytes), format_bytes(gpu.memory_total_bytes)
    parts.append(f"{'unified ' if gpu.unified else ''}mem {used} / {total}")
    if gpu.temperature_celsius is not None:
        parts.append(f"{gpu.temperature_celsius:.0f}°C")
    if gpu.power_watts is not None:
        limit = f" / {gpu.power_limit_watts:.0f}" if gpu.power_limit_watts is not None else ""
        parts.append(f"{gpu.power_watts:.0f}{limit} W")
    if gpu.throttle_reasons:
        parts.append("throttled: " + ", ".join(gpu.throttle_reasons))
    return " · ".join(parts)


def _jetson_line(jetson: JetsonSample) -> str:
    parts = [jetson.module or jetson.model, f"JetPack {jetson.jetpack}" if jetson.jetpack else ""]
    if jetson.nvpmodel is not None:
        parts.append(f"power mode {jetson.nvpmodel}")
    if jetson.jetson_clocks is not None:
        parts.append(f"jetson_clocks {'on' if jetson.jetson_clocks else 'off'}")
    if jetson.power_total_watts is not None:
        parts.append(f"board {jetson.power_total_watts:.1f} W")
    return " · ".join(p for p in parts if p)


def _hottest(t: NodeSample) -> Temperature | None:
    readings = [*(t.host.temperatures if t.host else ()),
                *(t.jetson.temperatures if t.jetson else ())]  # fmt: skip
    return max(readings, key=lambda r: r.celsius, default=None)


def download_text(progress: DownloadProgress) -> str:
    """`120 MiB / 253 MiB (47%), 2.5 MiB/s, ETA 53 s, from 10.0.0.6:9100`, or why it waits."""
    if not progress.attempt:
        return f"waiting for a download slot, {format_bytes(progress.bytes_total)}"
    parts = [
        f"{format_bytes(progress.bytes_done)} / {format_bytes(progress.bytes_total)} "
        f"({progress.fraction:.0%})"
    ]
    if progress.bytes_per_second:
        parts.append(f"{format_bytes(int(progress.bytes_per_second))}/s")
    if progress.eta_s:
        parts.append(f"ETA {progress.eta_s:.0f} s")
    if progress.source:
        parts.append(f"from {progress.source}")
    if progress.attempt > 1:
        parts.append(f"attempt {progress.attempt}")
    return ", ".join(parts)


def _model(model: ModelStatus) -> str:
    text = f"{model.alias} [{model.state.value}"
    if model.download is not None:
        text += ": " + download_text(model.download)
    if model.ready:
        text += f", {model.engine.active} running, {model.engine.queued} queued"
        rate = model.engine.decode_tps
        if rate:
            text += f", {rate:.0f} tok/s"
    return text + "]"
