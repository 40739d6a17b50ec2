"""What node telemetry costs a worker: CPU time of sampling at 1 Hz, as a share of one core.

Two measurements in one run:

1. End to end, side by side: two real `llamaherd worker` processes heartbeat to a real
   worker registry (the coordinator's Coordinator service, run here without Ray), one
   sampling every second (the default), the other every 60 s (the slowest setting: in
   practice off). Both idle, measured over the same windows, so the machine's noise hits
   both; the difference of their CPU time (utime + stime from /proc) per second of wall
   time is what 1 Hz telemetry costs, heartbeat payload included. Median over windows.
2. In process, per sample: CPU time (thread_time) of one sample (all sources this machine
   has), its protobuf conversion for the heartbeat and one /metrics rendering.

    .venv/bin/python tests/bench/bench_telemetry_overhead.py [--windows 8] [--window-s 15]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from support.auth import use_run_token  # noqa: E402
from support.worker_process import start_worker  # noqa: E402

from common.prometheus import MetricSet, add_node_sample  # noqa: E402
from common.wire.telemetry import sample_to_proto  # noqa: E402
from orchestrator.cluster.registry import WorkerRegistry  # noqa: E402
from orchestrator.gateway.metrics import render  # noqa: E402
from worker.telemetry.sampler import start_sampler  # noqa: E402


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run_registry(ready: threading.Event, port_box: list[int], stop: threading.Event) -> None:
    async def main() -> None:
        registry = WorkerRegistry(
            heartbeat_interval_s=1.0, down_after_s=5, forget_after_s=60, token=use_run_token()
        )
        port_box.append(await registry.start("127.0.0.1", 0))
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.2)
        await registry.stop()

    asyncio.run(main())


def end_to_end(windows: int, window_s: float) -> list[float]:
    ready, stop, port_box = threading.Event(), threading.Event(), []
    thread = threading.Thread(target=run_registry, args=(ready, port_box, stop), daemon=True)
    thread.start()
    ready.wait(30)
    registry = f"127.0.0.1:{port_box[0]}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-telemetry-"))
    common = ("--coordinator", registry, "--heartbeat-interval-s", "1", "--no-metrics")
    on = start_worker(workdir, None, *common, "--telemetry-interval-s", "1", name="on")
    off = start_worker(workdir, None, *common, "--telemetry-interval-s", "60", name="off")
    shares = []
    try:
        time.sleep(3)  # past start-up work
        print(f"{'window':>6} {'1 Hz %core':>11} {'1/60 Hz %core':>14} {'difference':>11}")
        for n in range(windows):
            start = time.monotonic()
            a, b = cpu_seconds(on.process.pid), cpu_seconds(off.process.pid)
            time.sleep(window_s)
            elapsed = time.monotonic() - start
            on_share = (cpu_seconds(on.process.pid) - a) / elapsed * 100
            off_share = (cpu_seconds(off.process.pid) - b) / elapsed * 100
            shares.append(on_share - off_share)
            print(f"{n:>6} {on_share:>10.3f}% {off_share:>13.3f}% {on_share - off_share:>10.3f}%")
    finally:
        on.stop()
        off.stop()
        stop.set()
        thread.join(10)
    return shares


def per_sample(samples: int) -> dict[str, float]:
    sampler = start_sampler([Path.home()], interval_s=3600)  # sampled by hand below
    try:
        costs: dict[str, list[float]] = {"sample": [], "to_proto": [], "metrics": []}
        for _ in range(samples):
            t0 = time.thread_time()
            sample = sampler.sample_now()
            t1 = time.thread_time()
            sample_to_proto(sample).SerializeToString()
            t2 = time.thread_time()
            metrics = MetricSet()
            add_node_sample(metrics, sample)
            render(metrics.families())
            t3 = time.thread_time()
            costs["sample"].append(t1 - t0)
            costs["to_proto"].append(t2 - t1)
            costs["metrics"].append(t3 - t2)
            time.sleep(0.01)
        print(f"sources: {', '.join(sampler.selection.names)}")
        return {k: statistics.mean(v) * 1000 for k, v in costs.items()}
    finally:
        sampler.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=8, help="measurement windows")
    parser.add_argument("--window-s", type=float, default=15.0, help="seconds per window")
    parser.add_argument("--samples", type=int, default=300, help="in-process samples timed")
    args = parser.parse_args()

    print("in process, mean CPU ms per sample:")
    cost = per_sample(args.samples)
    for name, ms in cost.items():
        print(f"  {name:9} {ms:7.3f} ms")
    heartbeat_ms = cost["sample"] + cost["to_proto"]
    print(f"  => at 1 Hz: {heartbeat_ms / 10:.3f}% of one core (sample + heartbeat payload)\n")

    print(f"end to end, {args.windows} windows of {args.window_s:.0f} s, idle workers:")
    shares = end_to_end(args.windows, args.window_s)
    print(f"\nmedian cost of 1 Hz telemetry: {statistics.median(shares):.3f}% of one core "
          f"(min {min(shares):.3f}%, max {max(shares):.3f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
