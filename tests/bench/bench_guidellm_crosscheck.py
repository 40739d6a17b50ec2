"""`llamaherd bench` against GuideLLM on the same endpoint and workload (issue 18, deliverable 2).

Runs the two tools interleaved (bench, guidellm, bench, guidellm, ...) so that drifts of a
shared machine hit both alike, at each concurrency, on /v1/completions with synthetic
prompts of the same token count and `max_tokens` with `ignore_eos` (both tools send it), no
warm-up for either, greedy in both (GuideLLM sends no temperature of its own, so the script
passes temperature 0 as a backend extra). llamaherd's gateway ignores `ignore_eos`, so
against it pass `--ban-tokens 1,106` (Gemma's end tokens): both tools then send that logit
bias and every request runs to `max_tokens`. Prints, per level, the median over rounds of
each figure and the ratio llamaherd/GuideLLM:

- TTFT median and mean: the same definition in both (first content chunk - send).
- ITL mean: GuideLLM's per-request ITL is (last token - first token) / (output tokens - 1),
  averaged weighted by output tokens - 1, which is the mean of every gap after the first
  token; llamaherd's ITL mean is the mean of those same gaps (per token when a chunk carries
  several). Medians are not comparable: GuideLLM's is the median of per-request averages,
  llamaherd's the median of single gaps (as vLLM's `bench serve`).
- E2E median: send to the stream's end in both.
- Output tokens/s: output tokens over the run's window (first send to last end) in both.

GuideLLM needs a Hugging Face tokenizer; with no hub here, make one from the GGUF (needs
`transformers`, `torch` and `gguf` in GuideLLM's venv):

    /tmp/guidellm/bin/python -c "from transformers import AutoTokenizer as T; \
        T.from_pretrained(DIR, gguf_file=NAME).save_pretrained('/tmp/gtok')"

    .venv/bin/python tests/bench/bench_guidellm_crosscheck.py --url http://127.0.0.1:18100 \
        --model gemma-3-270m --guidellm /tmp/guidellm/bin/guidellm --tokenizer /tmp/gtok \
        --concurrency 1,4 --rounds 3 --requests 10 --output-tokens 32 --ban-tokens 1,106
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

Figures = dict[str, float]


def llamaherd_figures(path: Path) -> Figures:
    level = json.loads(path.read_text())["levels"][0]
    return {
        "ttft_median_ms": level["ttft"]["p50"] * 1000,
        "ttft_mean_ms": level["ttft"]["mean"] * 1000,
        "itl_mean_ms": level["itl"]["mean"] * 1000,
        "e2e_median_s": level["e2e"]["p50"],
        "output_tok_s": level["output_token_throughput"],
        "requests": level["completed"],
    }


def guidellm_figures(path: Path) -> Figures:
    benchmark = json.loads(path.read_text())["benchmarks"][0]
    metrics = benchmark["metrics"]

    def ok(name: str) -> dict[str, Any]:
        summary: dict[str, Any] = metrics[name]["successful"]
        return summary

    # GuideLLM's own throughput figure: over its measured window, which leaves the warm-up
    # out (the successful requests listed include the warm-up's, so a window taken over them
    # would not match the tokens its metrics count). Without a warm-up it equals output
    # tokens / (last end - first send), our definition.
    return {
        "ttft_median_ms": ok("time_to_first_token_ms")["median"],
        "ttft_mean_ms": ok("time_to_first_token_ms")["mean"],
        "itl_mean_ms": ok("inter_token_latency_ms")["mean"],
        "e2e_median_s": ok("request_latency")["median"],
        "output_tok_s": ok("output_tokens_per_second")["mean"],
        "requests": ok("time_to_first_token_ms")["count"],
    }


def run_llamaherd(args: argparse.Namespace, streams: int, out: Path, seed: int) -> Figures:
    subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "bench", "--url", f"{args.url}/v1",
         "--model", args.model, "--prompt-tokens", str(args.prompt_tokens),
         "--output-tokens", str(args.output_tokens), "--concurrency", str(streams),
         "--requests", str(args.requests * streams), "--warmup", str(args.warmup),
         "--seed", str(seed), "--out", str(out), "--json",
         *(["--ban-tokens", args.ban_tokens] if args.ban_tokens else [])],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return llamaherd_figures(out)


def guidellm_extras(ban_tokens: str | None) -> str:
    """GuideLLM's backend arguments that make its requests sample as `llamaherd bench`'s
    do: greedy (bench's default; GuideLLM sends no temperature, so the server's default
    sampling applies) and, with `ban_tokens`, the same -100 logit bias on those ids."""
    extras = ",extras.body.temperature=0"
    for token in (t.strip() for t in (ban_tokens or "").split(",") if t.strip()):
        extras += f",extras.body.logit_bias.{token}=-100"
    return extras


def run_guidellm(args: argparse.Namespace, streams: int, out: Path) -> Figures:
    subprocess.run(
        [args.guidellm, "run",
         "--backend", f"kind=openai_http,target={args.url},model={args.model},"
         f"request_format=/v1/completions{guidellm_extras(args.ban_tokens)}",
         "--tokenizer", f"kind=huggingface_auto,model={args.tokenizer}",
         "--data", f"kind=synthetic_text,prompt_tokens={args.prompt_tokens},"
         f"output_tokens={args.output_tokens}",
         # GuideLLM's warm-up is a count here (max_requests is its only limit), and it is part
         # of that count: both tools then measure the same requests.
         "--profile", f"kind=concurrent,streams={streams},warmup={args.warmup}",
         "--constraint", f"kind=max_requests,count={args.requests * streams + args.warmup}",
         "--output", f"kind=json,path={out}", "--disable-progress", "--disable-console"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return guidellm_figures(out)


ROWS = (
    ("TTFT median ms", "ttft_median_ms"),
    ("TTFT mean ms", "ttft_mean_ms"),
    ("ITL mean ms", "itl_mean_ms"),
    ("E2E median s", "e2e_median_s"),
    ("output tokens/s", "output_tok_s"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:18100", help="server root (no /v1)")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--guidellm", default="/tmp/guidellm/bin/guidellm")
    parser.add_argument("--tokenizer", default="/tmp/gtok")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=12, help="per stream, per run")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument(
        "--warmup", type=int, default=1,
        help="requests per run not measured, in both tools (default 1: GuideLLM's first "
        "request carries its own start-up, about 0.2 s of TTFT at c=1)",
    )  # fmt: skip
    parser.add_argument(
        "--ban-tokens", metavar="ID[,ID...]",
        help="token ids both tools bias by -100, so every request runs to max_tokens on a "
        "server that ignores ignore_eos, as llamaherd's gateway does (Gemma: 1,106)",
    )  # fmt: skip
    parser.add_argument("--keep", metavar="DIR", help="keep every run's JSON here")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="crosscheck-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"runs in {work}", file=sys.stderr)
    for streams in (int(c) for c in args.concurrency.split(",")):
        runs: dict[str, list[Figures]] = {"llamaherd": [], "guidellm": []}
        for n in range(args.rounds):
            runs["llamaherd"].append(
                run_llamaherd(args, streams, work / f"lh-c{streams}-{n}.json", n)
            )
            runs["guidellm"].append(run_guidellm(args, streams, work / f"gl-c{streams}-{n}.json"))
            print(f"c={streams} round {n + 1}: " + json.dumps(
                {tool: {k: round(v, 2) for k, v in r[-1].items()} for tool, r in runs.items()}
            ), file=sys.stderr)  # fmt: skip
        size = f"{args.prompt_tokens} prompt / {args.output_tokens} output tokens"
        print(f"\nconcurrency {streams}, {args.rounds} rounds x {args.requests * streams} "
              f"requests, {size}")  # fmt: skip
        print("| figure | llamaherd bench | GuideLLM | ratio |\n|---|---:|---:|---:|")
        for row, key in ROWS:
            ours = statistics.median(r[key] for r in runs["llamaherd"])
            theirs = statistics.median(r[key] for r in runs["guidellm"])
            print(f"| {row} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
