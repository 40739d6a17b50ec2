"""The model store's transfers: a worker's store fetch vs. curl over the same link, and the
time from a catalog change to the model READY on a node that lacked its file (issue 16).

A real `llamaherd coordinator` runs in the root namespace with its store on the bridge
(tests.support.netns; needs root); the embedded Gemma 3 270M Q4_K_M GGUF (253 MB) is added
with `llamaherd models add`.

1. Transfer rate. In one namespaced host, interleaved rounds (the order alternates) of
   - fetch: the worker's own code path for a store file, worker.models.fetch.Fetcher.fetch
     (join token, writes `<dir>/store/<sha256>.gguf.part` while hashing, fsync, size and
     sha256 check, rename, index), in a fresh process started in the namespace; timed
     around the call;
   - curl: `curl -o FILE` of the same URL with the same token (its own time_total);
   - curl + sync: the same, then `sync FILE` (an fsync: the fetch makes the file durable
     before it renames it into place, curl does not);
   - curl + sha256sum: curl, then hashing the file (what the fetch's check costs a client
     that does not hash as it goes).
   Each writes into the same directory and the file is deleted after each round. Reported:
   medians of MB/s and the ratio fetch / curl (goal >= 0.9).
2. Catalog change to READY. A worker with an empty model dir on another host; the catalog
   names the store model with replicas 0. Each round changes the catalog to replicas 1 the
   way an operator does (the coordinator's config edited, then the coordinator stopped and
   started again: no catalog reload exists), and times: coordinator start -> its endpoints
   printed, -> the model first DOWNLOADING on the node, -> READY. Between rounds the worker
   is restarted with an empty model dir and the catalog set back to replicas 0. A third
   figure needs no restart: the catalog already names a model the store lacks (a placement
   problem), and `llamaherd models add` is timed to READY.

    .venv/bin/python tests/bench/bench_store_fetch.py [--rounds 7] [--ready-rounds 3] \\
        [--json /tmp/bench_store_fetch.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from support.auth import use_run_token  # noqa: E402
from support.cluster import Coordinator, start_coordinator, wait_for  # noqa: E402
from support.netns import Host, Network, network  # noqa: E402
from support.worker_process import LLAMAHERD, WorkerProcess, free_port, start_worker  # noqa: E402

from common.cluster_secrets import TOKEN_ENV  # noqa: E402
from worker.models.builtin import resolve  # noqa: E402

NAME = "gemma-3-270m-q4"
ALIAS = "gemma-new"
MODEL = {"n_ctx": 512, "n_parallel": 1, "n_threads": 1, "flash_attn": "off"}
MB = 1e6


# ---- one fetch, in a process of its own inside the namespace ------------------------------
def fetch_once(url: str, sha256: str, size: int, folder: Path) -> float:
    """Seconds the worker's fetch of the file into `folder`/store took."""
    from common.model_settings import ModelSource
    from worker.models.fetch import Fetcher, StoreDir

    fetcher = Fetcher(StoreDir(folder / "store"), os.environ[TOKEN_ENV], max_downloads=1)
    source = ModelSource(name=NAME, sha256=sha256, size_bytes=size, urls=(url,))
    started = time.perf_counter()
    path = asyncio.run(fetcher.fetch(source, lambda progress: None, lambda: set()))
    elapsed = time.perf_counter() - started
    assert path.stat().st_size == size
    return elapsed


