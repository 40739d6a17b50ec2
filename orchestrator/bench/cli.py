"""`llamaherd bench` and `llamaherd bench compare`: the flags, and every refusal mapped to a
one-line message and exit code 2. Heavy imports wait until the command runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from orchestrator.bench.metrics import SloError, parse_slo
from orchestrator.bench.workload import Level, WorkloadError, parse_lengths, parse_levels

if TYPE_CHECKING:
    from orchestrator.bench.run import BenchConfig, Progress

PROG = "llamaherd bench"


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "bench", help="measure an OpenAI-compatible endpoint: latency, throughput, goodput",
        description="Load an OpenAI-compatible endpoint (llamaherd's gateway, one worker, "
        "llama-server, vLLM) with synthetic prompts of an exact token count and measure TTFT, "
        "inter-token latency, TPOT, end-to-end latency, throughput and goodput at an SLO, per "
        "load level. `llamaherd bench compare A.json B.json` sets two results side by side.",
    )  # fmt: skip
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1",
                        help="the API's base (default: http://127.0.0.1:8000/v1)")  # fmt: skip
    parser.add_argument("--model", help="the model to load (required)")
    parser.add_argument(
        "--api", choices=("completions", "chat"), default="completions",
        help="/v1/completions (default) or /v1/chat/completions",
    )  # fmt: skip
    parser.add_argument(
        "--api-key-env", metavar="VAR",
        help="the environment variable holding the endpoint's API key (default: "
        "LLAMAHERD_API_KEY when set)",
    )  # fmt: skip
    parser.add_argument(
        "--prompt-tokens", default="128", metavar="N|DIST",
        help="prompt length in tokens, as the server counts them: N (default 128), "
        "uniform:MIN-MAX or normal:MEAN,STDEV (drawn per request from the seed)",
    )  # fmt: skip
    parser.add_argument(
        "--output-tokens", default="64", metavar="N|DIST",
        help="tokens to generate per request: N (default 64), uniform:MIN-MAX or "
        "normal:MEAN,STDEV",
    )  # fmt: skip
    parser.add_argument(
        "--turns", type=int, default=1, metavar="K",
        help="multi-turn chats (--api chat, --concurrency): each stream is a user holding "
        "chats of K turns, each turn sending the history so far plus --prompt-tokens new tokens",
    )  # fmt: skip
    parser.add_argument(
        "--system-tokens", type=int, default=0, metavar="N",
        help="a system prompt of about N tokens shared by every user (--api chat), so a "
        "server's prefix cache matters",
    )  # fmt: skip
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency",
        metavar="N[,N...]",
        help="closed loop: N streams kept busy; a list sweeps (default 1)",
    )
    load.add_argument(
        "--rate", metavar="R[,R...]", help="open loop: R requests per second, evenly spaced"
    )
    load.add_argument(
        "--poisson", metavar="R[,R...]", help="open loop: Poisson arrivals at R requests per second"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--requests", type=int, metavar="N", help="measured requests per level (default 20)"
    )
    size.add_argument(
        "--duration", type=float, metavar="S", help="seconds per level instead of a request count"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        metavar="N",
        help="requests per level sent first and not measured (default 1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="prompts and arrivals (default 0)")
    parser.add_argument("--slo", metavar="TERMS",
                        help="e.g. ttft_p99=2s,itl_p99=200ms: goodput counts requests meeting "
                        "every term")  # fmt: skip
    parser.add_argument("--temperature", type=float, default=0.0, help="(default 0: greedy)")
    parser.add_argument(
        "--ban-tokens", metavar="ID[,ID...]",
        help="token ids given a -100 logit bias, to force the output length on a server that "
        "ignores ignore_eos (Gemma: 1,106)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S",
                        help="per request (default 300)")  # fmt: skip
    parser.add_argument("--out", metavar="PATH", help="write the result JSON here")
    parser.add_argument("--html", metavar="PATH", help="write an HTML report here")
    parser.add_argument("--json", action="store_true",
                        help="print the result JSON instead of the table")  # fmt: skip
    parser.set_defaults(run=run_bench_command)
    actions = parser.add_subparsers(title="actions", metavar="ACTION", dest="bench_action")
    compare = actions.add_parser("compare", help="two results side by side, with ratios")
    compare.add_argument("a", metavar="A.json")
    compare.add_argument("b", metavar="B.json")
    compare.set_defaults(run=run_compare_command)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def _ids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise WorkloadError(f"--ban-tokens {text!r}: give token ids, e.g. 1,106") from None


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The benchmark the flags describe; WorkloadError or SloError when they cannot be run."""
    from orchestrator.bench.client import Target
    from orchestrator.bench.run import BenchConfig

    if not args.model:
        raise WorkloadError("--model is required (GET /v1/models lists what the endpoint serves)")
    levels: tuple[Level, ...]
    if args.rate is not None:
        levels = parse_levels("rate", args.rate)
    elif args.poisson is not None:
        levels = parse_levels("poisson", args.poisson)
    else:
        levels = parse_levels("concurrency", args.concurrency or "1")
    prompt = parse_lengths("--prompt-tokens", str(args.prompt_tokens))
    output = parse_lengths("--output-tokens", str(args.output_tokens))
    if args.turns < 1:
        raise WorkloadError(f"--turns {args.turns}: must be at least 1")
    if args.system_tokens < 0:
        raise WorkloadError(f"--system-tokens {args.system_tokens}: must be 0 or more")
    if args.turns > 1 or args.system_tokens:
        flag = "--turns" if args.turns > 1 else "--system-tokens"
        if args.api != "chat":
            raise WorkloadError(f"{flag} needs --api chat (a chat has turns and a system prompt)")
        if levels[0].kind != "concurrency":
            raise WorkloadError(f"{flag} needs --concurrency (each stream is one user's chat)")
    if args.requests is not None and args.requests < 1:
        raise WorkloadError(f"--requests {args.requests}: must be at least 1")
    if args.duration is not None and not args.duration > 0:
        raise WorkloadError(f"--duration {args.duration}: must be more than 0 seconds")
    if args.warmup < 0:
        raise WorkloadError(f"--warmup {args.warmup}: must be 0 or more")
    key_var = args.api_key_env or "LLAMAHERD_API_KEY"
    api_key = os.environ.get(key_var)
    if args.api_key_env and not api_key:
        raise WorkloadError(f"--api-key-env {key_var}: the variable is not set")
    return BenchConfig(
        target=Target(args.url.rstrip("/"), args.model, args.api, api_key),
        levels=levels,
        prompt_tokens=prompt.fixed or max(1, round(prompt.mean)),
        output_tokens=output.fixed or max(1, round(output.mean)),
        prompt_lengths=None if prompt.fixed else prompt,
        output_lengths=None if output.fixed else output,
        turns=args.turns,
        system_tokens=args.system_tokens,
        requests=None if args.duration else (args.requests or 20),
        duration_s=args.duration,
        warmup=args.warmup,
        seed=args.seed,
        slo=parse_slo(args.slo) if args.slo else (),
        temperature=args.temperature,
        ban_tokens=_ids(args.ban_tokens) if args.ban_tokens else (),
        timeout_s=args.timeout,
    )


