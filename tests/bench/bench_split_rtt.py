"""Link latency and a two-host split: time per token = compute + k x RTT, fitted.

The two-host split of tests/bench/bench_split.py (the embedded Gemma 3 270M Q4_K_M, the last
--remote-layers of its 18 layers on the helper host; llamaherd behind its kernel-filter
guard, and llama.cpp's own `llama-server --rpc` with `ggml-rpc-server`), with a delay proxy
(tests.support.delay_proxy) between the head and the helper: the proxy runs in the head's
namespace and an iptables DNAT rule there sends every TCP connection from the head to the
helper through it, so both sides' RPC traffic crosses the same added one-way delay and the
helper still sees the head's own address (its guard admits it).

Each round visits every delay in --delays-ms (one-way, milliseconds; the order rotates by
round): it sets the proxy's delay, measures the round trip through it (the median of 64-byte
TCP ping-pongs to an echo server on the helper host, over the same path), and decodes
--max-tokens greedily on each variant (the order rotates too). The single-node variants run
once per round, unaffected by the delay, as the reference for compute alone.

For each split variant, least squares over the rounds' (measured RTT, seconds per token)
points fits seconds per token = compute + k x RTT: k is the number of synchronous round
trips between head and helper per token, compute what a token costs with a free link.

    .venv/bin/python tests/bench/bench_split_rtt.py \\
        --llama-server /tmp/peer/build/bin/llama-server \\
        --rpc-server /tmp/peer/build/bin/ggml-rpc-server [--rounds 4] [--delays-ms 0,0.5,2]

The proxy also counts each connection's turns (a reply from the helper after the head sent
something): the synchronous round trips themselves, per token, whatever the noise of the
timings; and the bench parses the head's side of ggml's RPC protocol (each request is
| command byte | 8-byte size | payload |) to count each command per token. Results also go
to --workdir/split_rtt.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

from bench_split import (  # noqa: E402
    RPC_PORT,
    Variant,
    decode_rate,
    llama_cpp_variants,
    llamaherd_variants,
    prompt_for,
)
from support.delay_proxy import DelayProxy, EchoServer, Relayed, intercept, rtt  # noqa: E402
from support.netns import network  # noqa: E402
from support.throttle_proxy import require_iptables  # noqa: E402

# ggml-rpc.cpp's enum rpc_cmd, in order (the vendored llama.cpp's).
RPC_COMMANDS = (
    "ALLOC_BUFFER", "GET_ALIGNMENT", "GET_MAX_SIZE", "BUFFER_GET_BASE", "FREE_BUFFER",
    "BUFFER_CLEAR", "SET_TENSOR", "SET_TENSOR_HASH", "GET_TENSOR", "COPY_TENSOR",
    "GRAPH_COMPUTE", "GET_DEVICE_MEMORY", "INIT_TENSOR", "GET_ALLOC_SIZE", "HELLO",
    "DEVICE_COUNT", "GRAPH_RECOMPUTE", "MEMSET_TENSOR",
)  # fmt: skip


class RpcTally:
    """Counts the ggml RPC commands the head sends, per helper port: a DelayProxy observer.

    Each connection is parsed from its first byte: a 9-byte header (command, payload size
    little-endian), then the payload, skipped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parsing: dict[int, tuple[bytes, int]] = {}  # per connection: header so far, skip
        self.by_port: dict[int, Counter[str]] = {}

    def __call__(self, record: Relayed, up: bool, data: bytes) -> None:
        if not up:
            return
        header, skip = self._parsing.get(id(record), (b"", 0))
        seen: list[str] = []
        i = 0
        while i < len(data):
            if skip:
                taken = min(skip, len(data) - i)
                skip, i = skip - taken, i + taken
                continue
            piece = data[i : i + 9 - len(header)]
            header, i = header + piece, i + len(piece)
            if len(header) == 9:
                cmd = header[0]
                seen.append(RPC_COMMANDS[cmd] if cmd < len(RPC_COMMANDS) else f"#{cmd}")
                header, skip = b"", int.from_bytes(header[1:], "little")
        self._parsing[id(record)] = (header, skip)
        with self._lock:
            self.by_port.setdefault(record.upstream[1], Counter()).update(seen)

    def counts(self, port: int | None, others: set[int]) -> Counter[str]:
        """The commands sent so far to `port` (None: to every port but `others`)."""
        total: Counter[str] = Counter()
        with self._lock:
            for p, counter in self.by_port.items():
                if (p == port) if port else (p not in others):
                    total.update(counter)
        return total


