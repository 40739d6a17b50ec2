"""Figures from per-request records, on inputs whose answers are known."""

from __future__ import annotations

import pytest

from orchestrator.bench.metrics import (
    RequestRecord,
    SloError,
    SloTerm,
    inter_token_latencies,
    level_figures,
    meets,
    node_figures,
    parse_slo,
    percentile,
    turn_ttft,
)


def record(sent=0.0, chunks=(0.5, 0.6, 0.7, 0.8), done=None, out=4, node="a", **kw):
    return RequestRecord(
        level=0, index=kw.pop("index", 0), warmup=kw.pop("warmup", False), sent_s=sent,
        chunk_s=tuple(sent + c for c in chunks), done_s=sent + (done or chunks[-1]),
        output_tokens=out, prompt_tokens=kw.pop("prompt", 128), node=node, **kw,
    )  # fmt: skip


def test_a_request_s_ttft_itl_tpot_and_e2e():
    r = record(sent=10.0, chunks=(0.5, 0.6, 0.8, 0.9), done=1.0)
    assert r.ttft == pytest.approx(0.5)
    assert r.e2e == pytest.approx(1.0)
    assert r.itls == pytest.approx([0.1, 0.2, 0.1])
    assert r.tpot == pytest.approx((1.0 - 0.5) / 3)


def test_gaps_are_per_token_when_chunks_carry_several():
    # 3 chunks carried 5 tokens: 2 gaps carry 4 tokens, 2 each
    assert inter_token_latencies((0.0, 0.2, 0.6), 5) == pytest.approx([0.1, 0.2])
    assert inter_token_latencies((0.0,), 1) == []


def test_a_one_token_reply_has_no_tpot():
    assert record(chunks=(0.3,), out=1).tpot is None


def test_percentiles_interpolate_as_numpy_does():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 90) == 7.0


def test_slo_terms_parse():
    assert parse_slo("ttft_p99=2s, itl_p99=200ms,tpot_mean=0.05s") == (
        SloTerm("ttft", "p99", 2.0), SloTerm("itl", "p99", 0.2), SloTerm("tpot", "mean", 0.05),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ttft_p99=2", "--slo term 'ttft_p99=2' is not of the form METRIC_STAT=NUMBER(ms|s)"),
        ("ttft=2s", "is not of the form"),
        ("latency_p99=2s", "unknown metric 'latency'"),
        ("ttft_p42=2s", "unknown statistic 'p42'"),
        ("ttft_p99=0s", "the limit must be more than 0"),
        ("ttft_p99=1.2.3s", "'1.2.3' is not a number"),
        ("ttft_p99=2s,", "term ''"),
    ],
)
def test_an_unreadable_slo_names_the_term_and_the_form(text, says):
    with pytest.raises(SloError) as caught:
        parse_slo(text)
    assert says in str(caught.value)
    assert "e.g. ttft_p99=2s" in str(caught.value) or "limit" in says or "number" in says


def test_a_request_meets_the_slo_on_its_own_figures():
    slo = parse_slo("ttft_p99=600ms,itl_p99=150ms")
    assert meets(record(chunks=(0.5, 0.6, 0.7), out=3), slo)
    assert not meets(record(chunks=(0.7, 0.8), out=2), slo)  # TTFT too long
    assert not meets(record(chunks=(0.5, 0.7), out=2), slo)  # a 200 ms gap
    assert not meets(record(chunks=(), done=0.1, error="http_429"), slo)


def test_a_level_s_figures():
    records = [
        record(sent=0.0, chunks=(0.5, 0.6, 0.7, 0.8), done=1.0, node="a", index=1),
        record(sent=1.0, chunks=(0.2, 0.3, 0.4, 0.5), done=1.0, node="b", index=2),
        record(sent=1.0, chunks=(0.9, 1.0, 1.1, 1.2), done=2.0, node="a", index=3),
        record(sent=2.0, chunks=(), done=0.1, error="http_429", index=4),
        record(sent=-5.0, chunks=(0.1,), done=0.2, out=1, warmup=True, node="c"),  # excluded
    ]
    figures = level_figures(records, parse_slo("ttft_p50=600ms"))
    assert figures.requests == 4 and figures.completed == 3
    assert figures.errors == {"http_429": 1}
    assert figures.window_s == pytest.approx(3.0)  # first send 0.0, last end 3.0
    assert figures.request_throughput == pytest.approx(1.0)
    assert figures.output_token_throughput == pytest.approx(12 / 3)
    assert figures.total_token_throughput == pytest.approx((12 + 3 * 128) / 3)
    assert figures.ttft is not None and figures.ttft.p50 == pytest.approx(0.5)
    assert figures.itl is not None and figures.itl.mean == pytest.approx(0.1)
    assert figures.e2e is not None and figures.e2e.mean == pytest.approx(4 / 3)
    assert figures.node_share == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    assert figures.goodput == pytest.approx(2 / 3)  # the 0.9 s TTFT misses
    assert figures.slo_met == {"ttft_p50=600ms": True}
    assert figures.output_tokens is not None and figures.output_tokens.min == 4


def test_without_an_slo_there_is_no_goodput():
    assert level_figures([record()], ()).goodput is None


def test_each_node_s_part_of_a_level():
    records = [
        record(sent=0.0, chunks=(0.2, 0.3, 0.4, 0.5), done=0.5, node="a", index=1),
        record(sent=0.5, chunks=(0.4, 0.6, 0.8, 1.0), done=1.5, node="a", index=2),  # ends 2.0
        record(sent=1.0, chunks=(0.1, 0.2), out=2, node="b", index=3),
        record(sent=1.0, chunks=(0.1,), node=None, index=4),
        record(sent=0.0, chunks=(0.1,), node="b", index=5, error="http_503"),
        record(sent=0.0, chunks=(9.0,), node="b", index=0, warmup=True),
    ]
    nodes = node_figures(records)
    assert list(nodes) == ["a", "b", "unknown"]
    a, b = nodes["a"], nodes["b"]
    assert (a.requests, a.output_tokens, b.requests, b.output_tokens) == (2, 8, 1, 2)
    assert a.share == pytest.approx(0.5) and nodes["unknown"].share == pytest.approx(0.25)
    assert a.output_token_throughput == pytest.approx(8 / 2.0)  # over the level's 2 s window
    assert a.ttft_p50 == pytest.approx(0.3) and a.e2e_p50 == pytest.approx(1.0)
    assert a.itl_p50 == pytest.approx(0.15) and b.ttft_p50 == pytest.approx(0.1)


def test_ttft_by_turn_shows_what_a_prefix_cache_saves():
    records = [
        record(chunks=(0.4,), turn=1, index=1), record(chunks=(0.6,), turn=1, index=2),
        record(chunks=(0.1,), turn=2, index=3), record(chunks=(0.9,), turn=2, warmup=True),
        record(chunks=(0.1,), turn=3, error="timeout"), record(chunks=(0.3,), index=4),
    ]  # fmt: skip
    assert turn_ttft(records) == pytest.approx({1: 0.5, 2: 0.1})
