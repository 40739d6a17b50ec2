"""`llamaherd bench` against the real gateway serving the real Gemma on two workers (the
shared cluster of conftest.py): a tiny concurrency sweep gives sane figures, an HTML report
and a comparison."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.models import GEMMA

OUTPUT_TOKENS = 16


def _llamaherd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_tiny_sweep_through_the_gateway(cluster, tmp_path):
    out, page = tmp_path / "run.json", tmp_path / "run.html"
    done = _llamaherd(
        "bench", "--url", cluster.coordinator.base_url, "--model", GEMMA,
        "--prompt-tokens", "32", "--output-tokens", str(OUTPUT_TOKENS),
        "--concurrency", "1,2", "--requests", "4", "--warmup", "1",
        "--slo", "ttft_p99=10s,itl_p99=2s", "--out", str(out), "--html", str(page),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "c=2" in done.stdout  # the summary table
    result = json.loads(out.read_text())
    calibration = result["prompt_calibration"]
    assert calibration["reference_prompt_tokens"] == 32, calibration
    for level in result["levels"]:
        assert level["completed"] == level["requests"] == 4, level["errors"]
        assert level["ttft"]["p50"] > 0 and level["itl"]["p50"] > 0 and level["tpot"]["mean"] > 0
        assert level["ttft"]["p99"] < level["e2e"]["p99"]
        assert level["output_tokens"] == {"mean": OUTPUT_TOKENS, "min": OUTPUT_TOKENS,
                                          "max": OUTPUT_TOKENS}  # fmt: skip
        assert 28 <= level["prompt_tokens"]["mean"] <= 36
        assert set(level["node_share"]) <= set(cluster.workers)
        assert sum(level["node_share"].values()) == pytest.approx(1)
        assert level["request_throughput"] > 0 and level["goodput"] == pytest.approx(
            level["request_throughput"]
        )
    assert page.read_text().count("<svg") == 3

    compared = _llamaherd("bench", "compare", str(out), str(out))
    assert compared.returncode == 0, compared.stderr
    assert "TTFT p50 ms" in compared.stdout and "1.00" in compared.stdout


def test_a_model_the_gateway_does_not_serve(cluster):
    done = _llamaherd("bench", "--url", cluster.coordinator.base_url, "--model", "no-such")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"does not serve model 'no-such'; it serves: {GEMMA}" in done.stderr


def test_the_chat_api_with_a_rate(cluster):
    done = _llamaherd(
        "bench", "--url", cluster.coordinator.base_url, "--model", GEMMA, "--api", "chat",
        "--prompt-tokens", "24", "--output-tokens", "8", "--rate", "4", "--requests", "3",
        "--warmup", "0", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["prompt_calibration"]["reference_prompt_tokens"] == 24
    (level,) = result["levels"]
    assert level["label"] == "4 req/s" and level["completed"] == 3, level["errors"]
    assert level["output_tokens"]["min"] == 8 and level["ttft"]["p50"] > 0


def test_multi_turn_chats_with_a_shared_system_prompt(cluster):
    done = _llamaherd(
        "bench", "--url", cluster.coordinator.base_url, "--model", GEMMA, "--api", "chat",
        "--prompt-tokens", "uniform:8-16", "--output-tokens", "4", "--turns", "2",
        "--system-tokens", "24", "--concurrency", "2", "--requests", "4", "--warmup", "0",
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (level,) = result["levels"]
    assert level["completed"] == 4, level["errors"]
    requests = result["requests"]
    assert sorted(r["turn"] for r in requests) == [1, 1, 2, 2]
    first = max(r["in"] for r in requests if r["turn"] == 1)
    second = min(r["in"] for r in requests if r["turn"] == 2)
    # turn 2 carries the system prompt, turn 1's message and its 4-token reply, and more
    assert first > 24 + 8 and second > first, requests
    assert set(level["ttft_p50_by_turn"]) == {"1", "2"}
    assert result["power"] == "no node reports power" and level["energy"] is None
    assert set(level["nodes"]) <= set(cluster.workers)
