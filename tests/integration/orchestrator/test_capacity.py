"""`llamaherd capacity` and admission at measured capacity, on the shared real cluster of
conftest.py (the real Gemma on worker-a and worker-b): a pinned sweep of one node saved
with the coordinator, and the gateway refusing at once (429 + Retry-After) when every
replica holds its measured streams while the requests it admitted are served."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.cluster import wait_for
from support.models import GEMMA

from orchestrator.cluster.capacity import CAPACITY_FILE, CapacityRecord, save_records

N_CTX = 1024  # the catalog's, conftest.py
SLO = "ttft_p99=10s,itl_p99=2s"  # generous: two cores shared by every test and agent


def _capacities(base_url: str) -> list[dict[str, object]]:
    reply = httpx.get(f"{base_url}/cluster", timeout=10)
    reply.raise_for_status()
    capacities: list[dict[str, object]] = reply.json()["capacities"]
    return capacities


@pytest.fixture
def capacity_file(cluster) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """The coordinator's capacity file (its state dir, as tests/support/cluster.py sets it);
    removed afterwards, and the gateway seen without capacities, so other tests of the shared
    cluster run uncapped."""
    path = cluster.coordinator.log_path.parent / "coordinator-state" / CAPACITY_FILE
    yield path
    path.unlink(missing_ok=True)
    base = cluster.coordinator.base_url
    wait_for(lambda: _capacities(base) == [], 15, "the gateway to drop the capacities")


def test_a_pinned_sweep_saves_a_record_the_gateway_receives(cluster, capacity_file):
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "capacity", "--url",
         cluster.coordinator.base_url, "--model", GEMMA, "--node", "worker-a",
         "--prompt-tokens", "16", "--output-tokens", "8", "--max-concurrency", "2",
         "--requests-per-stream", "1", "--slo", SLO, "--n-ctx", str(N_CTX), "--save",
         "--state-dir", str(capacity_file.parent), "--json"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for level in result["levels"]:  # every request was pinned to worker-a
        assert level["figures"]["node_share"] == {"worker-a": 1.0}, level
    record = result["record"]
    assert (record["node"], record["model"], record["n_ctx"]) == ("worker-a", GEMMA, N_CTX)
    assert 1 <= record["max_streams"] <= 2 and record["slo"] == SLO
    assert record["prefill_tps"] > 0 and record["decode_tps_stream"] > 0
    assert result["saved_to"] == str(capacity_file)
    received = wait_for(
        lambda: _capacities(cluster.coordinator.base_url), 15, "the record in /v1/cluster"
    )
    assert received[0]["node"] == "worker-a" and received[0]["max_streams"] == record["max_streams"]


Reply = tuple[int, dict[str, str], float, str]


async def _stream(client: httpx.AsyncClient, url: str) -> Reply:
    """One streamed completion: its status, headers, time to the first token and text."""
    body = {"model": GEMMA, "prompt": "Once upon a time", "max_tokens": 24, "stream": True,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    sent = time.monotonic()
    ttft = -1.0
    lines = []
    async with client.stream("POST", f"{url}/completions", json=body) as reply:
        async for line in reply.aiter_lines():
            if ttft < 0 and line.startswith("data:") and '"text"' in line:
                ttft = time.monotonic() - sent
            lines.append(line)
        return reply.status_code, dict(reply.headers), ttft, "\n".join(lines)


def test_at_measured_capacity_the_gateway_refuses_at_once_with_retry_after(cluster, capacity_file):
    records = [
        CapacityRecord(
            node=node,
            model=GEMMA,
            n_ctx=N_CTX,
            slo=SLO,
            max_streams=1,
            prefill_tps=500.0,
            decode_tps_stream=20.0,
            decode_tps_total=20.0,
            e2e_s=3.0,
            prompt_tokens=16,
            output_tokens=24,
            measured_at=time.time(),
        )
        for node in ("worker-a", "worker-b")
    ]
    save_records(capacity_file, records)
    base = cluster.coordinator.base_url
    wait_for(lambda: len(_capacities(base)) == 2, 15, "the records in /v1/cluster")

    async def three_at_once() -> list[Reply]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(_stream(client, base) for _ in range(3)))

    results = asyncio.run(three_at_once())
    refused = [r for r in results if r[0] == 429]
    served = [r for r in results if r[0] == 200]
    assert len(refused) == 1 and len(served) == 2, [r[0] for r in results]
    _, headers, _, text = refused[0]
    assert int(headers["retry-after"]) >= 1
    error = json.loads(text)["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "resource_exhausted"
    assert f"model '{GEMMA}' is at its measured capacity" in error["message"]
    assert "worker-a holds 1 of 1 streams" in error["message"]
    for _, _, ttft, text in served:  # within the SLO's TTFT, and to the end
        assert 0 < ttft < 10 and text.rstrip().endswith("data: [DONE]")
    assert {h["x-llamaherd-node"] for _, h, _, _ in served} == {"worker-a", "worker-b"}
