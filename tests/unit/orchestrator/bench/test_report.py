"""The outputs rendered from a result: axis ticks, the comparison's ratios, the HTML."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from orchestrator.bench.report import _ticks, compare_table, html_report, summary_table


def _level(label: str, value: float, ttft_p50: float, tokens_s: float) -> dict:
    stats = {"mean": ttft_p50, "p50": ttft_p50, "p90": ttft_p50, "p95": ttft_p50,
             "p99": ttft_p50 * 2}  # fmt: skip
    return {
        "label": label, "kind": "concurrency", "value": value, "requests": 4, "completed": 4,
        "errors": {}, "window_s": 2.0, "request_throughput": 2.0,
        "output_token_throughput": tokens_s, "total_token_throughput": tokens_s * 3,
        "ttft": stats, "itl": stats, "tpot": stats, "e2e": stats,
        "output_tokens": {"mean": 16, "min": 16, "max": 16}, "prompt_tokens": None,
        "node_share": {"a": 0.75, "<b>": 0.25}, "goodput": None, "slo_met": {},
    }  # fmt: skip


def _result(levels: list[dict]) -> dict:
    return {
        "format": "llamaherd-bench/1", "command": "llamaherd bench --model m <x>",
        "endpoint": {"url": "http://h/v1", "api": "completions", "model": "m"},
        "workload": {"prompt_tokens": 32, "output_tokens": 16, "load": "concurrency"},
        "seed": 0, "slo": [], "levels": levels, "requests": [],
    }  # fmt: skip


def _text(table) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(table)
    return out.getvalue()


@pytest.mark.parametrize(
    ("top", "ticks"),
    [(24.6, [0, 10, 20, 30]), (0.3, [0, 0.1, 0.2, 0.3]), (1000, [0, 500, 1000]), (0, None)],
)
def test_axis_ticks_are_round_steps_covering_the_top(top, ticks):
    got = _ticks(top)
    assert got[0] == 0 and got[-1] >= top
    if ticks is not None:
        assert got == pytest.approx(ticks)


def test_compare_shows_ratios_for_the_shared_levels():
    a = _result([_level("c=1", 1, 0.2, 20.0), _level("c=4", 4, 0.5, 50.0)])
    b = _result([_level("c=1", 1, 0.1, 30.0)])
    text = _text(compare_table(a, b, "A.json", "B.json"))
    assert "c=4" not in text
    row = next(line for line in text.splitlines() if "output tokens/s" in line)
    assert "20.00" in row and "30.00" in row and "1.50" in row
    row = next(line for line in text.splitlines() if "TTFT p50 ms" in line)
    assert "200.00" in row and "100.00" in row and "0.50" in row
    none = _text(compare_table(a, _result([_level("c=8", 8, 1, 1)]), "A", "B"))
    assert "the runs share no load level" in none


def test_the_html_report_is_self_contained_and_escaped():
    page = html_report(_result([_level("c=1", 1, 0.2, 20.0), _level("c=2", 2, 0.3, 30.0)]))
    assert page.count("<svg") == 3
    assert "<script" not in page and "http://h/v1" in page and "src=" not in page
    assert "&lt;b&gt;" in page and "<b>" not in page
    assert "llamaherd bench --model m &lt;x&gt;" in page


def test_the_summary_table_has_a_row_per_level():
    text = _text(summary_table(_result([_level("c=1", 1, 0.2, 20.0)])))
    assert "c=1" in text and "200/400" in text and "served by: c=1: a 75%, <b> 25%" in text
