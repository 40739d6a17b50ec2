"""Benchmark figures from per-request records, defined as vLLM's `bench serve` and GuideLLM
define them. Pure functions: every time is a number of seconds on one monotonic clock.

- TTFT: first content chunk's arrival - send.
- ITL (inter-token latency): the gaps between content chunks; when the chunks carry more
  tokens than there are chunks, each gap is divided by the tokens per gap.
- TPOT (time per output token): (e2e - TTFT) / (output tokens - 1).
- E2E: the last byte's arrival - send.
- Throughput: over the measured window (first measured send to last measured end;
  warm-up excluded): requests, output tokens and all tokens per second.
- Goodput: requests per second, over the same window, that met every SLO term.
- Energy per output token (where nodes report power): each node's mean power over the
  level's samples x the level's window, divided by the output tokens that node served.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Metric = Literal["ttft", "itl", "tpot", "e2e"]
METRICS: tuple[Metric, ...] = ("ttft", "itl", "tpot", "e2e")
STATS = ("mean", "p50", "p90", "p95", "p99")


class SloError(ValueError):
    """An `--slo` string that cannot be read; the message names the term and the form."""


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it. Times are seconds from the run's start."""

    level: int  # index of the load level
    index: int  # index within the level (warm-up requests first)
    warmup: bool
    sent_s: float
    chunk_s: tuple[float, ...]  # arrival of each chunk that carried content
    done_s: float
    output_tokens: int  # usage.completion_tokens, else the number of content chunks
    prompt_tokens: int | None  # usage.prompt_tokens, when the server reports it
    node: str | None  # the x-llamaherd-node header, when the endpoint sends it
    error: str | None = None  # the kind of failure (http_429, timeout, ...); None when served
    detail: str | None = None  # the failure's message, for the record
    turn: int | None = None  # 1-based turn within its conversation (multi-turn chats only)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.chunk_s)

    @property
    def ttft(self) -> float:
        return self.chunk_s[0] - self.sent_s

    @property
    def e2e(self) -> float:
        return self.done_s - self.sent_s

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        return inter_token_latencies(self.chunk_s, self.output_tokens)


def inter_token_latencies(chunk_s: Sequence[float], output_tokens: int) -> list[float]:
    """Gaps between content chunks, per token: when n chunks carried more than n tokens,
    the n-1 gaps carried output_tokens-1 tokens, so each gap is divided by their ratio."""
    gaps = [b - a for a, b in itertools.pairwise(chunk_s)]
    if not gaps or output_tokens <= len(chunk_s):
        return gaps
    per_gap = (output_tokens - 1) / len(gaps)
    return [g / per_gap for g in gaps]


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile with linear interpolation between ranks (numpy's default, which
    vLLM and GuideLLM use)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Stats:
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float

    def get(self, stat: str) -> float:
        value: float = getattr(self, stat)
        return value


