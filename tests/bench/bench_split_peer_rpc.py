"""Where llama-server's RPC split spends its prompt phase: ggml RPC commands per request.

`llama-server --rpc` with the split of tests/bench/bench_split.py (the embedded Gemma 3 270M
Q4_K_M, -ngl --remote-layers on a `ggml-rpc-server`, --slots slots of 1,024 tokens, one
thread, flash attention off), once per configuration: its defaults, then each --peer-args
(extra llama-server arguments). The head reaches the rpc-server through a delay proxy with
no delay (tests.support.delay_proxy) whose observer parses the head's side of ggml's RPC
protocol (tests/bench/bench_split_rtt.py's RpcTally), so every command the head sends is
counted. For each stream count, waves of fresh ~30-token prompts decode --max-tokens tokens
greedily; reported per request: each RPC command's count and the median time to first
token. Everything runs on loopback (the counts do not depend on the link; the times are a
rough guide, and the proxy adds its own per message).

GET_TENSOR is the one command that waits for the helper (a synchronous round trip); a split
decode step sends one. What else a configuration sends per request is work beyond the
model's own.

    .venv/bin/python tests/bench/bench_split_peer_rpc.py \\
        --llama-server /tmp/peer/build/bin/llama-server \\
        --rpc-server /tmp/peer/build/bin/ggml-rpc-server \\
        --peer-args "--ctx-checkpoints 0" --peer-args "--cache-ram 0" \\
        --peer-args "--ctx-checkpoints 0 --cache-ram 0" --peer-args "-fa on"
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

from bench_batching import _wait_http  # noqa: E402
from bench_split import N_CTX, _llama_server_run, _stop, parse_streams, prompt_for, wave  # noqa: E402
from bench_split_rtt import RpcTally  # noqa: E402
from support.delay_proxy import DelayProxy  # noqa: E402

from worker.models.builtin import resolve  # noqa: E402

HOST = "127.0.0.1"
RPC_PORT, PROXY_PORT, HTTP_PORT = 50300, 50301, 50310
SHOWN = ("GET_TENSOR", "SET_TENSOR", "GRAPH_COMPUTE", "GRAPH_RECOMPUTE")


def measure(
    args: argparse.Namespace, extra: str, tally: RpcTally
) -> dict[int, tuple[Counter[str], int, float]]:
    """Per stream count: the commands sent, the requests made, the median TTFT in ms."""
    model = resolve("builtin:gemma-3-270m")
    threads = str(args.threads)
    log = args.workdir / f"llama-server-{len(list(args.workdir.glob('llama-server-*')))}.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(args.llama_server), "-m", str(model), "-c", str(N_CTX * args.slots),
             "-np", str(args.slots), "-t", threads, "-tb", threads, "-fa", "off",
             "--no-webui", "--host", HOST, "--port", str(HTTP_PORT),
             "--rpc", f"{HOST}:{PROXY_PORT}", "-ngl", str(args.remote_layers), "-ts", "1",
             *shlex.split(extra)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    results = {}
    try:
        _wait_http(f"http://{HOST}:{HTTP_PORT}/health", server, log, 300)
        # No keep-alive: llama-server may close an idle pooled connection between waves.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=f"http://{HOST}:{HTTP_PORT}", timeout=600,
                          limits=limits) as http:  # fmt: skip
            run = _llama_server_run(http)
            wave(run, [prompt_for(-1 - i) for i in range(args.slots)], 8)  # warm-up
            for n in args.streams:
                before = tally.counts(None, set())
                ttfts: list[float] = []
                for r in range(args.waves):
                    done = wave(run, [prompt_for(5000 + 100 * n + 10 * r + i) for i in range(n)],
                                args.max_tokens)  # fmt: skip
                    ttfts += [s.ttft_ms for s in done.streams]
                sent = tally.counts(None, set()) - before
                results[n] = (sent, n * args.waves, statistics.median(ttfts))
                print(f"{extra or 'defaults'}, {n} stream(s): {dict(sent)}", file=sys.stderr,
                      flush=True)  # fmt: skip
    finally:
        _stop(server)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", type=Path, required=True)
    parser.add_argument("--rpc-server", type=Path, required=True)
    parser.add_argument("--remote-layers", type=int, default=9, help="-ngl")
    parser.add_argument("--threads", type=int, default=1, help="per process")
    parser.add_argument("--slots", type=int, default=8, help="llama-server's -np")
    parser.add_argument("--streams", type=parse_streams, default=[1, 4, 8])
    parser.add_argument("--waves", type=int, default=3, help="per stream count")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--peer-args", action="append", default=[], metavar="ARGS",
                        help="one more configuration: extra llama-server arguments")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamaherd-bench-peer-rpc"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if max(args.streams) > args.slots:
        parser.error("--streams counts must not exceed --slots")

    configs = ["", *args.peer_args]
    tally = RpcTally()
    with (args.workdir / "rpc-server.log").open("wb") as rpc_log:
        rpc = subprocess.Popen(
            [str(args.rpc_server), "-H", HOST, "-p", str(RPC_PORT), "-t", str(args.threads)],
            stdout=rpc_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        time.sleep(1.0)
        with DelayProxy((HOST, PROXY_PORT), (HOST, RPC_PORT), observe=tally):
            measured = {extra: measure(args, extra, tally) for extra in configs}
    finally:
        _stop(rpc)

    print(f"\nllama-server --rpc, -ngl {args.remote_layers} of Gemma 3 270M Q4_K_M, "
          f"{args.slots} slots, -fa off, {args.threads} thread(s), {args.max_tokens} tokens "
          f"per request, {args.waves} waves per stream count; per request:\n")  # fmt: skip
    print(f"| llama-server arguments | streams | {' | '.join(SHOWN)} | TTFT ms (median) |")
    print("|---|---:|" + "---:|" * (len(SHOWN) + 1))
    for extra, results in measured.items():
        for n, (sent, requests, ttft) in results.items():
            cells = " | ".join(f"{sent[name] / requests:.0f}" for name in SHOWN)
            print(f"| {extra or '(defaults)'} | {n} | {cells} | {ttft:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
