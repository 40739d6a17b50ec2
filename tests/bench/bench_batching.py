"""Continuous batching, side by side: the llamaherd worker vs. llama-server vs. llama_cpp.server.

All three serve the embedded Gemma 3 270M Q4_K_M from the same llama.cpp sources (the ones
llama-cpp-python 0.3.36 vendors), with the same CPU flags, threads, batch size and
per-sequence context, flash attention off. For each concurrency C, each round sends a wave
of C simultaneous streaming requests with fresh prompts (no prefix shared beyond BOS) and
greedy decoding of exactly --max-tokens tokens (end-of-generation tokens banned), rotating
which server goes first. Reports per server and C, medians over rounds: tokens/s end to end
(all tokens of the wave / its wall time); aggregate decode tokens/s (tokens after each
stream's first / from the wave's first first token to its last token, as bench_split.py);
steady decode tokens/s (tokens after the wave's last first token / from it to the last
token: the steps where all C streams decode together); and TTFT and inter-token latency
p50/p99 over all requests. The aggregate decode rate charges a server that gives one
stream its first token early (its prompt prefilled alone, the others' in the next steps)
for the other prompts' prefill; the steady rate compares the batched decode step alone.

With --agreement it first measures how many of 8 concurrent greedy 64-token outputs equal
the same prompt run alone, on llamaherd and on llama-server (llama.cpp's batched kernels
round differently from single-sequence ones, so neither reaches 8/8 by construction).

Peers are built or installed in a temporary folder, never committed:

    # llama-server from the sources llama-cpp-python vendors, same flags as `make setup`
    pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all: -d /tmp/peer
    tar xzf /tmp/peer/llama_cpp_python-0.3.36.tar.gz -C /tmp/peer
    cmake -S /tmp/peer/llama_cpp_python-0.3.36/vendor/llama.cpp -B /tmp/peer/build \\
        -DCMAKE_BUILD_TYPE=Release $(deploy/llama-cpp/cmake-args.sh) -DLLAMA_CURL=OFF
    cmake --build /tmp/peer/build --target llama-server -j
    # llama_cpp.server: the wheel `make setup` built, with its server extras
    python3 -m venv /tmp/peer/lcs && /tmp/peer/lcs/bin/pip install \\
        ~/.cache/llamaherd/wheels/llama-cpp-python-0.3.36-*/*.whl \\
        fastapi sse-starlette starlette-context pydantic-settings uvicorn

    .venv/bin/python tests/bench/bench_batching.py \\
        --llama-server /tmp/peer/build/bin/llama-server \\
        --lcs-python /tmp/peer/lcs/bin/python [--rounds 3] [--agreement]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from llamaherd.v1 import generation_pb2 as gen_pb  # noqa: E402
from llamaherd.v1 import worker_pb2_grpc  # noqa: E402
from support.worker_process import free_port, start_worker  # noqa: E402

from worker.models.builtin import resolve  # noqa: E402

# Gemma 3's end-of-generation tokens (<eos>, <end_of_turn>): banned for a fixed length.
EOG_TOKENS = (1, 106)
WORDS = "amber basil cedar delta ember fjord grove harbor iris juniper kestrel lagoon".split()
AGREEMENT_PROMPTS = [
    "The history of the printing press",
    "How do volcanoes form?",
    "A recipe for tomato soup:",
    "def quicksort(items):",
    "The rules of chess are",
    "Dear diary, today I",
    "The planets of the solar system are",
    "Why is the sky blue?",
]


def prompt_for(n: int, words: int = 40) -> str:
    chosen = [WORDS[(n * 7 + i * 3) % len(WORDS)] for i in range(words)]
    return f"Story {n}: " + " ".join(chosen) + ". Once upon a time"


@dataclass
class Stream:
    ttft_ms: float
    gaps_ms: list[float]
    tokens: int
    text: str


@dataclass
class Server:
    name: str
    run: Callable[[str, int], Stream]  # (prompt, max_tokens) -> one streamed request
    stop: Callable[[], None]
    waves: dict[int, list[float]] = field(default_factory=dict)  # C -> aggregate tok/s
    # C -> aggregate decode tok/s: every stream's tokens after its first, over the time from
    # the wave's first first token to its last token (prefill left out, as bench_split.py)
    decodes: dict[int, list[float]] = field(default_factory=dict)
    # C -> steady decode tok/s: tokens after the wave's last first token, over the time from
    # it to the last token: only the steps where all C streams decode together, so a server
    # that starts one stream's decoding early (prefilling its prompt alone) is not charged
    # for the other prompts' prefill, which `decodes` counts inside its window.
    steadies: dict[int, list[float]] = field(default_factory=dict)
    streams: dict[int, list[Stream]] = field(default_factory=dict)


def _timed(events: Iterator[tuple[str, int]], started: float) -> Stream:
    """Consumes (text, tokens) events as they arrive."""
    stamps: list[float] = []
    tokens = 0
    text = []
    for piece, n in events:
        if n:
            stamps.append(time.perf_counter())
            tokens += n
            text.append(piece)
    gaps = [(b - a) * 1e3 for a, b in itertools.pairwise(stamps)]
    ttft = (stamps[0] - started) * 1e3 if stamps else float("nan")
    return Stream(ttft, gaps, tokens, "".join(text))


# ---- the three servers --------------------------------------------------------------------
def start_llamaherd(workdir: Path, slots: int, n_ctx: int, threads: int) -> Server:
    config = {"models": [{"alias": "bench", "path": "builtin:gemma-3-270m", "n_ctx": n_ctx,
                          "n_parallel": slots, "n_threads": threads, "n_batch": 512,
                          "flash_attn": "off", "max_queue": 256}],
              "log_level": "WARNING"}  # fmt: skip
    worker = start_worker(workdir, config, name="llamaherd")
    channel = grpc.insecure_channel(worker.address)
    stub = worker_pb2_grpc.WorkerStub(channel)

    def run(prompt: str, max_tokens: int) -> Stream:
        request = gen_pb.GenerateRequest(
            model="bench", prompt=prompt,
            sampling=gen_pb.SamplingParams(
                temperature=0, max_tokens=max_tokens, logit_bias={t: -100 for t in EOG_TOKENS}
            ),
        )  # fmt: skip
        started = time.perf_counter()
        chunks = stub.Generate(request, timeout=600)
        return _timed(((c.text, len(c.token_ids)) for c in chunks), started)

    def stop() -> None:
        channel.close()
        worker.stop()

    return Server("llamaherd worker", run, stop)


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready:\n{log.read_text()[-3000:]}")


def _start_http(
    command: Callable[[int], list[str]], log: Path, ready_path: str
) -> tuple[subprocess.Popen[bytes], httpx.Client]:
    """Starts an HTTP server on a free loopback port; returns it and a client, once ready."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    _wait_http(f"{base}{ready_path}", process, log, 120)
    # No keep-alive: llama-server closes idle connections on its own schedule, and a POST
    # sent on one it has just closed fails ("disconnected without sending a response").
    # A fresh loopback connection costs ~0.1 ms, nothing beside a 100+ ms TTFT.
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    return process, httpx.Client(base_url=base, timeout=600, limits=limits)