def stats(values: Sequence[float]) -> Stats | None:
    if not values:
        return None
    return Stats(
        mean=sum(values) / len(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
    )


# ---- SLO --------------------------------------------------------------------------------
SLO_FORM = "METRIC_STAT=NUMBER(ms|s), METRIC one of ttft, itl, tpot, e2e and STAT one of " + (
    ", ".join(STATS) + "; e.g. ttft_p99=2s,itl_p99=200ms"
)
_TERM = re.compile(r"^(?P<metric>[a-z0-9]+)_(?P<stat>[a-z0-9]+)=(?P<number>[0-9.]+)(?P<unit>ms|s)$")


@dataclass(frozen=True)
class SloTerm:
    metric: Metric
    stat: str
    limit_s: float

    @property
    def text(self) -> str:
        limit = f"{self.limit_s:g}s" if self.limit_s >= 1 else f"{self.limit_s * 1000:g}ms"
        return f"{self.metric}_{self.stat}={limit}"


def parse_slo(text: str) -> tuple[SloTerm, ...]:
    """`ttft_p99=2s,itl_p99=200ms` -> terms; an unreadable term raises SloError naming it."""
    terms = []
    for raw in text.split(","):
        term = raw.strip()
        match = _TERM.match(term.lower())
        if not match:
            raise SloError(f"--slo term {term!r} is not of the form {SLO_FORM}")
        metric, stat = match["metric"], match["stat"]
        if metric not in METRICS:
            raise SloError(f"--slo term {term!r}: unknown metric {metric!r}; {SLO_FORM}")
        if stat not in STATS:
            raise SloError(f"--slo term {term!r}: unknown statistic {stat!r}; {SLO_FORM}")
        try:
            number = float(match["number"])
        except ValueError:
            raise SloError(f"--slo term {term!r}: {match['number']!r} is not a number") from None
        if number <= 0:
            raise SloError(f"--slo term {term!r}: the limit must be more than 0")
        limit = number / 1000 if match["unit"] == "ms" else number
        terms.append(SloTerm(metric, stat, limit))
    return tuple(terms)


def request_value(record: RequestRecord, term: SloTerm) -> float | None:
    """The request's own figure for an SLO term: its TTFT, TPOT or E2E, or the term's
    statistic of its inter-token latencies."""
    if term.metric == "ttft":
        return record.ttft
    if term.metric == "e2e":
        return record.e2e
    if term.metric == "tpot":
        return record.tpot
    itl = stats(record.itls)
    return itl.get(term.stat) if itl else None


def meets(record: RequestRecord, slo: Sequence[SloTerm]) -> bool:
    """Whether a served request met every term (a figure it does not have, such as the ITL
    of a one-token reply, does not count against it)."""
    if not record.ok:
        return False
    for term in slo:
        value = request_value(record, term)
        if value is not None and value > term.limit_s:
            return False
    return True


# ---- one load level ---------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    mean: float
    min: int
    max: int


@dataclass(frozen=True)
class LevelFigures:
    """Everything measured at one load level, warm-up excluded."""

    requests: int
    completed: int
    errors: dict[str, int]
    window_s: float
    request_throughput: float
    output_token_throughput: float
    total_token_throughput: float
    ttft: Stats | None
    itl: Stats | None
    tpot: Stats | None
    e2e: Stats | None
    output_tokens: Range | None
    prompt_tokens: Range | None
    node_share: dict[str, float]
    goodput: float | None  # requests per second meeting the SLO; None without an SLO
    slo_met: dict[str, bool]  # each term, judged on the level's aggregate figure


def _range(values: Sequence[int]) -> Range | None:
    if not values:
        return None
    return Range(sum(values) / len(values), min(values), max(values))


def level_figures(records: Sequence[RequestRecord], slo: Sequence[SloTerm]) -> LevelFigures:
    measured = [r for r in records if not r.warmup]
    served = [r for r in measured if r.ok]
    errors = Counter(r.error or "no_content" for r in measured if not r.ok)
    window = (max(r.done_s for r in measured) - min(r.sent_s for r in measured)) if measured else 0
    per_s = 1 / window if window > 0 else 0.0
    output = sum(r.output_tokens for r in served)
    prompt = sum(r.prompt_tokens or 0 for r in served)
    nodes = Counter(r.node or "unknown" for r in served)
    by_metric = {
        "ttft": stats([r.ttft for r in served]),
        "itl": stats([gap for r in served for gap in r.itls]),
        "tpot": stats([t for r in served if (t := r.tpot) is not None]),
        "e2e": stats([r.e2e for r in served]),
    }
    slo_met = {}
    for term in slo:
        aggregate = by_metric[term.metric]
        slo_met[term.text] = aggregate is not None and aggregate.get(term.stat) <= term.limit_s
    return LevelFigures(
        requests=len(measured),
        completed=len(served),
        errors=dict(sorted(errors.items())),
        window_s=window,
        request_throughput=len(served) * per_s,
        output_token_throughput=output * per_s,
        total_token_throughput=(output + prompt) * per_s,
        ttft=by_metric["ttft"],
        itl=by_metric["itl"],
        tpot=by_metric["tpot"],
        e2e=by_metric["e2e"],
        output_tokens=_range([r.output_tokens for r in served]),
        prompt_tokens=_range([r.prompt_tokens for r in served if r.prompt_tokens is not None]),
        node_share={n: c / len(served) for n, c in sorted(nodes.items())},
        goodput=sum(meets(r, slo) for r in served) * per_s if slo else None,
        slo_met=slo_met,
    )


# ---- per node and per turn ----------------------------------------------------------------
@dataclass(frozen=True)
class NodeFigures:
    """One node's part of a level: what it served and how fast, from the serving-node
    header (node "unknown" when the endpoint sends none)."""

    requests: int
    share: float
    output_tokens: int
    output_token_throughput: float  # its output tokens over the level's window
    ttft_p50: float | None
    itl_p50: float | None
    e2e_p50: float | None


def _p50(values: Sequence[float]) -> float | None:
    return percentile(values, 50) if values else None


def node_figures(records: Sequence[RequestRecord]) -> dict[str, NodeFigures]:
    """Each node's requests, share, output tokens and median latencies in one level."""
    measured = [r for r in records if not r.warmup]
    served = [r for r in measured if r.ok]
    window = (max(r.done_s for r in measured) - min(r.sent_s for r in measured)) if measured else 0
    by_node: dict[str, list[RequestRecord]] = {}
    for r in served:
        by_node.setdefault(r.node or "unknown", []).append(r)
    figures = {}
    for node, mine in sorted(by_node.items()):
        tokens = sum(r.output_tokens for r in mine)
        figures[node] = NodeFigures(
            requests=len(mine),
            share=len(mine) / len(served),
            output_tokens=tokens,
            output_token_throughput=tokens / window if window > 0 else 0.0,
            ttft_p50=_p50([r.ttft for r in mine]),
            itl_p50=_p50([gap for r in mine for gap in r.itls]),
            e2e_p50=_p50([r.e2e for r in mine]),
        )
    return figures


def turn_ttft(records: Sequence[RequestRecord]) -> dict[int, float]:
    """Median TTFT by conversation turn (multi-turn chats): a server that caches the shared
    system prompt and the history answers later turns' long prompts sooner."""
    by_turn: dict[int, list[float]] = {}
    for r in records:
        if not r.warmup and r.ok and r.turn is not None:
            by_turn.setdefault(r.turn, []).append(r.ttft)
    return {turn: percentile(ttfts, 50) for turn, ttfts in sorted(by_turn.items())}


# ---- energy -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PowerSample:
    """One node's power as the cluster view reported it while a level ran."""

    level: int
    node: str
    taken_at: float  # the node's sample time (unix s): repeated polls of one sample count once
    watts: float
    source: str  # "board" (Jetson VDD_IN or rail sum) or "gpu" (sum of the GPUs' NVML power)


@dataclass(frozen=True)
class NodeEnergy:
    mean_watts: float
    samples: int
    source: str
    joules: float  # mean_watts x the level's window
    output_tokens: int  # what the node served in the level
    joules_per_output_token: float | None  # None when it served no output token


@dataclass(frozen=True)
class EnergyFigures:
    """A level's energy: per node that reported power, and in total over those nodes."""

    nodes: dict[str, NodeEnergy]
    joules: float
    joules_per_output_token: float | None


def energy_figures(
    samples: Sequence[PowerSample], records: Sequence[RequestRecord]
) -> EnergyFigures | None:
    """Joules per output token per node and in total, or None when no node reported power
    (then the report says n/a). A node's energy is its mean power over the level's distinct
    samples times the level's window; the total divides the nodes' joules by the output
    tokens those nodes served (requests served by nodes without power are left out)."""
    measured = [r for r in records if not r.warmup]
    if not samples or not measured:
        return None
    window = max(r.done_s for r in measured) - min(r.sent_s for r in measured)
    tokens: Counter[str] = Counter()
    for r in measured:
        if r.ok:
            tokens[r.node or "unknown"] += r.output_tokens
    distinct: dict[str, dict[float, PowerSample]] = {}
    for sample in samples:
        distinct.setdefault(sample.node, {})[sample.taken_at] = sample
    nodes = {}
    for node, by_time in sorted(distinct.items()):
        watts = [s.watts for s in by_time.values()]
        mean = sum(watts) / len(watts)
        joules = mean * window
        nodes[node] = NodeEnergy(
            mean_watts=mean,
            samples=len(watts),
            source=next(iter(by_time.values())).source,
            joules=joules,
            output_tokens=tokens[node],
            joules_per_output_token=joules / tokens[node] if tokens[node] else None,
        )
    total_joules = sum(n.joules for n in nodes.values())
    total_tokens = sum(n.output_tokens for n in nodes.values())
    return EnergyFigures(
        nodes=nodes,
        joules=total_joules,
        joules_per_output_token=total_joules / total_tokens if total_tokens else None,
    )


def node_power(document: object) -> dict[str, tuple[float, float, str]]:
    """(taken_at, watts, source) per node from a /v1/cluster document: the Jetson board
    input where measured, else the sum of the GPUs' power (as the dashboard charts it);
    nodes that report neither are left out. Tolerant: a document of another shape gives {}."""
    found: dict[str, tuple[float, float, str]] = {}
    nodes = document.get("nodes") if isinstance(document, dict) else None
    for view in nodes if isinstance(nodes, list) else []:
        if not isinstance(view, dict) or not isinstance(status := view.get("status"), dict):
            continue
        telemetry = status.get("telemetry")
        if not isinstance(telemetry, dict) or not view.get("up", True):
            continue
        jetson = telemetry.get("jetson") or {}
        board = jetson.get("power_total_watts") if isinstance(jetson, dict) else None
        gpus = [g.get("power_watts") for g in telemetry.get("gpus") or [] if isinstance(g, dict)]
        gpu_watts = [float(w) for w in gpus if isinstance(w, int | float)]
        taken = float(telemetry.get("taken_at") or 0.0)
        if isinstance(board, int | float):
            found[str(status.get("node_id"))] = (taken, float(board), "board")
        elif gpu_watts:
            found[str(status.get("node_id"))] = (taken, sum(gpu_watts), "gpu")
    return found
