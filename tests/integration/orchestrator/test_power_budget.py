"""The cluster power budget end to end: a real coordinator with `--power-budget-w 20` and a
real worker whose telemetry is the recorded Orin Nano (its jtop fixture through the real
Jetson source, tests/support/recorded_worker.py), its draw driven by the test. Over the
budget, placement starts nothing and the gateway answers 429 naming the budget; as the draw
falls both let go; `llamaherd status` shows the draw against the budget."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.cluster import Coordinator, ready_replicas, start_coordinator, start_node, wait_for
from support.models import GEMMA
from support.recorded_worker import worker_environ
from support.worker_process import LLAMAHERD, WorkerProcess

CATALOG = [{"alias": GEMMA, "path": "builtin:gemma-3-270m", "replicas": 1, "n_ctx": 512,
            "n_threads": 1}]  # fmt: skip
BODY = {"model": GEMMA, "prompt": "Once upon a time", "max_tokens": 2, "temperature": 0}


@pytest.fixture
def budgeted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Coordinator, Path]]:
    watts = tmp_path / "nano.watts"
    watts.write_text("22")  # over the 20 W budget from the start
    coordinator = start_coordinator(tmp_path, CATALOG, "--power-budget-w", "20")
    worker: WorkerProcess | None = None
    try:
        with monkeypatch.context() as patch:  # the worker's environment only
            for name, value in worker_environ(tmp_path / "site", "orin-nano-8gb", watts).items():
                patch.setenv(name, value)
            worker = start_node(tmp_path, coordinator, "nano")
        yield coordinator, watts
    finally:
        if worker is not None:
            worker.stop()
        code = coordinator.stop()
    assert code == 0, coordinator.log_tail()


def _problem(coordinator: Coordinator) -> str | None:
    problems = {p.alias: p.reason for p in coordinator.status().placement_problems}
    return problems.get(GEMMA)


def _admitting(coordinator: Coordinator) -> bool | None:
    status = coordinator.status()
    return status.power.admitting if status.HasField("power") else None


def test_over_the_budget_nothing_is_placed_or_admitted_until_the_draw_falls(
    budgeted: tuple[Coordinator, Path],
) -> None:
    coordinator, watts = budgeted
    problem = wait_for(
        lambda: (p := _problem(coordinator)) and "power budget" in p and p, 60, "the refusal"
    )
    assert "nano: power budget 20 W: the cluster draws 22 W" in problem
    refused = httpx.post(f"{coordinator.base_url}/completions", json=BODY, timeout=30)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "5"
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["message"].startswith(
        "the cluster is over its power budget of 20 W: it draws 22 W"
    )

    # The Nano idles at 5 W: 5 W plus the 10 W its 15W power mode leaves fit 20 W.
    watts.write_text("5")
    wait_for(lambda: GEMMA in ready_replicas(coordinator), 90, "the model to be placed")
    wait_for(lambda: _admitting(coordinator), 30, "admission to resume")
    served = httpx.post(f"{coordinator.base_url}/completions", json=BODY, timeout=60)
    assert served.status_code == 200, served.text

    # Loaded past the budget again: new requests are refused, status says why.
    watts.write_text("23")
    wait_for(lambda: _admitting(coordinator) is False, 30, "admission to stop")
    assert httpx.post(f"{coordinator.base_url}/completions", json=BODY, timeout=30) \
        .status_code == 429  # fmt: skip
    text = subprocess.run(
        [LLAMAHERD, "status", "--gateway", coordinator.gateway],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "power: 23 W of a 20 W budget, over: new requests refused until below 19 W" in text