def _stopper(process: subprocess.Popen[bytes], http: httpx.Client) -> Callable[[], None]:
    def stop() -> None:
        http.close()
        process.terminate()
        process.wait(30)

    return stop


def _sse(http: httpx.Client, path: str, body: dict[str, object]) -> Iterator[dict[str, object]]:
    with http.stream("POST", path, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                yield json.loads(line[6:])


def start_llama_server(
    workdir: Path, binary: Path, model: Path, slots: int, n_ctx: int, threads: int
) -> Server:
    process, http = _start_http(
        lambda port: [
            str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-np", str(slots), "-c", str(n_ctx * slots), "-t", str(threads),
            "-tb", str(threads), "-b", "512", "-ub", "512", "-fa", "off", "--no-webui",
        ],
        workdir / "llama-server.log",
        "/health",
    )  # fmt: skip

    def run(prompt: str, max_tokens: int) -> Stream:
        body = {"prompt": prompt, "n_predict": max_tokens, "temperature": 0, "stream": True,
                "ignore_eos": True, "cache_prompt": True}  # fmt: skip
        started = time.perf_counter()
        events = _sse(http, "/completion", body)
        return _timed(((str(e.get("content", "")), 0 if e.get("stop") else 1) for e in events),
                      started)  # fmt: skip

    return Server("llama-server", run, _stopper(process, http))


def start_llama_cpp_server(
    workdir: Path, python: Path, model: Path, n_ctx: int, threads: int
) -> Server:
    process, http = _start_http(
        lambda port: [
            str(python), "-m", "llama_cpp.server", "--model", str(model),
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
            "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--n_batch", "512", "--flash_attn", "false", "--verbose", "false",
            "--interrupt_requests", "false",
        ],
        workdir / "llama_cpp_server.log",
        "/v1/models",
    )  # fmt: skip

    def run(prompt: str, max_tokens: int) -> Stream:
        body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "logit_bias": {str(t): -100 for t in EOG_TOKENS}}  # fmt: skip
        started = time.perf_counter()
        events = _sse(http, "/v1/completions", body)

        def pieces() -> Iterator[tuple[str, int]]:
            for event in events:
                choices = event.get("choices") or [{}]
                text = str(choices[0].get("text") or "")  # type: ignore[index,union-attr]
                yield text, 1 if text else 0

        return _timed(pieces(), started)

    return Server("llama_cpp.server", run, _stopper(process, http))