@contextmanager
def _progress(config: BenchConfig, quiet: bool) -> Iterator[Progress | None]:
    """A rich progress bar per level (on stderr, so --json output stays clean)."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[errors]} errors"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True),
    )  # fmt: skip
    tasks = [
        bar.add_task(level.label, total=config.requests, errors=0, start=False)
        for level in config.levels
    ]
    errors = [0] * len(tasks)

    def advance(level: int, record: object) -> None:
        from orchestrator.bench.metrics import RequestRecord

        if record is None:
            bar.start_task(tasks[level])
            return
        if isinstance(record, RequestRecord) and not record.ok:
            errors[level] += 1
        bar.update(tasks[level], advance=1, errors=errors[level])

    with bar:
        yield advance


def run_bench_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from orchestrator.bench.client import BenchError
    from orchestrator.bench.report import build_result, html_report, summary_table
    from orchestrator.bench.run import run_bench

    try:
        config = config_from_args(args)
    except (WorkloadError, SloError) as exc:
        return _fail(str(exc))
    try:
        with _progress(config, args.json or not sys.stderr.isatty()) as progress:
            run = asyncio.run(run_bench(config, progress))
    except BenchError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted; nothing written")
    argv = getattr(args, "argv", None) or sys.argv[1:]
    result = build_result(config, run, ["llamaherd", *argv])
    text = json.dumps(result, indent=1)
    try:
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        if args.html:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(html_report(result))
    except OSError as exc:
        return _fail(f"cannot write {exc.filename}: {exc.strerror}")
    if args.json:
        print(text)
    else:
        Console().print(summary_table(result))
    return 0


def run_compare_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from orchestrator.bench.report import ResultError, compare_table, load_result

    try:
        a, b = load_result(args.a), load_result(args.b)
    except ResultError as exc:
        return _fail(f"compare: {exc}")
    Console().print(compare_table(a, b, args.a, args.b))
    return 0


def main(argv: Sequence[str]) -> int:
    """For tests: parse `bench ...` as `llamaherd` would."""
    parser = argparse.ArgumentParser(prog="llamaherd")
    add_bench_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    args.argv = list(argv)
    code: int = args.run(args)
    return code
