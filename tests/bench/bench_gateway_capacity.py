"""Gateway capacity: requests per second per core of llamaherd's gateway and of LiteLLM's
proxy, side by side in front of the same stand-in worker, with one and two gateways.

The stand-in (tests/bench/standin_worker.py) answers every request at once with a few
fixed tokens, on gRPC (the Worker service; it registers with the real coordinator by
heartbeat, so the real registry, routing and gateway send it requests) and on OpenAI HTTP
(what LiteLLM speaks to its backends). The same client request, a non-streaming OpenAI
chat completion, goes to each proxy's /v1/chat/completions:

- llamaherd: the real `llamaherd coordinator` on a Ray head (the gateway relays over gRPC:
  it reaches workers only that way);
- litellm: `litellm --config` with one model pointing at the stand-in's HTTP face, one
  process (one uvicorn worker) per gateway;
- direct: the stand-in's HTTP face itself, the baseline for added latency.

Capacity: N clients in a closed loop (each sends its next request when the last is
answered) for a fixed time; requests per second, and requests per CPU-second of the proxy
processes alone (psutil: the gateway actors' processes; LiteLLM's process tree), so the
client and the stand-in, which share the machine, do not count. Added latency: one client,
sequential requests, p50 and p99 minus those of the direct path in the same round. Rounds
alternate the order of the systems; the table shows medians over rounds.

Two gateways (root only): a second Ray node joins from a network namespace (support.netns,
support.ray_nodes) and gets its own gateway; the clients split across both gateways, and
a second LiteLLM process serves half of LiteLLM's clients (two processes behind no
balancer: `--num_workers 2` never came up here). Without root, one gateway is measured.

    flock /tmp/bench.lock .venv/bin/python tests/bench/bench_gateway_capacity.py \\
        --litellm /tmp/litellm-venv/bin/litellm [--rounds 5] [--seconds 8] [--clients 16] \\
        [--latency-requests 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from llamaherd.v1 import inference_pb2 as inf_pb  # noqa: E402
from llamaherd.v1 import inference_pb2_grpc  # noqa: E402
from support.auth import use_run_token  # noqa: E402
from support.cluster import wait_for  # noqa: E402
from support.netns import Host, network  # noqa: E402
from support.ray_nodes import (  # noqa: E402
    end_namespace,
    end_ray,
    join,
    ray_env,
    ray_temp_dir,
    start_coordinator,
    start_head,
    started,
)
from support.worker_process import free_port, wait_health  # noqa: E402

MODEL = "bench"
# Both proxies check a bearer key on every request (LiteLLM refuses to start without one).
API_KEY = "sk-" + secrets.token_hex(24)
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
STANDIN = ROOT / "tests" / "bench" / "standin_worker.py"
# The gateway's Ray actor renames its process ray::[name:]GatewayActor[.method].
GATEWAY_CLASS = "GatewayActor"


@dataclass
class Capacity:
    requests: int
    errors: int
    seconds: float
    cpu_seconds: float  # of the proxy processes only

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def per_core(self) -> float:
        return self.requests / self.cpu_seconds if self.cpu_seconds else 0.0


@dataclass
class Sample:
    """One system in one round."""

    system: str
    gateways: int
    round: int
    capacity: Capacity
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    direct_p50_ms: float = 0.0
    direct_p99_ms: float = 0.0


# ---- load -------------------------------------------------------------------------------


async def closed_loop(urls: list[str], clients: int, seconds: float) -> tuple[int, int, float]:
    """`clients` clients, spread over `urls`, each sending its next request when the last
    is answered, for `seconds`; returns (answered, errors, elapsed)."""
    done = errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=HEADERS) as client:
        deadline = time.perf_counter() + seconds

        async def one(url: str) -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                reply = await client.post(url, json=BODY)
                if reply.status_code == 200:
                    done += 1
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(one(urls[i % len(urls)]) for i in range(clients)))
        return done, errors, time.perf_counter() - start


def latencies(url: str, n: int) -> list[float]:
    """Milliseconds of `n` sequential requests from one client (one connection)."""
    out = []
    with httpx.Client(timeout=30, headers=HEADERS) as client:
        for _ in range(n):
            start = time.perf_counter()
            reply = client.post(url, json=BODY)
            out.append((time.perf_counter() - start) * 1000)
            if reply.status_code != 200:
                raise RuntimeError(f"{url}: {reply.status_code} {reply.text[:200]}")
    return out


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def measure(
    urls: list[str], processes: list[psutil.Process], clients: int, seconds: float
) -> Capacity:
    before = cpu_seconds(processes)
    done, errors, elapsed = asyncio.run(closed_loop(urls, clients, seconds))
    return Capacity(done, errors, elapsed, cpu_seconds(processes) - before)


# ---- the systems ------------------------------------------------------------------------


def gateway_process(address: str, http_port: int) -> psutil.Process:
    """The gateway actor's process listening on address:http_port (this namespace)."""
    for process in _gateway_actors(psutil.process_iter()):
        try:
            listening = process.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for conn in listening:
            if conn.status == psutil.CONN_LISTEN and conn.laddr == (address, http_port):
                return process
    raise LookupError(f"no gateway process listens on {address}:{http_port}")