# ---- measurement ------------------------------------------------------------------------
def wave(server: Server, prompts: list[str], max_tokens: int) -> tuple[float, list[Stream]]:
    rate, _, _, streams = timed_wave(server, prompts, max_tokens)
    return rate, streams


def timed_wave(
    server: Server, prompts: list[str], max_tokens: int
) -> tuple[float, float, float, list[Stream]]:
    """One wave: its end-to-end tokens/s (all tokens / wall time), its aggregate decode
    tokens/s (tokens after each stream's first / first first token to last token), its
    steady decode tokens/s (tokens after the last first token / from it to the last token),
    and its streams."""
    barrier = threading.Barrier(len(prompts))

    def one(prompt: str) -> tuple[float, Stream]:
        barrier.wait()
        return time.perf_counter(), server.run(prompt, max_tokens)

    started = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        timed = list(pool.map(one, prompts))
    elapsed = time.perf_counter() - started
    streams = [s for _, s in timed]
    firsts = [begun + s.ttft_ms / 1e3 for begun, s in timed]
    ends = [first + sum(s.gaps_ms) / 1e3 for first, s in zip(firsts, streams, strict=True)]
    window = max(ends) - min(firsts)
    decoded = sum(len(s.gaps_ms) for s in streams)
    decode = decoded / window if window > 0 else float("nan")
    steady_from = max(firsts)
    stamps = [list(itertools.accumulate(s.gaps_ms, initial=0.0)) for s in streams]
    after = sum(
        sum(1 for ms in marks if first + ms / 1e3 > steady_from)
        for first, marks in zip(firsts, stamps, strict=True)
    )
    steady_window = max(ends) - steady_from
    steady = after / steady_window if steady_window > 0 else float("nan")
    return sum(s.tokens for s in streams) / elapsed, decode, steady, streams


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def agreement(server: Server, max_tokens: int) -> int:
    solo = [server.run(p, max_tokens).text for p in AGREEMENT_PROMPTS]
    _, together = wave(server, AGREEMENT_PROMPTS, max_tokens)
    return sum(a == b.text for a, b in zip(solo, together, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", type=Path, required=True, help="llama-server binary")
    parser.add_argument("--lcs-python", type=Path, help="python with llama_cpp.server (optional)")
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=512, help="per sequence")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--agreement", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamaherd-bench-batching"))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = resolve("builtin:gemma-3-270m")

    servers: list[Server] = []
    try:
        print("starting the servers ...", file=sys.stderr)
        servers.append(start_llamaherd(args.workdir, args.slots, args.n_ctx, args.threads))
        servers.append(start_llama_server(args.workdir, args.llama_server, model, args.slots,
                                          args.n_ctx, args.threads))  # fmt: skip
        if args.lcs_python:
            # One sequence at a time by design: a context for one request of the same size;
            # by default it aborts a running request when the next arrives: queue instead.
            servers.append(start_llama_cpp_server(args.workdir, args.lcs_python, model,
                                                  args.n_ctx, args.threads))  # fmt: skip
        for server in servers:  # warm-up: page cache, graphs, connections
            wave(server, [prompt_for(-1 - i) for i in range(2)], 8)
        if args.agreement:
            for server in servers[:2]:
                same = agreement(server, 64)
                print(f"agreement {server.name}: {same}/8 concurrent greedy outputs equal solo")
        n = 0
        for r in range(args.rounds):
            for level in levels:
                order = servers[r % len(servers) :] + servers[: r % len(servers)]
                for server in order:
                    prompts = [prompt_for(n + i) for i in range(level)]
                    n += level
                    rate, decode, steady, streams = timed_wave(server, prompts, args.max_tokens)
                    short = [s.tokens for s in streams if s.tokens != args.max_tokens]
                    if short:
                        print(f"warning: {server.name} gave {short} tokens", file=sys.stderr)
                    server.waves.setdefault(level, []).append(rate)
                    server.decodes.setdefault(level, []).append(decode)
                    server.steadies.setdefault(level, []).append(steady)
                    server.streams.setdefault(level, []).extend(streams)
                    print(f"round {r + 1} C={level} {server.name}: {rate:.1f} tok/s, "
                          f"decode {decode:.1f}, steady {steady:.1f} tok/s",
                          file=sys.stderr, flush=True)  # fmt: skip
    finally:
        for server in servers:
            server.stop()

    print(f"\nGemma 3 270M Q4_K_M, {args.slots} slots, {args.threads} threads, n_ctx "
          f"{args.n_ctx}/sequence, greedy, {args.max_tokens} tokens, {args.rounds} rounds, "
          f"cores: {os.cpu_count()}\n")  # fmt: skip
    print("| C | server | tokens/s (median) | vs llama-server | decode tokens/s (median) "
          "| vs llama-server | steady decode tokens/s (median) | vs llama-server "
          "| TTFT p50 / p99 (ms) | inter-token p50 / p99 (ms) |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    reference = servers[1]
    for level in levels:
        ref = statistics.median(reference.waves[level])
        ref_decode = statistics.median(reference.decodes[level])
        ref_steady = statistics.median(reference.steadies[level])
        for server in servers:
            rate = statistics.median(server.waves[level])
            decode = statistics.median(server.decodes[level])
            steady = statistics.median(server.steadies[level])
            ttfts = [s.ttft_ms for s in server.streams[level]]
            gaps = [g for s in server.streams[level] for g in s.gaps_ms]
            print(f"| {level} | {server.name} | {rate:.1f} | {rate / ref:.2f}x "
                  f"| {decode:.1f} | {decode / ref_decode:.2f}x "
                  f"| {steady:.1f} | {steady / ref_steady:.2f}x "
                  f"| {pct(ttfts, 0.5):.0f} / {pct(ttfts, 0.99):.0f} "
                  f"| {pct(gaps, 0.5):.0f} / {pct(gaps, 0.99):.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