def run_fetch(host: Host, url: str, sha256: str, size: int, folder: Path) -> float:
    command = [
        *host.exec_prefix(), sys.executable, __file__, "--fetch-once", url, sha256,
        str(size), str(folder),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fetch failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def run_curl(host: Host, url: str, header_file: Path, out: Path) -> float:
    command = [
        *host.exec_prefix(), "curl", "-sS", "--fail", "-H", f"@{header_file}", "-o", str(out),
        "-w", "%{time_total} %{size_download}", url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    seconds, _size = done.stdout.split()
    return float(seconds)


def run_curl_synced(host: Host, url: str, header_file: Path, out: Path) -> float:
    """curl, then the file made durable (`sync FILE`: its fsync), as the fetch does before
    it renames the verified part into place."""
    started = time.perf_counter()
    run_curl(host, url, header_file, out)
    subprocess.run(["sync", str(out)], check=True)
    return time.perf_counter() - started


def run_curl_hashed(host: Host, url: str, header_file: Path, out: Path, sha256: str) -> float:
    started = time.perf_counter()
    run_curl(host, url, header_file, out)
    digest = subprocess.run(["sha256sum", str(out)], capture_output=True, text=True, check=True)
    assert digest.stdout.split()[0] == sha256
    return time.perf_counter() - started


def transfer_rounds(
    net: Network, store_url: str, sha256: str, size: int, workdir: Path, rounds: int
) -> dict[str, list[float]]:
    host = net.hosts[0]
    folder = workdir / "fetched"
    header_file = workdir / "auth-header"
    header_file.write_text(f"Authorization: Bearer {os.environ[TOKEN_ENV]}\n")
    header_file.chmod(0o600)
    url = f"{store_url}/v1/store/files/{sha256}"
    out = folder / "curl.gguf"

    def clean() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    variants: dict[str, Callable[[], float]] = {
        "fetch": lambda: run_fetch(host, url, sha256, size, folder),
        "curl": lambda: run_curl(host, url, header_file, out),
        "curl+sync": lambda: run_curl_synced(host, url, header_file, out),
        "curl+sha256sum": lambda: run_curl_hashed(host, url, header_file, out, sha256),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            clean()
            seconds[name].append(variants[name]())
            print(f"  round {r + 1} {name}: {size / seconds[name][-1] / MB:.0f} MB/s", flush=True)
    clean()
    return seconds


# ---- catalog change to READY -----------------------------------------------------------
def catalog(replicas: int) -> list[dict[str, Any]]:
    return [{"alias": ALIAS, "model": NAME, "replicas": replicas, **MODEL}]


def model_state(coordinator: Coordinator, node_id: str) -> str | None:
    reply = httpx.get(f"http://127.0.0.1:{coordinator.http_port}/v1/cluster", timeout=10)
    for node in reply.json()["nodes"]:
        if node["up"] and node["status"]["node_id"] == node_id:
            for model in node["status"]["models"]:
                if model["alias"] == ALIAS:
                    return str(model["state"])
    return None


def watch_until_ready(
    coordinator: Coordinator, node_id: str, started: float, timeout: float = 300
) -> dict[str, float]:
    """Seconds from `started` to the model's first DOWNLOADING and to READY on the node."""
    marks: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = model_state(coordinator, node_id)
        now = time.perf_counter() - started
        if state == "downloading":
            marks.setdefault("downloading_s", now)
        if state == "ready":
            marks["ready_s"] = now
            return marks
        if state == "failed":
            raise RuntimeError(f"{ALIAS} failed on {node_id}:\n{coordinator.log_tail()}")
        time.sleep(0.05)
    raise TimeoutError(f"{ALIAS} not ready on {node_id} after {timeout} s")


def start_target(workdir: Path, net: Network, coordinator: Coordinator, r: int) -> WorkerProcess:
    """A worker with an empty model dir on the second host."""
    models = workdir / f"target-models-{r}"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir(parents=True)
    config = {"model_dirs": [str(models)], "reference_speed": False, "log_level": "WARNING"}
    worker = start_worker(
        workdir, config,
        "--coordinator", f"{net.gateway}:{coordinator.registry_port}",
        "--node-id", "target", "--heartbeat-interval-s", "0.5",
        name=f"target-{r}", host=net.hosts[1],
    )  # fmt: skip
    wait_for(lambda: _node_up(coordinator, "target"), 60, "the target node to register")
    return worker


def _node_up(coordinator: Coordinator, node_id: str) -> bool:
    reply = httpx.get(f"http://127.0.0.1:{coordinator.http_port}/v1/cluster", timeout=10)
    return any(n["up"] and n["status"]["node_id"] == node_id for n in reply.json()["nodes"])


def coordinator_args(net: Network, store_port: int, store: Path) -> list[str]:
    return ["--host", net.gateway, "--store-port", str(store_port), "--store-dir", str(store)]


def restart(
    coordinator: Coordinator, workdir: Path, replicas: int, args_: list[str], name: str
) -> Coordinator:
    """What an operator does after editing the catalog: stop the coordinator, start it."""
    coordinator.stop()
    return start_coordinator(
        workdir, catalog(replicas), *args_, ports=coordinator.ports(), name=name
    )


def ready_rounds(
    net: Network, coordinator: Coordinator, workdir: Path, args_: list[str], rounds: int
) -> tuple[Coordinator, list[dict[str, float]]]:
    results = []
    for r in range(rounds):
        if r:
            coordinator = restart(coordinator, workdir, 0, args_, f"back-{r}")
        worker = start_target(workdir, net, coordinator, r)
        try:
            started = time.perf_counter()
            coordinator = restart(coordinator, workdir, 1, args_, f"change-{r}")
            up = time.perf_counter() - started
            marks = {"coordinator_up_s": up, **watch_until_ready(coordinator, "target", started)}
            results.append(marks)
            print(f"  round {r + 1}: {json.dumps({k: round(v, 2) for k, v in marks.items()})}")
        finally:
            worker.stop()
    return coordinator, results


def add_to_ready(
    net: Network, coordinator: Coordinator, workdir: Path, file: Path, args_: list[str]
) -> tuple[Coordinator, dict[str, float]]:
    """The catalog names a model its (new, empty) store lacks; `llamaherd models add` to
    READY, with no restart."""
    coordinator = restart(coordinator, workdir, 1, args_, "late")
    worker = start_target(workdir, net, coordinator, 99)
    try:
        started = time.perf_counter()
        add(Path(args_[-1]), file)
        added = time.perf_counter() - started
        marks = {"models_add_s": added, **watch_until_ready(coordinator, "target", started)}
        print(f"  models add: {json.dumps({k: round(v, 2) for k, v in marks.items()})}")
        return coordinator, marks
    finally:
        worker.stop()


def add(store: Path, file: Path) -> None:
    subprocess.run(
        [LLAMAHERD, "models", "add", str(file), "--name", NAME, "--store-dir", str(store)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


# ---- report ------------------------------------------------------------------------------
def summarize(seconds: dict[str, list[float]], size: int) -> dict[str, Any]:
    rates = {name: [size / s / MB for s in values] for name, values in seconds.items()}
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "file_bytes": size,
        "mb_per_s": {name: [round(v, 1) for v in values] for name, values in rates.items()},
        "median_mb_per_s": {name: round(v, 1) for name, v in medians.items()},
        "ratio_fetch_to_curl": round(medians["fetch"] / medians["curl"], 3),
        "ratio_fetch_to_curl_sync": round(medians["fetch"] / medians["curl+sync"], 3),
        "ratio_fetch_to_curl_sha256sum": round(medians["fetch"] / medians["curl+sha256sum"], 3),
    }


def median_marks(results: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in results[0] if all(k in r for r in results)]  # DOWNLOADING may be missed
    return {k: round(statistics.median(r[k] for r in results), 2) for k in keys}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--fetch-once":
        url, sha256, size, folder = sys.argv[2:6]
        print(fetch_once(url, sha256, int(size), Path(folder)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="transfer rounds per variant")
    parser.add_argument("--ready-rounds", type=int, default=3, help="catalog-change rounds")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    use_run_token()
    file = resolve("builtin:gemma-3-270m")
    size = file.stat().st_size
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        store = workdir / "store"
        add(store, file)
        sha256 = json.loads(
            subprocess.run(
                [LLAMAHERD, "models", "show", NAME, "--json", "--store-dir", str(store)],
                check=True, capture_output=True, text=True,
            ).stdout
        )["sha256"]  # fmt: skip
        net = stack.enter_context(network(2))
        store_port = free_port()
        args_ = coordinator_args(net, store_port, store)
        coordinator = start_coordinator(workdir, catalog(0), *args_)
        try:
            store_url = f"http://{net.gateway}:{store_port}"
            print(f"transfer: {args.rounds} rounds, {size} bytes, {store_url}", flush=True)
            seconds = transfer_rounds(net, store_url, sha256, size, workdir, args.rounds)
            transfer = summarize(seconds, size)
            print(json.dumps(transfer, indent=1))
            print(f"catalog change to READY: {args.ready_rounds} rounds", flush=True)
            coordinator, ready = ready_rounds(net, coordinator, workdir, args_, args.ready_rounds)
            late_args = coordinator_args(net, store_port, workdir / "store-late")
            coordinator, late = add_to_ready(net, coordinator, workdir, file, late_args)
        finally:
            coordinator.stop()
    report = {
        "command": " ".join(["tests/bench/bench_store_fetch.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "transfer": transfer,
        "catalog_change_to_ready": {"rounds": ready, "median": median_marks(ready)},
        "models_add_to_ready": late,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
