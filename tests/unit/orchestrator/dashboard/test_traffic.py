"""The traffic recorder on an injected clock: what a request's chunk times become (TTFT, ITL,
percentiles), how buckets roll over and expire, what the two JSON views hold, and the
bounds on samples and label series."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.dashboard.traffic import ITL_BOUNDS, Traffic
from orchestrator.gateway.metrics import render

T0 = 1_764_500_000.0  # a bucket boundary (divisible by 5)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def recorder(clock: Clock, **kwargs: Any) -> Traffic:
    return Traffic(clock, rng=random.Random(7), **kwargs)


def request(
    traffic: Traffic,
    clock: Clock,
    chunks: list[tuple[float, int]],
    *,
    model: str = "m",
    node: str = "w1",
    outcome: str = "ok",
    end: float = 0.0,
) -> None:
    """One request from now: `chunks` as (seconds after its start, tokens), finished
    `end` seconds after its last chunk."""
    start = clock.now
    trace = traffic.begin(model)
    for at, tokens in chunks:
        clock.now = start + at
        trace.chunk(node, tokens)
    clock.now += end
    trace.finish(outcome, node)


def parsed(traffic: Traffic) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(render(traffic.families()).decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


# ---- what chunk times become -----------------------------------------------------------------
def test_ttft_is_the_first_chunk_and_itl_the_gap_per_token_of_the_later_chunk():
    clock = Clock(T0 + 1)
    traffic = recorder(clock)
    # First chunk after 0.2 s; then 2 tokens 0.1 s later (0.05 s each), 1 token 0.1 s later,
    # and a final chunk with no tokens (no ITL sample).
    request(traffic, clock, [(0.2, 1), (0.3, 2), (0.4, 1), (0.45, 0)], end=0.05)
    summary = traffic.summary_json(60)
    assert summary["requests"] == 1 and summary["tokens"] == 4
    assert summary["ttft_p50"] == summary["ttft_p99"] == 0.2
    assert summary["itl_p50"] == 0.05 and summary["itl_p99"] == 0.1
    out = parsed(traffic)
    labels = (("model", "m"), ("node", "w1"))
    assert out["llamaherd_gateway_time_to_first_token_seconds_count"][labels] == 1
    assert out["llamaherd_gateway_inter_token_latency_seconds_count"][labels] == 2
    assert out["llamaherd_gateway_request_duration_seconds_sum"][labels] == pytest.approx(0.5)
    assert out["llamaherd_gateway_generated_tokens_total"][labels] == 4


def test_percentiles_are_nearest_rank_on_known_inputs():
    clock = Clock(T0)
    traffic = recorder(clock)
    for i in range(1, 101):  # TTFTs 0.01 .. 1.00, in a shuffled order
        clock.now = T0 + 0.5
        request(traffic, clock, [((i * 37 % 100 + 1) / 100, 1)])
    summary = traffic.summary_json(60)
    assert summary["ttft_p50"] == 0.5 and summary["ttft_p99"] == 0.99
    assert summary["itl_p50"] is None, "no second chunk: no ITL sample, null not NaN"


def test_histogram_buckets_are_cumulative_with_prometheus_le_semantics():
    clock = Clock(T0)
    traffic = recorder(clock)
    for gap in (0.004, 0.006, 3.0):  # under a bound, above it, above the last
        request(traffic, clock, [(0.1, 1), (0.1 + gap, 1)])
    itl = parsed(traffic)["llamaherd_gateway_inter_token_latency_seconds_bucket"]
    by_le = {dict(k)["le"]: v for k, v in itl.items()}
    assert by_le["0.005"] == 1 and by_le["0.01"] == 2 and by_le["2.0"] == 2
    assert by_le["+Inf"] == 3 and len(by_le) == len(ITL_BOUNDS) + 1


# ---- buckets over time -----------------------------------------------------------------------
def test_history_holds_completed_buckets_only_with_zeros_for_idle_ones():
    clock = Clock(T0 + 1)
    traffic = recorder(clock)
    request(traffic, clock, [(0.1, 3)])  # bucket T0
    clock.now = T0 + 11
    request(traffic, clock, [(0.2, 5)])  # bucket T0+10; T0+5 stays idle
    clock.now = T0 + 16  # in bucket T0+15, in progress
    request(traffic, clock, [(0.1, 1)])
    history = traffic.history_json()
    assert history["bucket_s"] == 5
    assert history["t"] == [T0, T0 + 5, T0 + 10]
    assert history["requests"] == [1, 0, 1] and history["tokens"] == [3, 0, 5]
    assert history["ttft_p50"] == [0.1, None, 0.2]
    assert history["by_model"]["m"]["tokens"] == [3, 0, 5]
    # The bucket in progress is in the summary, not the history.
    assert traffic.summary_json(60)["requests"] == 3


def test_history_since_returns_only_buckets_completed_after_it():
    clock = Clock(T0)
    traffic = recorder(clock)
    for k in range(4):
        clock.now = T0 + 5 * k + 1
        request(traffic, clock, [(0.1, k + 1)])
    clock.now = T0 + 21
    first = traffic.history_json()
    assert first["t"] == [T0, T0 + 5, T0 + 10, T0 + 15]
    later = traffic.history_json(since=first["t"][-1])
    assert later["t"] == [] and later["by_model"] == {}
    clock.now = T0 + 27  # bucket T0+20 completed since
    assert traffic.history_json(since=first["t"][-1])["t"] == [T0 + 20]
    assert traffic.history_json(since=T0 + 4.9)["tokens"] == [2, 3, 4, 0]


def test_the_window_drops_old_buckets_and_the_history_starts_at_the_start():
    clock = Clock(T0 + 1)
    traffic = recorder(clock, window_s=60)
    request(traffic, clock, [(0.1, 1)])
    clock.now = T0 + 31
    assert traffic.history_json()["t"][0] == T0, "nothing before the recorder started"
    clock.now = T0 + 200
    request(traffic, clock, [(0.1, 1)])
    history = traffic.history_json()
    assert len(history["t"]) == 11 and history["t"][0] == T0 + 145  # 12 buckets, one open
    assert sum(history["requests"]) == 0
    assert len(traffic._buckets) <= 12, "the ring keeps window_s / bucket_s buckets"


def test_summary_rates_cover_the_window_or_the_time_since_the_start():
    clock = Clock(T0)
    traffic = recorder(clock)
    clock.now = T0 + 10
    for _ in range(5):
        request(traffic, clock, [(0.0, 4)])
    summary = traffic.summary_json(60)  # 10 s of recording
    assert summary["window_s"] == 60 and summary["rps"] == 0.5 and summary["tps"] == 2.0
    clock.now = T0 + 120  # long after: the window has nothing
    assert traffic.summary_json(60)["requests"] == 0 and traffic.summary_json(60)["rps"] == 0
    request(traffic, clock, [(0.0, 6)])
    assert traffic.summary_json(60)["tps"] == 0.1  # 6 tokens over the last 60 s


# ---- outcomes, models, nodes -----------------------------------------------------------------
def test_errors_by_outcome_and_client_departures_apart():
    clock = Clock(T0 + 1)
    traffic = recorder(clock)
    request(traffic, clock, [(0.1, 1)])
    request(traffic, clock, [], outcome="unavailable", node="")
    request(traffic, clock, [], outcome="unavailable", node="w2")
    request(traffic, clock, [], model="unknown", outcome="not_found", node="")
    request(traffic, clock, [(0.1, 1)], outcome="cancelled")
    summary = traffic.summary_json(60)
    assert summary["requests"] == 5 and summary["cancelled"] == 1
    assert summary["errors"] == {"not_found": 1, "unavailable": 2}
    assert [m["model"] for m in summary["by_model"]] == ["m", "unknown"]
    by_node = {n["node"]: n for n in summary["by_node"]}
    assert set(by_node) == {"w1", "w2"}, "a request that reached no node is in the totals"
    assert by_node["w2"]["errors"] == {"unavailable": 1} and by_node["w1"]["requests"] == 2
    clock.now = T0 + 6
    assert traffic.history_json()["errors"] == [3]
    requests = parsed(traffic)["llamaherd_gateway_requests_total"]
    assert requests[(("model", "m"), ("node", ""), ("outcome", "unavailable"))] == 1
    assert requests[(("model", "unknown"), ("node", ""), ("outcome", "not_found"))] == 1
    assert requests[(("model", "m"), ("node", "w1"), ("outcome", "cancelled"))] == 1


def test_a_trace_finishes_once_with_a_known_outcome():
    traffic = recorder(Clock())
    trace = traffic.begin("m")
    with pytest.raises(ValueError, match="'done' is not one of"):
        trace.finish("done")
    trace.finish("ok", "w1")
    with pytest.raises(RuntimeError, match="finished twice"):
        trace.finish("ok", "w1")


def test_the_finishing_label_replaces_the_requested_model():
    clock = Clock(T0 + 1)
    traffic = recorder(clock)
    traffic.begin("whatever-a-client-typed").finish("not_found", "", model="unknown")
    assert [m["model"] for m in traffic.summary_json()["by_model"]] == ["unknown"]


# ---- bounds ----------------------------------------------------------------------------------
def test_samples_per_bucket_are_capped_and_a_uniform_sample_of_the_bucket():
    clock = Clock(T0)
    traffic = recorder(clock, samples_per_bucket=64)
    trace = traffic.begin("m")
    clock.now = T0 + 0.01
    trace.chunk("w1", 1)
    for i in range(10_000):  # ITL grows through the bucket: 0 .. 0.8 ms, 4 s in all
        clock.now += 0.0008 * i / 10_000
        trace.chunk("w1", 1)
    cell = traffic._buckets[traffic._index(T0)][("m", "w1")]
    assert len(cell.itl.kept) == 64 and cell.itl.seen == 10_000
    # Keeping the first 64 would put the median near 2.5 us; a uniform sample near 0.4 ms.
    assert 0.0003 < traffic.summary_json()["itl_p50"] < 0.0005


def test_merged_percentiles_weight_each_series_by_what_it_saw():
    clock = Clock(T0)
    traffic = recorder(clock, samples_per_bucket=8)
    for model, ttft, n in (("busy", 1.0, 1000), ("quiet", 2.0, 8)):
        for _ in range(n):
            clock.now = T0
            request(traffic, clock, [(ttft, 1)], model=model)
    summary = traffic.summary_json()
    # Unweighted, 8 + 8 kept samples would put p99 at 2.0: the quiet model's 8 requests
    # are under 1% of the 1,008.
    assert summary["ttft_p99"] == 1.0
    assert {m["model"]: m["ttft_p99"] for m in summary["by_model"]} == {"busy": 1, "quiet": 2}


def test_series_beyond_the_cap_fold_into_other():
    clock = Clock(T0 + 1)
    traffic = recorder(clock, max_series=2)
    for model in ("a", "b", "c", "d"):
        request(traffic, clock, [(0.1, 1)], model=model)
    tokens = parsed(traffic)["llamaherd_gateway_generated_tokens_total"]
    assert {dict(k)["model"]: v for k, v in tokens.items()} == {"a": 1, "b": 1, "other": 2}
    assert [m["model"] for m in traffic.summary_json()["by_model"]] == ["a", "b", "other"]


def test_json_never_holds_nan():
    clock = Clock(T0 + 1)
    traffic = recorder(clock)
    json.dumps([traffic.history_json(), traffic.summary_json()], allow_nan=False)
    request(traffic, clock, [], outcome="unavailable", node="")  # a request with no sample
    request(traffic, clock, [(0.0, 0), (0.0, 1)])  # zero gaps and a chunk with no tokens
    clock.now = T0 + 30
    for view in (traffic.history_json(), traffic.summary_json()):
        json.dumps(view, allow_nan=False)
    assert traffic.history_json()["ttft_p50"][0] == 0.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="bucket_s"):
        Traffic(Clock(), bucket_s=10, window_s=5)
    with pytest.raises(ValueError, match="samples_per_bucket"):
        Traffic(Clock(), samples_per_bucket=0)
