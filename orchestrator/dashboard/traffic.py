"""What a gateway's requests look like over time, recorded by the Router as it relays them.

Two views of the same traffic:
- for the dashboard, a short history: a ring of `bucket_s` buckets covering `window_s`,
  each holding per (model, node) the finished requests by outcome, the tokens relayed and a
  bounded sample of time to first token (TTFT), inter-token latency (ITL) and request
  duration, from which `history_json` and `summary_json` compute rates and percentiles;
- for Prometheus, cumulative counters and histograms (`families`, added to `/metrics`).

Samples are kept by reservoir sampling (Algorithm R, with an injected random.Random): a
busy bucket sees thousands of ITL samples (32 streams at 40 tokens/s give 6,400 in 5 s),
and keeping the first N would describe only the bucket's first moments, whereas a reservoir
is a uniform sample of the whole bucket at one random draw per sample. Percentiles are
nearest-rank; merging reservoirs (a bucket's models, a minute's buckets) weights each kept
sample by how many it stands for, so a quiet series does not count as much as a busy one.

Label values are bounded: nodes come from the cluster's own view, models from the Router,
which names a model nobody serves "unknown" (its alias is the client's choice); beyond
`max_series` distinct (model, node) pairs, new models are folded into "other".

Pure: the clock and the random generator are injected; no I/O, no event loop. Not
thread-safe: a gateway records and reads on its one event loop.
"""

from __future__ import annotations

import math
import random
import time
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from common.errors import ErrorKind
from common.prometheus import PREFIX

OK = "ok"
CANCELLED = "cancelled"  # the client went away before the reply was complete
# Every outcome a request can have: fixed, so the `outcome` label stays bounded.
OUTCOMES = frozenset({OK, CANCELLED, *(kind.value for kind in ErrorKind)})
NOT_ERRORS = frozenset({OK, CANCELLED})  # a client leaving is not the cluster's failure

UNKNOWN_MODEL = "unknown"  # a model nobody serves: the client's alias is never a label
OTHER_MODEL = "other"  # models beyond max_series
MAX_SERIES = 1000

# Histogram bounds for what an edge cluster sees: a Jetson's first token takes from tens of
# milliseconds (short prompt, idle) to a minute (long prompt, queued); a token from 5 ms
# (small model on a desktop GPU) to 2 s (a split over Wi-Fi).
TTFT_BOUNDS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
ITL_BOUNDS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)
DURATION_BOUNDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

HISTOGRAMS = (  # name, help; in the order of _Series' histograms
    ("gateway_time_to_first_token_seconds", "From a request's arrival to its first chunk"),
    ("gateway_inter_token_latency_seconds", "Gap between chunks per token, once per chunk"),
    ("gateway_request_duration_seconds", "From a request's arrival to its end"),
)

Key = tuple[str, str]  # (model, node)


class _Reservoir:
    """A uniform sample of at most `cap` values of all those added (Algorithm R)."""

    __slots__ = ("kept", "seen")

    def __init__(self) -> None:
        self.seen = 0
        self.kept = array("d")

    def add(self, value: float, cap: int, rng: random.Random) -> None:
        self.seen += 1
        if len(self.kept) < cap:
            self.kept.append(value)
            return
        slot = rng.randrange(self.seen)
        if slot < cap:
            self.kept[slot] = value


class _Cell:
    """One (model, node) in one bucket."""

    __slots__ = ("duration", "itl", "outcomes", "tokens", "ttft")

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.tokens = 0
        self.ttft = _Reservoir()
        self.itl = _Reservoir()
        self.duration = _Reservoir()