def namespaced_gateway(host: Host) -> psutil.Process:
    """The one gateway actor's process in `host`'s namespace (psutil reads sockets of the
    root namespace only, so find it by namespace instead)."""
    listed = subprocess.run(
        ["ip", "netns", "pids", host.name], capture_output=True, text=True, check=True
    )
    found = list(_gateway_actors(psutil.Process(int(pid)) for pid in listed.stdout.split()))
    if len(found) != 1:
        raise LookupError(f"{len(found)} gateway processes in namespace {host.name}, not 1")
    return found[0]


def _gateway_actors(processes: Iterable[psutil.Process]) -> Iterator[psutil.Process]:
    for process in processes:
        try:
            command = process.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if command and command[0].startswith("ray::") and GATEWAY_CLASS in command[0]:
            yield process


def model_ready(gateway: str) -> bool:
    metadata = (("authorization", HEADERS["Authorization"]),)
    with grpc.insecure_channel(gateway) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        status = stub.ClusterStatus(inf_pb.ClusterStatusRequest(), timeout=5, metadata=metadata)
    return any(
        n.up and any(m.alias == MODEL and m.state == 2 for m in n.status.models)
        for n in status.nodes
    )


@contextmanager
def standin(host: str, registry: str, workdir: Path) -> Iterator[str]:
    """The stand-in worker registered with `registry`; yields its OpenAI base URL."""
    grpc_port, http_port = free_port(), free_port()
    log = (workdir / "standin.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, str(STANDIN), "--host", host, "--grpc-port", str(grpc_port),
         "--http-port", str(http_port), "--coordinator", registry, "--model", MODEL,
         "--key-dir", str(workdir / "standin-key")],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://{host}:{http_port}/v1"
        wait_for(lambda: _answers(f"{url}/models"), 30, "the stand-in's HTTP face")
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def litellm(binary: str, backend: str, n: int, workdir: Path) -> Iterator[tuple[str, Any]]:
    """LiteLLM's proxy on loopback with one model at `backend`; yields its base URL and
    its process tree. Its model cost map is read from the package (no fetch from the
    internet), and its telemetry is off."""
    port = free_port()
    config = workdir / f"litellm-{n}.yaml"
    model = {"model": f"openai/{MODEL}", "api_base": backend, "api_key": "standin"}
    settings = {
        "model_list": [{"model_name": MODEL, "litellm_params": model}],
        "litellm_settings": {"telemetry": False, "drop_params": True},
    }
    config.write_text(yaml.safe_dump(settings))
    env = {
        **os.environ, "LITELLM_MASTER_KEY": API_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
    }  # fmt: skip
    log = (workdir / f"litellm-{n}.log").open("ab")
    process = subprocess.Popen(
        [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
         "--num_workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_for(
            lambda: process.poll() is None and _answers(f"http://127.0.0.1:{port}/health/liveliness"),
            180, "LiteLLM's proxy",
        )  # fmt: skip
        root = psutil.Process(process.pid)
        yield url, root
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
        process.kill()
        process.wait(10)
        log.close()


def tree(root: psutil.Process) -> list[psutil.Process]:
    return [root, *root.children(recursive=True)]


# ---- the run ------------------------------------------------------------------------------


def run_rounds(
    args: argparse.Namespace, gateways: int, systems: dict[str, tuple[list[str], list[Any]]],
    direct: str, samples: list[Sample],
) -> None:  # fmt: skip
    """Interleaved rounds of every system; latency (one gateway only) against direct."""
    names = list(systems)
    for urls, _ in systems.values():  # warm-up: connections, caches
        asyncio.run(closed_loop(urls, args.clients, args.warmup))
        for url in urls:
            latencies(f"{url}/chat/completions", 50)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            urls, processes = systems[name]
            chat = [f"{u}/chat/completions" for u in urls]
            capacity = measure(chat, processes, args.clients, args.seconds)
            sample = Sample(name, gateways, r, capacity)
            if gateways == 1 and args.latency_requests:
                direct_ms = latencies(f"{direct}/chat/completions", args.latency_requests)
                proxy_ms = latencies(chat[0], args.latency_requests)
                sample.p50_ms, sample.p99_ms = percentile(proxy_ms, 50), percentile(proxy_ms, 99)
                sample.direct_p50_ms = percentile(direct_ms, 50)
                sample.direct_p99_ms = percentile(direct_ms, 99)
            samples.append(sample)
            print(
                f"  {gateways} gateway(s) round {r + 1} {name}: {capacity.rps:.0f} req/s, "
                f"{capacity.per_core:.0f} req/CPU-s, {capacity.errors} errors"
                + (f", p50 {sample.p50_ms:.2f} ms (direct {sample.direct_p50_ms:.2f})"
                   if sample.p50_ms else ""),
                flush=True,
            )  # fmt: skip


def table(samples: list[Sample]) -> str:
    lines = [
        "| gateways | system | req/s | req/s per core | errors | added p50 | added p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for gateways in sorted({s.gateways for s in samples}):
        for system in dict.fromkeys(s.system for s in samples):
            rows = [s for s in samples if s.gateways == gateways and s.system == system]
            if not rows:
                continue
            rps = statistics.median(s.capacity.rps for s in rows)
            per_core = statistics.median(s.capacity.per_core for s in rows)
            errors = sum(s.capacity.errors for s in rows)
            added = ["", ""]
            if rows[0].p50_ms:
                p50 = statistics.median(s.p50_ms - s.direct_p50_ms for s in rows)
                p99 = statistics.median(s.p99_ms - s.direct_p99_ms for s in rows)
                added = [f"{p50:+.2f} ms", f"{p99:+.2f} ms"]
            lines.append(
                f"| {gateways} | {system} | {rps:.0f} | {per_core:.0f} | {errors} | "
                f"{added[0]} | {added[1]} |"
            )
    direct = [s for s in samples if s.direct_p50_ms]
    if direct:
        p50 = statistics.median(s.direct_p50_ms for s in direct)
        p99 = statistics.median(s.direct_p99_ms for s in direct)
        lines.append(f"\ndirect (stand-in HTTP, one client): p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--litellm", required=True, help="the litellm command (its own venv)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before")
    parser.add_argument("--gateways", default="1,2", help="1, 2 or 1,2 (2 needs root)")
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args()
    if shutil.which(args.litellm) is None:
        parser.error(f"--litellm: {args.litellm} is not an executable")
    counts = sorted({int(n) for n in args.gateways.split(",")})
    if 2 in counts and os.geteuid() != 0:
        print("two gateways need a second Ray node in a network namespace (root): "
              "measuring one gateway only", file=sys.stderr)  # fmt: skip
        counts = [n for n in counts if n != 2] or [1]
    use_run_token()
    command = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    print(f"command: {command}\nload: {os.getloadavg()}", flush=True)
    samples: list[Sample] = []
    workdir = Path(tempfile.mkdtemp(prefix="lh-capacity-"))
    with ExitStack() as stack:
        net = stack.enter_context(network(1)) if os.geteuid() == 0 else None
        address = net.gateway if net is not None else "127.0.0.1"
        env = {**ray_env(secrets.token_hex(32)), "LLAMAHERD_COORDINATOR_API_KEY": API_KEY}
        if net is None:  # a one-machine Ray may keep 127.0.0.1 (as llamaherd's own does)
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        head_dir, node_dir = ray_temp_dir("head"), ray_temp_dir("node")
        stack.callback(end_ray, head_dir)
        stack.callback(end_ray, node_dir)
        if net is not None:
            stack.callback(end_namespace, net.hosts[0])
        head = start_head(address, head_dir, env)
        coordinator = start_coordinator(workdir, [], head, address, env, "--log-level", "WARNING")
        stack.callback(coordinator.stop)
        registry = f"{address}:{coordinator.registry_port}"
        direct = stack.enter_context(standin(address, registry, workdir))
        wait_for(lambda: model_ready(coordinator.gateway(address)), 60, "the stand-in routed")
        first = gateway_process(address, coordinator.http_port)
        litellms = [stack.enter_context(litellm(args.litellm, direct, 1, workdir))]
        if 1 in counts:
            url, root = litellms[0]
            systems = {
                "llamaherd": ([coordinator.base_url(address)], [first]),
                "litellm": ([url], tree(root)),
            }
            run_rounds(args, 1, systems, direct, samples)
        if 2 in counts and net is not None:
            second = _second_gateway(net.hosts[0], head, node_dir, env, coordinator)
            litellms.append(stack.enter_context(litellm(args.litellm, direct, 2, workdir)))
            systems = {
                "llamaherd": (
                    [coordinator.base_url(address), coordinator.base_url(net.hosts[0].address)],
                    [first, second],
                ),
                "litellm": ([u for u, _ in litellms], [p for _, r in litellms for p in tree(r)]),
            }
            run_rounds(args, 2, systems, direct, samples)
    print(f"\nload after: {os.getloadavg()}\n")
    print(table(samples))
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in samples], indent=1))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _second_gateway(
    host: Host, head: str, node_dir: str, env: dict[str, str], coordinator: Any
) -> psutil.Process:
    """The second Ray node joins from `host`; returns its gateway's process once it routes."""
    started(join(host, head, node_dir, env))
    wait_health(coordinator.gateway(host.address), coordinator.process, coordinator.log_tail,
                "the second gateway", 60)  # fmt: skip
    wait_for(lambda: model_ready(coordinator.gateway(host.address)), 60, "the second routes")
    return namespaced_gateway(host)


if __name__ == "__main__":
    sys.exit(main())
