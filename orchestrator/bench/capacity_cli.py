"""`llamaherd capacity`: the flags, the progress bar, the table, and every refusal mapped to a
one-line message and exit code 2. Heavy imports wait until the command runs."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.bench.metrics import SloError, parse_slo
from orchestrator.bench.workload import WorkloadError

if TYPE_CHECKING:
    from orchestrator.bench.capacity import CapacityConfig, CapacityResult, LevelStarted

PROG = "llamaherd capacity"


def add_capacity_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "capacity", help="the most concurrent streams one node sustains within an SLO",
        description="Sweep concurrency (1, 2, 4, ... then bisect) on one node of a llamaherd "
        "cluster, through its gateway, and report the largest number of concurrent streams "
        "that meets the SLO, with the prefill and decode rates that explain it. --save "
        "stores the result with the coordinator (run it on the coordinator's machine): "
        "gateways then refuse requests (429 + Retry-After) when every replica of the model "
        "holds its measured streams, and llamaherd status shows it.",
    )  # fmt: skip
    parser.add_argument("--model", help="the model alias to measure (required)")
    parser.add_argument("--node", help="the node to measure (default: the one serving --model)")
    parser.add_argument(
        "--slo",
        default="ttft_p99=2s,itl_p99=200ms",
        help="the SLO every level must meet (default: ttft_p99=2s,itl_p99=200ms)",
    )
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:8000/v1",
        help="the gateway's API base (default: http://127.0.0.1:8000/v1)",
    )
    parser.add_argument(
        "--api-key-env", metavar="VAR",
        help="the environment variable holding the gateway's API key (default: "
        "LLAMAHERD_API_KEY when set)",
    )  # fmt: skip
    parser.add_argument(
        "--n-ctx", metavar="N[,N...]",
        help="context lengths to measure: the model is measured with the context it is loaded "
        "with (the catalog's n_ctx), so each N must be that; use --prompt-tokens to sweep the "
        "context used",
    )  # fmt: skip
    parser.add_argument("--prompt-tokens", default="128", metavar="N[,N...]",
                        help="prompt lengths (the context used); each is swept, the longest "
                        "is stored (default 128)")  # fmt: skip
    parser.add_argument("--output-tokens", type=int, default=64, metavar="N",
                        help="tokens generated per request (default 64)")  # fmt: skip
    parser.add_argument("--max-concurrency", type=int, default=16, metavar="N",
                        help="the highest concurrency tried (default 16)")  # fmt: skip
    parser.add_argument(
        "--requests-per-stream",
        type=int,
        default=3,
        metavar="N",
        help="measured requests per level for each stream (default 3; at least 6 a level)",
    )
    parser.add_argument("--ban-tokens", metavar="ID[,ID...]",
                        help="token ids given a -100 logit bias (see llamaherd bench)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S",
                        help="per request (default 300)")  # fmt: skip
    parser.add_argument("--save", action="store_true",
                        help="store the result in the coordinator's state directory "
                        "(capacity.json, 0600); gateways use it within a second")  # fmt: skip
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="the coordinator's state directory (default: its state_dir "
                        "setting, from --config or LLAMAHERD_COORDINATOR_STATE_DIR)")  # fmt: skip
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="the coordinator's config file, for its state_dir")  # fmt: skip
    parser.add_argument("--json", action="store_true",
                        help="print the result as JSON instead of the table")  # fmt: skip
    parser.set_defaults(run=run_capacity_command)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise WorkloadError(f"{flag} {text!r}: give whole numbers, e.g. 128,1024") from None
    if any(v < 1 for v in values):
        raise WorkloadError(f"{flag} {text!r}: each must be at least 1")
    return values


def config_from_args(args: argparse.Namespace) -> CapacityConfig:
    """The sweep the flags describe; WorkloadError or SloError when it cannot be run."""
    from orchestrator.bench.capacity import CapacityConfig
    from orchestrator.bench.client import Target

    if not args.model:
        raise WorkloadError("--model is required (llamaherd status lists the cluster's models)")
    for flag, value in (("--output-tokens", args.output_tokens),
                        ("--max-concurrency", args.max_concurrency),
                        ("--requests-per-stream", args.requests_per_stream)):  # fmt: skip
        if value < 1:
            raise WorkloadError(f"{flag} {value}: must be at least 1")
    key_var = args.api_key_env or "LLAMAHERD_API_KEY"
    api_key = os.environ.get(key_var)
    if args.api_key_env and not api_key:
        raise WorkloadError(f"--api-key-env {key_var}: the variable is not set")
    return CapacityConfig(
        target=Target(args.url.rstrip("/"), args.model, "completions", api_key),
        node=args.node,
        slo=parse_slo(args.slo),
        prompt_tokens=_ints("--prompt-tokens", args.prompt_tokens),
        output_tokens=args.output_tokens,
        max_concurrency=args.max_concurrency,
        requests_per_stream=args.requests_per_stream,
        ban_tokens=_ints("--ban-tokens", args.ban_tokens) if args.ban_tokens else (),
        timeout_s=args.timeout,
        contexts=_ints("--n-ctx", args.n_ctx) if args.n_ctx else (),
    )


@contextmanager
def _progress(quiet: bool) -> Iterator[tuple[LevelStarted | None, Any]]:
    """One rich progress bar per level tried (on stderr, so --json output stays clean)."""
    if quiet:
        yield None, None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[errors]} errors"), TimeElapsedColumn(),
        console=Console(stderr=True),
    )  # fmt: skip
    current: list[Any] = []
    errors = [0]

    def started(prompt_tokens: int, streams: int, requests: int) -> None:
        errors[0] = 0
        label = f"{prompt_tokens}-token prompts, {_streams(streams)}"
        current[:] = [bar.add_task(label, total=requests, errors=0)]

    def advance(level: int, record: Any) -> None:
        if record is None or not current:
            return
        if not record.ok:
            errors[0] += 1
        bar.update(current[0], advance=1, errors=errors[0])

    with bar:
        yield started, advance


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(os.path.expanduser(args.state_dir))
    from orchestrator.config import build_coordinator_settings

    return build_coordinator_settings(args.config).state_dir


def run_capacity_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from common.settings import ConfigError
    from orchestrator.bench.capacity import measure_capacity
    from orchestrator.bench.client import BenchError
    from orchestrator.cluster.capacity import CAPACITY_FILE, CapacityFileError, save_record

    try:
        config = config_from_args(args)
        state_dir = _state_dir(args) if args.save else None
    except (WorkloadError, SloError) as exc:
        return _fail(str(exc))
    except ValidationError as exc:
        return _fail(f"the coordinator's settings: {exc.errors()[0]['msg']}")
    except ConfigError as exc:
        return _fail(str(exc))
    try:
        with _progress(args.json or not sys.stderr.isatty()) as (started, advance):
            result = asyncio.run(measure_capacity(config, started, advance))
    except BenchError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted; nothing saved")
    saved = None
    if state_dir is not None:
        saved = state_dir / CAPACITY_FILE
        try:
            save_record(saved, result.record)
        except CapacityFileError as exc:
            return _fail(str(exc))
    if args.json:
        print(json.dumps(result_json(result, saved), indent=1))
    else:
        from rich.console import Console

        Console().print(summary_table(result))
        if saved is not None:
            print(
                f"saved to {saved}: gateways cap {result.record.node} at "
                f"{_streams(max(result.record.max_streams, 1))} of {result.record.model}"
            )
    return 0


def result_json(result: CapacityResult, saved: Path | None) -> dict[str, Any]:
    """The result as JSON: the stored record, one record per prompt length, every level."""
    return {
        "record": dataclasses.asdict(result.record),
        "records": [dataclasses.asdict(r) for r in result.records],
        "levels": [
            {
                "prompt_tokens": level.prompt_tokens,
                "concurrency": level.concurrency,
                "met_slo": level.met,
                "figures": dataclasses.asdict(level.figures),
            }
            for level in result.levels
        ],
        "saved_to": str(saved) if saved is not None else None,
    }


def summary_table(result: CapacityResult) -> Any:
    """One row per level tried, and the capacity found per prompt length in the caption."""
    from rich.table import Table

    record = result.record
    table = Table(title=f"capacity of {record.model} on {record.node} (n_ctx {record.n_ctx}, "
                  f"SLO {record.slo})")  # fmt: skip
    for column in ("prompt", "streams", "met SLO", "TTFT p99", "ITL p99", "tok/s out",
                   "errors"):  # fmt: skip
        table.add_column(column, justify="right")
    for level in result.levels:
        f = level.figures
        table.add_row(
            str(level.prompt_tokens), str(level.concurrency), "yes" if level.met else "no",
            f"{f.ttft.p99 * 1000:.0f} ms" if f.ttft else "-",
            f"{f.itl.p99 * 1000:.0f} ms" if f.itl else "-",
            f"{f.output_token_throughput:.1f}", str(sum(f.errors.values())),
        )  # fmt: skip
    lines = [
        f"{r.prompt_tokens}-token prompts: {_streams(r.max_streams)}; prefill "
        f"{r.prefill_tps:.0f} tok/s, decode {r.decode_tps_stream:.1f} tok/s per stream, "
        f"{r.decode_tps_total:.1f} in all" + (f", {r.watts:.0f} W" if r.watts is not None else "")
        for r in result.records
    ]
    table.caption = "\n".join(lines)
    return table


def main(argv: Sequence[str]) -> int:
    """For tests: parse `capacity ...` as `llamaherd` would."""
    parser = argparse.ArgumentParser(prog="llamaherd")
    add_capacity_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


def _streams(count: int) -> str:
    return f"{count} stream" if count == 1 else f"{count} streams"