class _Histogram:
    """A cumulative Prometheus histogram: counts per bound (the last is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le semantics: value <= bound
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        edges = [repr(float(b)) for b in self.bounds] + ["+Inf"]
        return list(zip(edges, accumulate(self.counts), strict=True))


class _Series:
    """Everything Prometheus is told about one (model, node), since the gateway started."""

    __slots__ = ("duration", "itl", "tokens", "ttft")

    def __init__(self) -> None:
        self.tokens = 0
        self.ttft = _Histogram(TTFT_BOUNDS)
        self.itl = _Histogram(ITL_BOUNDS)
        self.duration = _Histogram(DURATION_BOUNDS)


class RequestTrace:
    """One client request as it is relayed: `chunk` for each chunk, then `finish` once."""

    __slots__ = ("_finished", "_key", "_last", "_started", "_traffic", "model")

    def __init__(self, traffic: Traffic, model: str, started: float) -> None:
        self._traffic = traffic
        self.model = model
        self._started = started
        self._last: float | None = None  # when the previous chunk came
        self._key: Key | None = None  # the series of the node the last chunk came from
        self._finished = False

    def chunk(self, node: str, tokens: int) -> None:
        """A chunk relayed from `node` carrying `tokens` tokens. TTFT is the first chunk's
        delay; each later chunk with tokens gives one ITL sample (the gap since the previous
        chunk divided by its tokens). O(1): a few dictionary lookups."""
        traffic = self._traffic
        now = traffic.clock()
        key = self._key
        if key is None or key[1] != node:
            key = self._key = traffic.series_key(self.model, node)
        if self._last is None:
            traffic.record_chunk(now, key, tokens, ttft=max(now - self._started, 0.0))
        elif tokens > 0:
            traffic.record_chunk(now, key, tokens, itl=max(now - self._last, 0.0) / tokens)
        else:
            traffic.record_chunk(now, key, 0)
        self._last = now

    def finish(self, outcome: str, node: str = "", model: str | None = None) -> None:
        """The request ended with `outcome` ("ok", an error kind's value, or "cancelled"),
        last served by `node` ("" if none was chosen); `model` replaces the label given to
        `begin` (the Router passes "unknown" for a model nobody serves)."""
        if self._finished:
            raise RuntimeError(f"request for {self.model!r} finished twice")
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r} is not one of {sorted(OUTCOMES)}")
        self._finished = True
        traffic = self._traffic
        now = traffic.clock()
        key = traffic.series_key(model if model is not None else self.model, node)
        traffic.record_finish(now, key, outcome, max(now - self._started, 0.0))


class Traffic:
    """The gateway's traffic recorder; see the module docstring.

    `clock` gives unix seconds (bucket times are wall-clock, so gateways' buckets align);
    memory is bounded by window_s / bucket_s buckets x the (model, node) pairs active in
    each x 3 x samples_per_bucket floats, plus max_series cumulative series.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        bucket_s: float = 5.0,
        window_s: float = 900.0,
        samples_per_bucket: int = 256,
        *,
        rng: random.Random | None = None,
        max_series: int = MAX_SERIES,
    ) -> None:
        if bucket_s <= 0 or window_s < bucket_s:
            raise ValueError(f"need 0 < bucket_s <= window_s, got {bucket_s} and {window_s}")
        if samples_per_bucket < 1 or max_series < 1:
            raise ValueError("samples_per_bucket and max_series must be at least 1")
        self.clock = clock
        self.bucket_s = bucket_s
        self.window_s = window_s
        self.samples_per_bucket = samples_per_bucket
        self.max_series = max_series
        self._rng = rng if rng is not None else random.Random()
        self._keep = max(1, round(window_s / bucket_s))  # buckets in the ring
        self._started = clock()
        self._first = self._index(self._started)
        self._index_now = self._first
        self._current: dict[Key, _Cell] = {}
        self._buckets: dict[int, dict[Key, _Cell]] = {self._first: self._current}
        self._series: dict[Key, _Series] = {}
        self._requests: Counter[tuple[str, str, str]] = Counter()

    # ---- recording ---------------------------------------------------------------------
    def begin(self, model: str) -> RequestTrace:
        """A trace for one client request for `model`, starting now."""
        return RequestTrace(self, model, self.clock())

    def series_key(self, model: str, node: str) -> Key:
        """The (model, node) labels to record under: a new pair beyond max_series is folded
        into model "other", so a flood of models cannot grow memory or /metrics."""
        key = (model, node)
        if key not in self._series:
            if len(self._series) >= self.max_series:
                key = (OTHER_MODEL, node)
                if key in self._series:
                    return key
            self._series[key] = _Series()
        return key

    def record_chunk(
        self,
        now: float,
        key: Key,
        tokens: int,
        *,
        ttft: float | None = None,
        itl: float | None = None,
    ) -> None:
        cell = self._cell(now, key)
        series = self._series[key]
        cell.tokens += tokens
        series.tokens += tokens
        if ttft is not None:
            cell.ttft.add(ttft, self.samples_per_bucket, self._rng)
            series.ttft.observe(ttft)
        if itl is not None:
            cell.itl.add(itl, self.samples_per_bucket, self._rng)
            series.itl.observe(itl)

    def record_finish(self, now: float, key: Key, outcome: str, duration: float) -> None:
        cell = self._cell(now, key)
        cell.outcomes[outcome] += 1
        cell.duration.add(duration, self.samples_per_bucket, self._rng)
        self._series[key].duration.observe(duration)
        self._requests[key[0], key[1], outcome] += 1

    def _index(self, t: float) -> int:
        return math.floor(t / self.bucket_s)

    def _cell(self, now: float, key: Key) -> _Cell:
        index = self._index(now)
        bucket = self._current if index == self._index_now else self._bucket(index)
        cell = bucket.get(key)
        if cell is None:
            cell = bucket[key] = _Cell()
        return cell

    def _bucket(self, index: int) -> dict[Key, _Cell]:
        """The bucket `index`, made when missing; a newer one becomes current and the ring
        drops what fell out of the window."""
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = {}
        if index > self._index_now:
            self._index_now = index
            self._current = bucket
            oldest = index - self._keep + 1
            for old in [i for i in self._buckets if i < oldest]:
                del self._buckets[old]
        return bucket

    # ---- reading -----------------------------------------------------------------------
    def history_json(self, since: float = 0.0) -> dict[str, Any]:
        """Completed buckets that start after `since`, within the window, as aligned
        columns (the dashboard's charts); a bucket without requests has zeros and nulls."""
        now = self.clock()
        current = self._index(now)
        lowest = max(self._first, current - self._keep + 1)
        indices = [i for i in range(lowest, current) if i * self.bucket_s > since]
        buckets = [self._buckets.get(i, {}) for i in indices]
        models = sorted({model for bucket in buckets for model, _ in bucket})
        columns: dict[str, Any] = {
            "bucket_s": self.bucket_s,
            "t": [i * self.bucket_s for i in indices],
            **_columns(buckets),
            "by_model": {model: _columns(buckets, model) for model in models},
        }
        return columns

    def summary_json(self, window_s: float = 60.0) -> dict[str, Any]:
        """The last `window_s` seconds, the bucket in progress included: totals, then per
        model and per node (requests that reached no node appear only in the totals)."""
        now = self.clock()
        current = self._index(now)
        lowest = max(
            self._first, current - self._keep + 1, math.ceil((now - window_s) / self.bucket_s)
        )
        cells = [
            (key, cell)
            for i in range(lowest, current + 1)
            for key, cell in self._buckets.get(i, {}).items()
        ]
        span = now - max(lowest * self.bucket_s, self._started)
        models = sorted({model for (model, _), _ in cells})
        nodes = sorted({node for (_, node), _ in cells if node})
        return {
            "window_s": window_s,
            **_figures([c for _, c in cells], span),
            "by_model": [
                {"model": m, **_figures([c for k, c in cells if k[0] == m], span)} for m in models
            ],
            "by_node": [
                {"node": n, **_figures([c for k, c in cells if k[1] == n], span)} for n in nodes
            ],
        }

    def families(self) -> Iterator[Metric]:
        """The cumulative counters and histograms, as Prometheus families for /metrics."""
        labels = ["model", "node"]
        requests = CounterMetricFamily(
            PREFIX + "gateway_requests",
            "Requests this gateway relayed, by the node that last served them ('' when none "
            "was chosen) and outcome (ok, cancelled or an error kind)",
            labels=[*labels, "outcome"],
        )
        for (model, node, outcome), n in sorted(self._requests.items()):
            requests.add_metric([model, node, outcome], n)
        tokens = CounterMetricFamily(
            PREFIX + "gateway_generated_tokens", "Tokens this gateway relayed to its clients",
            labels=labels,
        )  # fmt: skip
        histograms = [
            HistogramMetricFamily(PREFIX + name, doc, labels=labels) for name, doc in HISTOGRAMS
        ]
        for key, series in sorted(self._series.items()):
            tokens.add_metric(list(key), series.tokens)
            for family, histogram in zip(
                histograms, (series.ttft, series.itl, series.duration), strict=True
            ):
                family.add_metric(list(key), histogram.buckets(), histogram.total)
        yield requests
        yield tokens
        yield from histograms


def _columns(buckets: Sequence[dict[Key, _Cell]], model: str | None = None) -> dict[str, Any]:
    """The history's columns over every model, or over `model` only."""
    rows = [
        [cell for key, cell in bucket.items() if model is None or key[0] == model]
        for bucket in buckets
    ]
    ttft = [_percentiles([c.ttft for c in cells]) for cells in rows]
    itl = [_percentiles([c.itl for c in cells]) for cells in rows]
    return {
        "requests": [sum(sum(c.outcomes.values()) for c in cells) for cells in rows],
        "errors": [sum(_errors(cells).values()) for cells in rows],
        "tokens": [sum(c.tokens for c in cells) for cells in rows],
        "ttft_p50": [p[0] for p in ttft],
        "ttft_p99": [p[1] for p in ttft],
        "itl_p50": [p[0] for p in itl],
        "itl_p99": [p[1] for p in itl],
    }


def _figures(cells: Sequence[_Cell], span: float) -> dict[str, Any]:
    requests = sum(sum(c.outcomes.values()) for c in cells)
    tokens = sum(c.tokens for c in cells)
    ttft = _percentiles([c.ttft for c in cells])
    itl = _percentiles([c.itl for c in cells])
    return {
        "requests": requests,
        "tokens": tokens,
        "rps": round(requests / span, 3) if span > 0 else 0.0,
        "tps": round(tokens / span, 3) if span > 0 else 0.0,
        "ttft_p50": ttft[0],
        "ttft_p99": ttft[1],
        "itl_p50": itl[0],
        "itl_p99": itl[1],
        "errors": dict(sorted(_errors(cells).items())),
        "cancelled": sum(c.outcomes[CANCELLED] for c in cells),
    }


def _errors(cells: Iterable[_Cell]) -> Counter[str]:
    errors: Counter[str] = Counter()
    for cell in cells:
        for outcome, n in cell.outcomes.items():
            if outcome not in NOT_ERRORS:
                errors[outcome] += n
    return errors


def _percentiles(
    reservoirs: Iterable[_Reservoir], quantiles: tuple[float, ...] = (0.5, 0.99)
) -> list[float | None]:
    """Nearest-rank quantiles of the union of `reservoirs`, each kept sample weighted by
    the number of samples it stands for; None (JSON null) when there is no sample."""
    weighted: list[tuple[float, float]] = []
    for reservoir in reservoirs:
        if reservoir.kept:
            weight = reservoir.seen / len(reservoir.kept)
            weighted.extend((value, weight) for value in reservoir.kept)
    if not weighted:
        return [None] * len(quantiles)
    weighted.sort()
    cumulative = list(accumulate(w for _, w in weighted))
    total = cumulative[-1]
    last = len(weighted) - 1
    # The smallest value whose cumulative weight reaches q of the total (a relative
    # tolerance, so rounding in the sum cannot push an exact rank one further).
    return [
        round(weighted[min(bisect_left(cumulative, q * total * (1 - 1e-12)), last)][0], 6)
        for q in quantiles
    ]