@dataclass
class Point:
    """One decode of one variant at one delay."""

    delay_ms: float
    rtt_s: float  # the round trip measured through the proxy just before
    seconds_per_token: float


@dataclass
class Series:
    variant: Variant
    port: int | None  # the helper port its RPC connection goes to; None: any but the others
    points: list[Point] = field(default_factory=list)
    turns_per_token: list[float] = field(default_factory=list)
    commands: Counter[str] = field(default_factory=Counter)  # over every measured decode
    tokens: int = 0


def turns(proxy: DelayProxy, series: Series, others: set[int]) -> int:
    """Replies the helper has sent on `series`' RPC connections so far."""
    return sum(
        r.turns
        for r in proxy.relayed()
        if (r.upstream[1] == series.port if series.port else r.upstream[1] not in others)
    )


@dataclass(frozen=True)
class Fit:
    """seconds per token = compute_s + k x RTT, by least squares."""

    k: float
    compute_s: float
    r2: float


def fit(points: list[Point]) -> Fit:
    """Least squares of seconds per token on the measured RTT."""
    x = [p.rtt_s for p in points]
    y = [p.seconds_per_token for p in points]
    line = statistics.linear_regression(x, y)
    r = statistics.correlation(x, y)
    return Fit(k=line.slope, compute_s=line.intercept, r2=r * r)


