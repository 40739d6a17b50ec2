"""The benchmark's outputs, all from the result JSON (the source of truth): the JSON itself,
a summary table, a side-by-side comparison of two runs, and a self-contained HTML report
with SVG plots (no script, no network)."""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.table import Table

from orchestrator.bench.metrics import (
    RequestRecord,
    energy_figures,
    level_figures,
    node_figures,
    turn_ttft,
)
from orchestrator.bench.run import BenchConfig, BenchRun

FORMAT = "llamaherd-bench/1"


class ResultError(ValueError):
    """A file that is not a `llamaherd bench` result."""


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    return value


def _record(r: RequestRecord) -> dict[str, Any]:
    """A compact request: times in seconds, chunk arrivals relative to the send."""
    row: dict[str, Any] = {
        "level": r.level, "i": r.index, "sent": round(r.sent_s, 4),
        "e2e": round(r.e2e, 4), "out": r.output_tokens, "in": r.prompt_tokens, "node": r.node,
        "chunks": [round(t - r.sent_s, 4) for t in r.chunk_s],
    }  # fmt: skip
    if r.turn is not None:
        row["turn"] = r.turn
    if r.warmup:
        row["warmup"] = True
    if r.error:
        row["error"], row["detail"] = r.error, r.detail
    return row


def build_result(config: BenchConfig, run: BenchRun, command: Sequence[str]) -> dict[str, Any]:
    records = sorted(run.records, key=lambda r: (r.level, r.index))
    levels = []
    for n, level in enumerate(config.levels):
        mine = [r for r in records if r.level == n]
        figures = level_figures(mine, config.slo)
        energy = energy_figures([s for s in run.power if s.level == n], mine)
        entry = {
            "label": level.label,
            "kind": level.kind,
            "value": level.value,
            **_round(dataclasses.asdict(figures)),
            "nodes": {k: _round(dataclasses.asdict(v)) for k, v in node_figures(mine).items()},
            # None: no node reported power (or the endpoint has no cluster view): n/a
            "energy": _round(dataclasses.asdict(energy)) if energy else None,
        }
        if config.turns > 1:
            entry["ttft_p50_by_turn"] = {str(t): round(v, 6) for t, v in turn_ttft(mine).items()}
        levels.append(entry)
    served = [r.prompt_tokens for r in records if r.ok and r.prompt_tokens is not None]
    cal = run.calibration
    return {
        "format": FORMAT,
        "command": " ".join(command),
        "started_unix_s": round(run.started_unix_s, 3),
        "endpoint": {
            "url": config.target.url,
            "api": config.target.api,
            "model": config.target.model,
        },
        "workload": {
            "prompt_tokens": config.prompt_tokens,
            "output_tokens": config.output_tokens,
            "prompt_lengths": config.prompt_lengths.text if config.prompt_lengths else None,
            "output_lengths": config.output_lengths.text if config.output_lengths else None,
            "turns": config.turns,
            "system_tokens": config.system_tokens,
            "load": config.levels[0].kind,
            "levels": [level.value for level in config.levels],
            "requests_per_level": config.requests,
            "duration_s_per_level": config.duration_s,
            "warmup_per_level": config.warmup,
            "sampling": config.sampling,
        },
        "seed": config.seed,
        "slo": [term.text for term in config.slo],
        "power": (
            "no cluster view"
            if run.power_reported is None
            else "reported"
            if run.power_reported
            else "no node reports power"
        ),
        "prompt_calibration": {
            "method": cal.method,
            "words": cal.words,
            "probes": [list(p) for p in cal.probes],
            "reference_prompt_tokens": cal.reference_tokens,
            "overhead_tokens": cal.overhead,
            "exact_share": (
                round(sum(t == config.prompt_tokens for t in served) / len(served), 4)
                if served
                and config.prompt_lengths is None
                and config.turns == 1
                and not config.system_tokens
                else None
            ),
        },
        "levels": levels,
        "requests": [_record(r) for r in records],
    }


