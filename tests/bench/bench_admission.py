"""Admission at measured capacity on a large fleet: what `Router._admitted` (the replicas at
their measured capacity, left out before routing) and a whole `Router.choose` cost per
request, with one capacity record or every node measured.

    flock /tmp/bench.lock .venv/bin/python tests/bench/bench_admission.py --nodes 1000 10000

Real Router over a cluster snapshot of N ready one-model nodes (the unit tests' builders);
no worker is called. Prints p50/p99 in microseconds per case, or JSON with --json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support.*
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

from orchestrator.cluster.capacity import CapacityRecord
from orchestrator.gateway.router import Router
from orchestrator.routing.request import RouteRequest
from tests.unit.orchestrator.gateway.relay_support import make_router, worker_node
from tests.unit.orchestrator.gateway.test_router_admission import measured

ROUTE = RouteRequest("m")


def percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e3


def timed(call: Callable[[], object], reps: int, budget_s: float) -> dict[str, float]:
    """p50/p99 microseconds of `reps` calls, fewer if they take longer than `budget_s`."""
    samples: list[int] = []
    spent = 0
    for _ in range(reps):
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
        spent += samples[-1]
        if spent > budget_s * 1e9:
            break
    return {"p50_us": percentile(samples, 0.5), "p99_us": percentile(samples, 0.99),
            "calls": len(samples)}  # fmt: skip


def router_with(nodes: int, records: Callable[[list[str]], list[CapacityRecord]]) -> Router:
    names = [f"n{i:05d}" for i in range(nodes)]
    router = make_router(
        *[worker_node(name, f"10.0.{i // 250}.{i % 250}:1", load=1) for i, name in enumerate(names)]
    )
    snapshot = router.snapshot
    router.update(
        dataclasses.replace(
            snapshot, version=snapshot.version + 1, capacities=tuple(records(names))
        )
    )
    router._admitted(ROUTE, set())  # the first call prepares the per-snapshot tables
    return router


CASES: dict[str, Callable[[list[str]], list[CapacityRecord]]] = {
    "one record": lambda names: [measured(names[0], 1)],
    "every node measured": lambda names: [measured(name, 4) for name in names],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--reps", type=int, default=2000, help="calls per case (default 2000)")
    parser.add_argument("--budget-s", type=float, default=8.0, help="seconds per case at most")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = parser.parse_args()
    results = []
    for n in args.nodes:
        for label, records in CASES.items():
            router = router_with(n, records)
            for what, call in (
                ("_admitted", lambda r=router: r._admitted(ROUTE, set())),
                ("choose", lambda r=router: r.choose(ROUTE, set())),
            ):
                figures = timed(call, args.reps, args.budget_s)
                results.append({"nodes": n, "case": label, "call": what, **figures})
                if not args.json:
                    print(
                        f"{n:6d} nodes  {label:20s} {what:10s} p50 {figures['p50_us']:9.1f} µs"
                        f"  p99 {figures['p99_us']:9.1f} µs  ({figures['calls']} calls)",
                        flush=True,
                    )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
