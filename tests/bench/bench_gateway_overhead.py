"""What the gateway adds over talking to the worker directly.

One coordinator (its own local Ray, registry, placement, gateway) and one worker serving the
embedded Gemma model; each round sends three fresh prompts of equal length, one per path,
rotating the order so drifts of a shared machine hit every path alike:

- direct: the worker's own gRPC Generate stream;
- gateway-grpc: the gateway's Inference.Generate, relayed to the worker;
- gateway-http: the gateway's OpenAI /v1/completions with SSE streaming (httpx client).

TTFT is measured by the client from sending the request to receiving the first token;
decode rate is (tokens - 1) / (last token time - first token time). Reports medians, and
the median of per-round differences (TTFT) and ratios (decode) against direct. Prefill time
varies by tens of ms between prompts on a shared machine, which drowns a ~1 ms hop, so the
table also shows the transport share of TTFT: the client's TTFT minus the TTFT the worker
itself reports (from the request reaching its engine to the first token); what the gateway
adds is that share's median minus direct's.

    .venv/bin/python tests/bench/bench_gateway_overhead.py [--rounds 30] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from llamaherd.v1 import generation_pb2 as gen_pb  # noqa: E402
from llamaherd.v1 import inference_pb2_grpc, worker_pb2_grpc  # noqa: E402
from support.auth import use_run_token, worker_channel  # noqa: E402
from support.cluster import ready_replicas, start_coordinator, start_node, wait_for  # noqa: E402

WORDS = "amber basil cedar delta ember fjord grove harbor iris juniper kestrel lagoon".split()
MODEL = "bench"
PATHS = ("direct", "gateway-grpc", "gateway-http")


@dataclass
class Run:
    ttft_ms: float
    decode_tps: float
    tokens: int
    worker_ttft_ms: float = 0.0

    @property
    def transport_ms(self) -> float:
        return self.ttft_ms - self.worker_ttft_ms


def prompt_for(n: int, words: int) -> str:
    chosen = [WORDS[(n * 7 + i * 3) % len(WORDS)] for i in range(words)]
    return f"Note {n}: " + " ".join(chosen) + ". Once upon a time"


def run_grpc(stub: object, prompt: str, max_tokens: int) -> Run:
    request = gen_pb.GenerateRequest(
        model=MODEL, prompt=prompt,
        sampling=gen_pb.SamplingParams(temperature=0, max_tokens=max_tokens),
    )  # fmt: skip
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    worker_ttft = 0.0
    for chunk in stub.Generate(request):  # type: ignore[attr-defined]
        if chunk.token_ids:
            last = time.perf_counter()
            first = first or last
            tokens += len(chunk.token_ids)
        if chunk.HasField("timings"):
            worker_ttft = chunk.timings.time_to_first_token_ms
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return Run((first - start) * 1e3, rate, tokens, worker_ttft)


def run_http(http: httpx.Client, prompt: str, max_tokens: int) -> Run:
    """Times SSE events with text; the token count comes from the usage event, since an
    event can carry more than one token when text is held back (a split UTF-8 character)."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    worker_ttft = 0.0
    with http.stream("POST", "/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0]["text"]:
                last = time.perf_counter()
                first = first or last
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if event.get("timings"):
                worker_ttft = event["timings"]["ttft_ms"]
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return Run((first - start) * 1e3, rate, tokens, worker_ttft)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamaherd-bench-gateway"))
    args = parser.parse_args()

    catalog = [{"alias": MODEL, "path": "builtin:gemma-3-270m", "n_ctx": 2048,
                "n_threads": args.threads, "flash_attn": "off"}]  # fmt: skip
    print("starting the coordinator (Ray) and a worker ...", file=sys.stderr)
    use_run_token()  # the coordinator and its worker share it through the environment
    coordinator = start_coordinator(args.workdir, catalog, "--log-level", "WARNING")
    worker = None
    runs: dict[str, list[Run]] = {p: [] for p in PATHS}
    try:
        worker = start_node(args.workdir, coordinator, "bench-node", "--log-level", "WARNING")
        wait_for(lambda: ready_replicas(coordinator).get(MODEL), 120, "the model to be placed")
        with (
            worker_channel(worker.address) as direct_channel,
            grpc.insecure_channel(coordinator.gateway) as gateway_channel,
            httpx.Client(base_url=coordinator.base_url, timeout=300) as http,
        ):
            paths = {
                "direct": lambda p: run_grpc(
                    worker_pb2_grpc.WorkerStub(direct_channel), p, args.max_tokens),
                "gateway-grpc": lambda p: run_grpc(
                    inference_pb2_grpc.InferenceStub(gateway_channel), p, args.max_tokens),
                "gateway-http": lambda p: run_http(http, p, args.max_tokens),
            }  # fmt: skip
            for name, fn in paths.items():  # warm-up: channels, graphs, page cache
                fn(prompt_for(-1 - PATHS.index(name), args.prompt_words))
            for r in range(args.rounds):
                order = PATHS[r % 3 :] + PATHS[: r % 3]
                for k, name in enumerate(order):
                    runs[name].append(paths[name](prompt_for(r * 3 + k, args.prompt_words)))
                print(f"round {r + 1}/{args.rounds}: " + " | ".join(
                    f"{n} {runs[n][-1].ttft_ms:.1f} ms {runs[n][-1].decode_tps:.1f} tok/s"
                    for n in PATHS), file=sys.stderr)  # fmt: skip
    finally:
        if worker is not None:
            worker.stop()
        coordinator.stop()

    tokens = sorted({r.tokens for rs in runs.values() for r in rs})
    print(f"\nGemma 3 270M Q4_K_M, {args.prompt_words}-word prompts, {args.max_tokens} greedy "
          f"tokens (got {tokens}), {args.threads} threads, {args.rounds} rounds\n")  # fmt: skip
    print("| path | TTFT p50 (ms) | transport share of TTFT p50 (ms) | decode p50 (tok/s) "
          "| TTFT vs direct (paired p50) | added transport (p50 vs direct) "
          "| decode vs direct (paired p50) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = runs["direct"]
    base_transport = statistics.median(r.transport_ms for r in base)
    for name in PATHS:
        rs = runs[name]
        ttft = statistics.median(r.ttft_ms for r in rs)
        transport = statistics.median(r.transport_ms for r in rs)
        tps = statistics.median(r.decode_tps for r in rs)
        if name == "direct":
            print(f"| {name} | {ttft:.1f} | {transport:.2f} | {tps:.2f} | | | |")
            continue
        d_ttft = statistics.median(r.ttft_ms - b.ttft_ms for r, b in zip(rs, base, strict=True))
        ratio = statistics.median(
            r.decode_tps / b.decode_tps for r, b in zip(rs, base, strict=True) if b.decode_tps
        )
        print(f"| {name} | {ttft:.1f} | {transport:.2f} | {tps:.2f} | {d_ttft:+.1f} ms "
              f"| {transport - base_transport:+.2f} ms | {ratio:.3f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