def load_result(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except OSError as exc:
        raise ResultError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise ResultError(f"{path} is not JSON") from None
    if not isinstance(result, dict) or result.get("format") != FORMAT:
        raise ResultError(f"{path} is not a llamaherd bench result (no format {FORMAT!r})")
    return result


# ---- tables -------------------------------------------------------------------------------
def _ms(stats: dict[str, float] | None, stat: str) -> str:
    return f"{stats[stat] * 1000:.1f}" if stats else "-"


def _short_ms(stats: dict[str, float] | None, stat: str) -> str:
    if not stats:
        return "-"
    ms = stats[stat] * 1000
    return f"{ms:.0f}" if ms >= 10 else f"{ms:.1f}"


def summary_table(result: dict[str, Any]) -> Table:
    """One row per level, narrow enough for 80 columns; who served what in the caption."""
    endpoint = result["endpoint"]
    table = Table(
        title=f"{endpoint['model']} at {endpoint['url']} ({endpoint['api']})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption_justify="left",
    )
    heads = ("level", "ok/sent", "req/s", "tok/s\nout", "TTFT ms\np50/p99",
             "ITL ms\np50/p99", "TPOT ms\nmean", "E2E s\np50/p99", "goodput\nreq/s")  # fmt: skip
    for name in heads:
        table.add_column(name, justify="left" if name == "level" else "right")
    served_by = []
    for level in result["levels"]:
        e2e = level["e2e"]
        nodes = ", ".join(f"{n} {share:.0%}" for n, share in level["node_share"].items())
        served_by.append(f"{level['label']}: {nodes or '-'}")
        table.add_row(
            level["label"],
            f"{level['completed']}/{level['requests']}",
            f"{level['request_throughput']:.2f}",
            f"{level['output_token_throughput']:.1f}",
            f"{_short_ms(level['ttft'], 'p50')}/{_short_ms(level['ttft'], 'p99')}",
            f"{_short_ms(level['itl'], 'p50')}/{_short_ms(level['itl'], 'p99')}",
            _short_ms(level["tpot"], "mean"),
            f"{e2e['p50']:.2f}/{e2e['p99']:.2f}" if e2e else "-",
            "-" if level["goodput"] is None else f"{level['goodput']:.2f}",
        )
    errors = {k: v for level in result["levels"] for k, v in level["errors"].items()}
    table.caption = "served by: " + "; ".join(served_by)
    table.caption += "\nenergy: " + "; ".join(
        f"{level['label']}: {_joules(level.get('energy'))}" for level in result["levels"]
    )
    if errors:
        table.caption += "\nerrors: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items()))
    return table


def _joules(energy: dict[str, Any] | None) -> str:
    """Joules per output token in total, or n/a where no node reported power."""
    if not energy or energy.get("joules_per_output_token") is None:
        return "n/a"
    return f"{energy['joules_per_output_token']:.3g} J/output token"


COMPARED: tuple[tuple[str, str, str | None, float], ...] = (
    # (row name, level field, statistic, scale)
    ("requests/s", "request_throughput", None, 1),
    ("output tokens/s", "output_token_throughput", None, 1),
    ("TTFT p50 ms", "ttft", "p50", 1000),
    ("TTFT p99 ms", "ttft", "p99", 1000),
    ("ITL p50 ms", "itl", "p50", 1000),
    ("ITL p99 ms", "itl", "p99", 1000),
    ("TPOT mean ms", "tpot", "mean", 1000),
    ("E2E p50 s", "e2e", "p50", 1),
    ("E2E p99 s", "e2e", "p99", 1),
    ("goodput/s", "goodput", None, 1),
    ("J/output token", "energy", "joules_per_output_token", 1),
)


def _figure(level: dict[str, Any], field: str, stat: str | None, scale: float) -> float | None:
    value = level.get(field)
    if stat is not None:
        value = value.get(stat) if isinstance(value, dict) else None
    return None if value is None else float(value) * scale


def compare_table(a: dict[str, Any], b: dict[str, Any], a_name: str, b_name: str) -> Table:
    """Levels the two runs share (by label), each figure side by side with B/A."""
    table = Table(title=f"A = {a_name}, B = {b_name}")
    for name in ("level", "figure", "A", "B", "B/A"):
        table.add_column(name, justify="left" if name in ("level", "figure") else "right")
    b_levels = {level["label"]: level for level in b["levels"]}
    shared = [level for level in a["levels"] if level["label"] in b_levels]
    for level_a in shared:
        level_b = b_levels[level_a["label"]]
        for i, (row, field, stat, scale) in enumerate(COMPARED):
            va, vb = _figure(level_a, field, stat, scale), _figure(level_b, field, stat, scale)
            ratio = f"{vb / va:.2f}" if va and vb is not None else "-"
            table.add_row(
                level_a["label"] if i == 0 else "", row,
                "-" if va is None else f"{va:.2f}", "-" if vb is None else f"{vb:.2f}", ratio,
                end_section=i == len(COMPARED) - 1,
            )  # fmt: skip
    if not shared:
        table.caption = "the runs share no load level"
    return table


# ---- HTML ---------------------------------------------------------------------------------
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")
W, H, PAD_L, PAD_B, PAD_T, PAD_R = 460, 270, 56, 40, 40, 12


def _ticks(value: float) -> list[float]:
    """Four or five round steps from 0 to at least `value` (steps of 1, 2 or 5 x 10^k)."""
    if value <= 0:
        return [0.0, 0.25, 0.5, 0.75, 1.0]
    rough = value / 4
    magnitude = 10.0 ** math.floor(math.log10(rough))
    step = next(m * magnitude for m in (1, 2, 5, 10) if rough <= m * magnitude)
    count = math.ceil(value / step - 1e-9)
    return [round(step * i, 10) for i in range(count + 1)]


def line_chart(
    title: str, x_label: str, y_label: str, xs: Sequence[float],
    series: dict[str, Sequence[float | None]],
) -> str:  # fmt: skip
    """An SVG line chart: one polyline and its points per series, a legend, ticks."""
    values = [v for vs in series.values() for v in vs if v is not None]
    ticks = _ticks(max(values, default=0))
    y_max = ticks[-1]
    x_min, x_max = min(xs, default=0), max(xs, default=1)
    span = (x_max - x_min) or 1

    def px(x: float) -> float:
        return PAD_L + (x - x_min) / span * (W - PAD_L - PAD_R) if len(xs) > 1 else (W + PAD_L) / 2

    def py(y: float) -> float:
        return H - PAD_B - y / y_max * (H - PAD_B - PAD_T)

    parts = [f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(title)}">']
    for y in ticks:
        parts.append(
            f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
            f'class="grid"/><text x="{PAD_L - 6}" y="{py(y) + 4:.1f}" class="tick" '
            f'text-anchor="end">{y:g}</text>'
        )
    for x in xs:
        parts.append(
            f'<text x="{px(x):.1f}" y="{H - PAD_B + 16}" class="tick" '
            f'text-anchor="middle">{x:g}</text>'
        )
    parts.append(
        f'<text x="{(W + PAD_L) / 2}" y="{H - 4}" class="axis" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
        f'<text x="4" y="{PAD_T - 10}" class="axis">{html.escape(y_label)}</text>'
    )
    legend_x = PAD_L
    for n, (name, ys) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        points = [(px(x), py(y)) for x, y in zip(xs, ys, strict=False) if y is not None]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.extend(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in points
        )
        parts.append(
            f'<text x="{legend_x}" y="14" fill="{colour}" class="legend">{html.escape(name)}</text>'
        )
        legend_x += 7 * len(name) + 18  # about 7 px a character at 11 px bold
    parts.append("</svg>")
    return "".join(parts)


def share_chart(levels: Sequence[dict[str, Any]]) -> str:
    """One stacked horizontal bar per level: each node's share of the served requests."""
    nodes = sorted({node for level in levels for node in level["node_share"]})
    colour = {node: COLOURS[i % len(COLOURS)] for i, node in enumerate(nodes)}
    row, left, width = 28, 120, W - 120 - PAD_R
    height = row * len(levels) + 40
    parts = [f'<svg viewBox="0 0 {W} {height}" role="img" aria-label="per-node share">']
    for i, level in enumerate(levels):
        y, x = 8 + i * row, float(left)
        parts.append(
            f'<text x="{left - 8}" y="{y + 15}" class="tick" text-anchor="end">'
            f"{html.escape(level['label'])}</text>"
        )
        for node, share in level["node_share"].items():
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{share * width:.1f}" height="20" '
                f'fill="{colour[node]}"><title>{html.escape(node)} {share:.0%}</title></rect>'
            )
            x += share * width
    for i, node in enumerate(nodes):
        parts.append(
            f'<text x="{left + 120 * i}" y="{height - 8}" fill="{colour[node]}" '
            f'class="legend">{html.escape(node)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


STYLE = """
body{font:14px system-ui,sans-serif;margin:2rem auto;max-width:1000px;color:#111;padding:0 1rem}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:2rem} code{font-size:12px;word-break:break-all}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1rem}
figure{margin:0} figcaption{font-weight:600;margin-bottom:.3rem}
svg{width:100%;height:auto;background:#fafafa;border:1px solid #e5e7eb}
.grid{stroke:#e5e7eb} .tick{font-size:10px;fill:#555} .axis{font-size:11px;fill:#333}
.legend{font-size:11px;font-weight:600}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{border:1px solid #e5e7eb;padding:.25rem .5rem;text-align:right} th:first-child,
td:first-child{text-align:left}
"""


def _ms_series(levels: Sequence[dict[str, Any]], field: str, stat: str) -> list[float | None]:
    return [level[field][stat] * 1000 if level[field] else None for level in levels]


def html_report(result: dict[str, Any]) -> str:
    levels = result["levels"]
    kind = result["workload"]["load"]
    x_label = "concurrent streams" if kind == "concurrency" else "requests per second"
    xs = [float(level["value"]) for level in levels]
    latency = line_chart(
        "latency vs load", x_label, "ms", xs,
        {"TTFT p50": _ms_series(levels, "ttft", "p50"),
         "TTFT p99": _ms_series(levels, "ttft", "p99"),
         "ITL p50": _ms_series(levels, "itl", "p50"),
         "ITL p99": _ms_series(levels, "itl", "p99")},
    )  # fmt: skip
    throughput = line_chart(
        "throughput vs load", x_label, "per second", xs,
        {"output tokens/s": [level["output_token_throughput"] for level in levels],
         "requests/s x10": [level["request_throughput"] * 10 for level in levels]},
    )  # fmt: skip
    rows = []
    for level in levels:
        cells = [level["label"], f"{level['completed']}/{level['requests']}",
                 f"{level['request_throughput']:.2f}", f"{level['output_token_throughput']:.1f}",
                 _ms(level["ttft"], "p50"), _ms(level["ttft"], "p99"), _ms(level["itl"], "p50"),
                 _ms(level["itl"], "p99"), _ms(level["tpot"], "mean"), _ms(level["e2e"], "p50"),
                 "-" if level["goodput"] is None else f"{level['goodput']:.2f}",
                 _joules(level.get("energy")).removesuffix(" J/output token")]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    heads = ("level", "ok/sent", "req/s", "out tok/s", "TTFT p50 ms", "TTFT p99 ms",
             "ITL p50 ms", "ITL p99 ms", "TPOT mean ms", "E2E p50 ms", "goodput/s",
             "J/out token")  # fmt: skip
    endpoint, workload = result["endpoint"], result["workload"]
    title = f"llamaherd bench: {endpoint['model']}"
    prompt = workload.get("prompt_lengths") or workload["prompt_tokens"]
    output = workload.get("output_lengths") or workload["output_tokens"]
    chat = ""
    if workload.get("turns", 1) > 1 or workload.get("system_tokens"):
        chat = (f", chats of {workload.get('turns', 1)} turns sharing a system prompt of "
                f"{workload.get('system_tokens', 0)} tokens")  # fmt: skip
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{html.escape(endpoint["url"])} ({html.escape(endpoint["api"])}),
{html.escape(str(prompt))} prompt tokens, {html.escape(str(output))} output tokens{chat},
seed {result["seed"]}{", SLO " + html.escape(", ".join(result["slo"])) if result["slo"] else ""}.
</p><p><code>{html.escape(result["command"])}</code></p>
<div class="charts"><figure><figcaption>Latency vs load</figcaption>{latency}</figure>
<figure><figcaption>Throughput vs load</figcaption>{throughput}</figure>
<figure><figcaption>Per-node share of served requests</figcaption>{share_chart(levels)}</figure>
</div><h2>Figures</h2><table><tr>{"".join(f"<th>{h}</th>" for h in heads)}</tr>
{"".join(rows)}</table>{node_table(levels)}{turn_table(levels)}</body></html>
"""


def node_table(levels: Sequence[dict[str, Any]]) -> str:
    """Per node and level: requests, share, output tokens/s, median TTFT/ITL, J/token."""
    heads = ("level", "node", "requests", "share", "out tok/s", "TTFT p50 ms", "ITL p50 ms",
             "mean W", "J/out token")  # fmt: skip
    rows = []
    for level in levels:
        energy = (level.get("energy") or {}).get("nodes", {})
        for node, f in (level.get("nodes") or {}).items():
            power = energy.get(node) or {}
            jpt = power.get("joules_per_output_token")
            cells = [level["label"], node, str(f["requests"]), f"{f['share']:.0%}",
                     f"{f['output_token_throughput']:.1f}",
                     "-" if f["ttft_p50"] is None else f"{f['ttft_p50'] * 1000:.1f}",
                     "-" if f["itl_p50"] is None else f"{f['itl_p50'] * 1000:.1f}",
                     f"{power['mean_watts']:.1f}" if power else "n/a",
                     "n/a" if jpt is None else f"{jpt:.3g}"]  # fmt: skip
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in heads)
    return f"<h2>Per node</h2><table><tr>{head}</tr>{''.join(rows)}</table>"


def turn_table(levels: Sequence[dict[str, Any]]) -> str:
    """Median TTFT by chat turn (multi-turn runs only)."""
    turns = sorted({int(t) for level in levels for t in level.get("ttft_p50_by_turn", {})})
    if not turns:
        return ""
    head = "".join(f"<th>turn {t}</th>" for t in turns)
    rows = []
    for level in levels:
        by_turn = level.get("ttft_p50_by_turn", {})
        cells = [f"{by_turn[str(t)] * 1000:.1f}" if str(t) in by_turn else "-" for t in turns]
        rows.append(f"<tr><td>{html.escape(level['label'])}</td>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")  # fmt: skip
    return (
        f"<h2>TTFT p50 ms by chat turn</h2><table><tr><th>level</th>{head}</tr>"
        f"{''.join(rows)}</table>"
    )  # fmt: skip
