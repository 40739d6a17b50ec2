"""What the worker's gRPC path costs over calling llama-cpp-python in-process.

Same model, same prompts, greedy sampling, same threads and flash-attention setting. Each
round runs the same fresh prompt once through each path, alternating which goes first, so
slow drifts of a shared machine hit both. Reports medians and ratios (quote those; single
times on a noisy machine mean little).

    .venv/bin/python tests/bench/bench_worker_overhead.py [--rounds 20] [--max-tokens 64]

- direct: `llama_cpp.Llama(...).create_completion(prompt, stream=True)` in this process;
- worker: `llamaherd worker` in its own process, streamed over a loopback gRPC channel.
TTFT is measured by the client from sending the request to receiving the first token;
decode rate is (tokens - 1) / (last token time - first token time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from llama_cpp import Llama  # noqa: E402
from llamaherd.v1 import generation_pb2 as gen_pb  # noqa: E402
from support.worker_process import start_worker  # noqa: E402

from worker.api.client import WorkerClient  # noqa: E402
from worker.models.builtin import resolve  # noqa: E402

WORDS = "amber basil cedar delta ember fjord grove harbor iris juniper kestrel lagoon".split()


@dataclass
class Run:
    ttft_ms: float
    decode_tps: float
    tokens: int


def prompt_for(round_no: int, length_words: int) -> str:
    """A distinct prompt per round (so no path gets a cached prompt) of a fixed length."""
    words = [WORDS[(round_no * 7 + i * 3) % len(WORDS)] for i in range(length_words)]
    return f"Note {round_no}: " + " ".join(words) + ". Once upon a time"


def _rate(first: float, last: float, tokens: int) -> float:
    return (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0


def run_direct(llm: Llama, prompt: str, max_tokens: int) -> Run:
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stream=True):
        if chunk["choices"][0]["finish_reason"] is not None:
            continue  # the closing chunk carries no token
        last = time.perf_counter()
        if tokens == 0:
            first = last
        tokens += 1
    return Run((first - start) * 1e3, _rate(first, last, tokens), tokens)


def run_worker(client: WorkerClient, model: str, prompt: str, max_tokens: int) -> Run:
    sampling = gen_pb.SamplingParams(temperature=0.0, max_tokens=max_tokens)
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for chunk in client.generate(model, prompt, sampling):
        if not chunk.token_ids:
            continue
        last = time.perf_counter()
        if tokens == 0:
            first = last
        tokens += len(chunk.token_ids)
    return Run((first - start) * 1e3, _rate(first, last, tokens), tokens)


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--prompt-words", type=int, default=40, help="prompt length (about 1.3 tokens a word)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument(
        "--flash-attn", choices=["on", "off"], default="off",
        help="the same on both sides (llama-cpp-python's default: off)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamaherd-bench"))
    args = parser.parse_args()

    path = resolve("builtin:gemma-3-270m")
    model = "bench"
    config = {
        "models": [{
            "alias": model, "path": str(path), "n_ctx": args.n_ctx, "n_batch": 512,
            "n_threads": args.threads, "flash_attn": args.flash_attn,
        }],
        "log_level": "WARNING",
    }  # fmt: skip
    print(f"starting worker and loading {path.name} in-process ...", file=sys.stderr)
    worker = start_worker(args.workdir, config, name="bench")
    llm = Llama(
        str(path), n_ctx=args.n_ctx, n_batch=512, n_threads=args.threads,
        n_threads_batch=args.threads, flash_attn=args.flash_attn == "on", verbose=False,
    )  # fmt: skip
    direct: list[Run] = []
    grpc_runs: list[Run] = []
    try:
        with WorkerClient(worker.address, timeout=300) as client:
            # Warm-up: first calls page the weights in and build graphs on both sides.
            run_direct(llm, prompt_for(-1, args.prompt_words), 8)
            run_worker(client, model, prompt_for(-1, args.prompt_words), 8)
            for r in range(args.rounds):
                prompt = prompt_for(r, args.prompt_words)
                pair = [
                    ("direct", lambda p=prompt: run_direct(llm, p, args.max_tokens)),
                    ("worker", lambda p=prompt: run_worker(client, model, p, args.max_tokens)),
                ]
                if r % 2:
                    pair.reverse()
                for name, fn in pair:
                    run = fn()
                    (direct if name == "direct" else grpc_runs).append(run)
                print(f"round {r + 1}/{args.rounds}: direct {direct[-1].ttft_ms:.1f} ms "
                      f"{direct[-1].decode_tps:.1f} tok/s | worker {grpc_runs[-1].ttft_ms:.1f} ms "
                      f"{grpc_runs[-1].decode_tps:.1f} tok/s", file=sys.stderr)  # fmt: skip
    finally:
        worker.stop()

    n_prompt = len(llm.tokenize(prompt_for(0, args.prompt_words).encode()))
    d_ttft, w_ttft = median([r.ttft_ms for r in direct]), median([r.ttft_ms for r in grpc_runs])
    d_tps, w_tps = median([r.decode_tps for r in direct]), median([r.decode_tps for r in grpc_runs])
    pairs = list(zip(grpc_runs, direct, strict=True))
    paired = median([w.ttft_ms - d.ttft_ms for w, d in pairs])
    paired_ratio = median([w.decode_tps / d.decode_tps for w, d in pairs])
    tokens = {r.tokens for r in direct + grpc_runs}
    print(f"\nGemma 3 270M Q4_K_M, {n_prompt}-token prompts, {args.max_tokens} greedy tokens "
          f"(got {sorted(tokens)}), {args.threads} threads, flash attention {args.flash_attn}, "
          f"{args.rounds} interleaved rounds\n")  # fmt: skip
    print("| path | TTFT p50 (ms) | decode p50 (tok/s) |")
    print("|---|---:|---:|")
    print(f"| llama-cpp-python in-process | {d_ttft:.1f} | {d_tps:.2f} |")
    print(f"| llamaherd worker over gRPC | {w_ttft:.1f} | {w_tps:.2f} |")
    print(f"| **worker vs direct** | **{w_ttft - d_ttft:+.1f}** (median of paired differences "
          f"{paired:+.1f}) | **{w_tps / d_tps:.3f}x** (median of paired ratios "
          f"{paired_ratio:.3f}x) |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