def parse_delays(text: str) -> list[float]:
    """--delays-ms: comma-separated one-way delays in milliseconds, at least two."""
    try:
        delays = sorted({float(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--delays-ms takes numbers like 0,0.5,2, not {text!r}"
        ) from None
    if len(delays) < 2 or delays[0] < 0:
        raise argparse.ArgumentTypeError(
            f"--delays-ms needs at least two delays >= 0 to fit a line, got {text!r}"
        )
    return delays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", type=Path, required=True)
    parser.add_argument("--rpc-server", type=Path, required=True)
    parser.add_argument("--remote-layers", type=int, default=9, help="layers on the helper")
    parser.add_argument("--threads", type=int, default=1, help="per process")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--delays-ms", type=parse_delays, default=[0.0, 0.5, 2.0],
                        help="added one-way delays, comma-separated")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamaherd-bench-split-rtt"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    require_iptables_or_exit()

    rtts: dict[float, list[float]] = {d: [] for d in args.delays_ms}
    with network(2) as net, ExitStack() as stack:
        head, helper = net.hosts
        tally = RpcTally()
        proxy = stack.enter_context(
            DelayProxy((head.address, 0), None, netns=head.name, observe=tally)
        )
        stack.enter_context(intercept(head, helper.address, proxy.address))
        echo = stack.enter_context(EchoServer((helper.address, 0), netns=helper.name))
        print("starting llamaherd and llama.cpp on namespaced hosts ...", file=sys.stderr)
        variants = llama_cpp_variants(stack, args, head, helper)
        variants += llamaherd_variants(
            stack, args.workdir, head, {"auto": helper}, args.remote_layers, args.threads
        )
        # llama.cpp's rpc-server listens on RPC_PORT; llamaherd's lease on a port of its own.
        splits = [
            Series(v, RPC_PORT if v.name.startswith("llama.cpp") else None)
            for v in variants
            if "split" in v.name
        ]
        others = {RPC_PORT, echo.port}
        singles = [v for v in variants if "split" not in v.name]
        for variant in variants:  # warm-up: page cache, graphs, connections
            variant.run(prompt_for(-1), 8)
        through = [r.upstream for r in proxy.relayed()]
        if len(through) < 2:  # llama.cpp's RPC connection and llamaherd's, at least
            raise SystemExit(f"the RPC connections did not all cross the proxy: {through}")

        for r in range(args.rounds):
            delays = (
                args.delays_ms[r % len(args.delays_ms) :]
                + args.delays_ms[: r % len(args.delays_ms)]
            )
            for delay_ms in delays:
                proxy.set_delay(delay_ms / 1e3)
                measured = rtt((helper.address, echo.port), n=64, netns=head.name)
                rtts[delay_ms].append(measured)
                order = splits[r % len(splits) :] + splits[: r % len(splits)]
                for series in order:
                    before = turns(proxy, series, others)
                    sent = tally.counts(series.port, others)
                    stream = series.variant.run(prompt_for(r), args.max_tokens)
                    made = turns(proxy, series, others) - before
                    series.turns_per_token.append(made / max(stream.tokens, 1))
                    series.commands.update(tally.counts(series.port, others) - sent)
                    series.tokens += stream.tokens
                    if stream.tokens != args.max_tokens:
                        print(f"warning: {series.variant.name} gave {stream.tokens} tokens",
                              file=sys.stderr)  # fmt: skip
                    rate = decode_rate(stream)
                    series.points.append(Point(delay_ms, measured, 1.0 / rate))
                    series.variant.decode.append(rate)
                rates = ", ".join(f"{s.variant.name} {1 / s.points[-1].seconds_per_token:.1f}"
                                  for s in splits)  # fmt: skip
                print(f"round {r + 1}, +{delay_ms} ms one way, RTT {measured * 1e3:.2f} ms: "
                      f"{rates} tok/s", file=sys.stderr, flush=True)  # fmt: skip
            proxy.set_delay(0.0)
            for variant in singles:
                variant.decode.append(decode_rate(variant.run(prompt_for(r), args.max_tokens)))

    report(args, splits, singles, rtts)
    return 0


def require_iptables_or_exit() -> None:
    try:
        require_iptables()
    except BaseException as skipped:  # pytest's Skipped: not an Exception subclass
        raise SystemExit(str(skipped)) from None


def report(
    args: argparse.Namespace,
    splits: list[Series],
    singles: list[Variant],
    rtts: dict[float, list[float]],
) -> None:
    delays = args.delays_ms
    print(f"\nGemma 3 270M Q4_K_M, last {args.remote_layers} of 18 layers on the helper host, "
          f"{args.threads} thread(s) per process, greedy, {args.max_tokens} tokens, "
          f"{args.rounds} rounds\n")  # fmt: skip
    head = " | ".join(f"+{d:g} ms (RTT {statistics.median(rtts[d]) * 1e3:.2f} ms)" for d in delays)
    print(f"| variant | {head} | k (fit) | compute ms/token (fit) | r² | round trips/token "
          "(counted) |")  # fmt: skip
    print("|---|" + "---:|" * (len(delays) + 4))
    fits = {}
    for series in splits:
        fitted = fits[series.variant.name] = fit(series.points)
        cells = " | ".join(
            f"{statistics.median(1 / p.seconds_per_token for p in series.points if p.delay_ms == d):.1f}"  # noqa: E501
            for d in delays
        )
        print(f"| {series.variant.name} | {cells} | {fitted.k:.2f} | "
              f"{fitted.compute_s * 1e3:.2f} | {fitted.r2:.2f} | "
              f"{statistics.median(series.turns_per_token):.2f} |")  # fmt: skip
    for variant in singles:
        rate = statistics.median(variant.decode)
        print(f"| {variant.name} | " + " | ".join([f"{rate:.1f}"] + ["="] * (len(delays) - 1))
              + f" | | {1e3 / rate:.2f} | | |")  # fmt: skip
    print("\ncells: median decode tokens/s; RTT: median of 64-byte TCP round trips through the "
          "proxy from the head host to the helper host")  # fmt: skip
    print("\nggml RPC commands the head sent per token (prompt included):")
    for series in splits:
        per_token = ", ".join(
            f"{name} {count / series.tokens:.2f}" for name, count in series.commands.most_common()
        )
        print(f"- {series.variant.name}: {per_token}")
    result = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rtt_s": {str(d): v for d, v in rtts.items()},
        "splits": {
            s.variant.name: {
                "points": [vars(p) for p in s.points],
                "k": fits[s.variant.name].k,
                "compute_s": fits[s.variant.name].compute_s,
                "r2": fits[s.variant.name].r2,
                "turns_per_token": s.turns_per_token,
                "commands": dict(s.commands),
                "tokens": s.tokens,
            }
            for s in splits
        },
        "single_node_tokens_per_s": {v.name: v.decode for v in singles},
    }
    out = args.workdir / "split_rtt.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\n(JSON: {out})")


if __name__ == "__main__":
    sys.exit(main())
