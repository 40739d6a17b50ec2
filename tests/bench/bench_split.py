"""A model split across two hosts, side by side: llamaherd vs. llama.cpp's own RPC split.

Two network namespaces stand for two hosts (tests.support.netns; needs root). The same
layer split of the embedded Gemma 3 270M Q4_K_M (--remote-layers of its 19 offloadable
layers on the helper's CPU, as -ngl counts them: 9 = the last 8 of its 18 blocks and the
output layer) runs

  (a) through llamaherd: a worker on each host; the helper lends its CPU (StartRpcServer,
      behind its head-only guard: the kernel socket filter, or with --guards forwarder the
      userspace forwarder; with --guards auto,forwarder one helper host for each, side by
      side), the head loads the model with rpc_servers, and the client streams from the
      head's Worker API;
  (b) through llama.cpp: `rpc-server` on the helper, `llama-server --rpc ... -ngl N -ts 1`
      on the head, streaming /completion;

plus both on the head alone. Each process gets --threads threads (1 by default: one core
per "host" on a 2-core machine). Rounds rotate the order; each request has a fresh prompt
(no prefix cache helps either side) and decodes exactly --max-tokens tokens greedily.
Reported: medians of decode tokens/s (after the first token) and TTFT, and their ratio to
llama.cpp's split.

With --streams 1,4,8, every round also runs waves of N concurrent streams on each variant
(both sides get max(--streams) slots: n_parallel and llama-server's -np, n_ctx each), and
reports the medians of the waves' aggregate decode tokens/s (every stream's tokens after
its first, over the time from the wave's first first token to its last token), steady
decode tokens/s (the tokens after the wave's last first token, over the time from it to the
last token: the batched decode step alone, where the aggregate rate also charges a stream
that started early for the other prompts' prefill) and end-to-end tokens/s (all tokens over
the wave's wall time). For llamaherd's splits it also
reports the CPU time per token of the head worker process, which only relays chunks from
the child process hosting the model (worker.split.runner), and of that child.

--peer-args "ARGS" adds one more llama.cpp split, llama-server with those extra arguments,
measured in the same rounds (interleaved), and a ratio column against it beside the one
against llama-server's defaults. What it is for: with its defaults, llama-server spends a
split's prompt phase reading KV cache back from the helper, one synchronous GET_TENSOR round
trip per row of V (V is stored transposed with flash attention off, 256 rows a layer): a
context checkpoint of the sliding-window layers at the end of every prompt
(--ctx-checkpoints, Gemma 3 has SWA layers) and saves of slots' previous prompts to its RAM
prompt cache (--cache-ram, --cache-idle-slots). llamaherd keeps neither, and this
benchmark's fresh prompts gain nothing from them, so `--peer-args "--ctx-checkpoints 0
--cache-ram 0"` is llama-server doing the same work as llamaherd; its defaults are what a
user gets.

Everything measured also goes to --workdir/split.json.

Peers are built in a temporary folder from the sources llama-cpp-python vendors, never
committed (see tests/bench/bench_batching.py for the download):

    cmake -S /tmp/peer/llama_cpp_python-0.3.36/vendor/llama.cpp -B /tmp/peer/build \\
        -DCMAKE_BUILD_TYPE=Release $(deploy/llama-cpp/cmake-args.sh) -DLLAMA_CURL=OFF
    cmake --build /tmp/peer/build --target llama-server ggml-rpc-server -j

    .venv/bin/python tests/bench/bench_split.py --llama-server /tmp/peer/build/bin/llama-server \\
        --rpc-server /tmp/peer/build/bin/ggml-rpc-server [--rounds 10] \\
        [--streams 1,4,8] [--peer-args "--ctx-checkpoints 0 --cache-ram 0"]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

from bench_batching import EOG_TOKENS, Stream, _sse, _timed, _wait_http  # noqa: E402
from llamaherd.v1 import generation_pb2 as gen_pb  # noqa: E402
from llamaherd.v1 import worker_pb2 as w_pb  # noqa: E402
from llamaherd.v1 import worker_pb2_grpc  # noqa: E402
from support.auth import use_run_token, worker_channel  # noqa: E402
from support.netns import Host, network  # noqa: E402
from support.worker_process import start_worker  # noqa: E402

from worker.models.builtin import resolve  # noqa: E402

N_CTX = 1024
RPC_PORT = 50100
HTTP_PORT = 8090
PEER_SPLIT = "llama.cpp RPC split"  # the reference: llama-server with its defaults
WORDS = "amber basil cedar delta ember fjord grove harbor iris juniper kestrel lagoon".split()


@dataclass
class Variant:
    name: str
    run: Callable[[str, int], Stream]
    decode: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    # The processes whose CPU time is reported per token: llamaherd's head worker (the
    # relay) and, when it hosts a split model, its children (the model itself).
    pid: int | None = None
    idle_cpu: tuple[float, float] = (0.0, 0.0)  # CPU s/s of pid and its children at rest
    # Per stream count N>1: each wave's aggregate decode and end-to-end tokens/s, TTFTs.
    waves: dict[int, list[float]] = field(default_factory=dict)
    steady: dict[int, list[float]] = field(default_factory=dict)
    e2e: dict[int, list[float]] = field(default_factory=dict)
    wave_ttft: dict[int, list[float]] = field(default_factory=dict)
    # Per stream count: CPU µs per token of the head process and of its children.
    head_cpu: dict[int, list[float]] = field(default_factory=dict)
    child_cpu: dict[int, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Wave:
    """N concurrent streams started together."""

    streams: list[Stream]
    decode_rate: float  # every stream's tokens after its first / first first token to last
    steady_rate: float  # tokens after the last first token / from it to the last token
    e2e_rate: float  # all tokens / the wave's wall time


def prompt_for(n: int) -> str:
    words = [WORDS[(n * 7 + i * 5) % len(WORDS)] for i in range(24)]
    return f"Story {n}: " + " ".join(words)


def decode_rate(stream: Stream) -> float:
    seconds = sum(stream.gaps_ms) / 1e3
    return len(stream.gaps_ms) / seconds if seconds > 0 else float("nan")


def wave(run: Callable[[str, int], Stream], prompts: list[str], max_tokens: int) -> Wave:
    """Runs one stream per prompt at once (a barrier releases them together)."""
    barrier = threading.Barrier(len(prompts))

    def one(prompt: str) -> tuple[float, Stream]:
        barrier.wait()
        started = time.perf_counter()
        return started, run(prompt, max_tokens)

    with ThreadPoolExecutor(len(prompts)) as pool:
        timed = list(pool.map(one, prompts))
    begun = min(start for start, _ in timed)
    firsts = [start + s.ttft_ms / 1e3 for start, s in timed]
    ends = [first + sum(s.gaps_ms) / 1e3 for first, (_, s) in zip(firsts, timed, strict=True)]
    streams = [s for _, s in timed]
    decoded = sum(len(s.gaps_ms) for s in streams)
    window = max(ends) - min(firsts)
    steady_from = max(firsts)
    steady = sum(
        sum(
            1
            for at in itertools.accumulate(s.gaps_ms, initial=0.0)
            if first + at / 1e3 > steady_from
        )
        for first, s in zip(firsts, streams, strict=True)
    )
    steady_window = max(ends) - steady_from
    return Wave(
        streams,
        decoded / window if window > 0 else float("nan"),
        steady / steady_window if steady_window > 0 else float("nan"),
        sum(s.tokens for s in streams) / (max(ends) - begun),
    )


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by process `pid` and by its live children."""

    def of(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return of(pid), sum(of(c) for c in children)


# ---- llamaherd ---------------------------------------------------------------------------
def llamaherd_variants(
    stack: ExitStack,
    workdir: Path,
    head: Host,
    helpers: dict[str, Host],
    remote: int,
    threads: int,
    slots: int = 1,
) -> list[Variant]:
    model = {"path": "builtin:gemma-3-270m", "n_ctx": N_CTX, "n_parallel": slots,
             "n_threads": threads, "flash_attn": "off"}  # fmt: skip
    config = {"models": [{"alias": "single", **model}], "log_level": "WARNING",
              "reference_speed": False}  # fmt: skip
    use_run_token()  # workers beyond loopback need one; they inherit it
    head_worker = start_worker(workdir, config, name="head", host=head)
    stack.callback(head_worker.stop)
    head_stub = worker_pb2_grpc.WorkerStub(worker_channel(head_worker.address))
    splits = []
    for guard, helper in helpers.items():
        # The helper serves the default model of its own, idle, as it would in a cluster.
        helper_worker = start_worker(
            workdir, {"log_level": "WARNING", "reference_speed": False}, "--rpc-guard", guard,
            name=f"helper-{guard}", host=helper,
        )  # fmt: skip
        stack.callback(helper_worker.stop)
        helper_stub = worker_pb2_grpc.WorkerStub(worker_channel(helper_worker.address))
        lease = helper_stub.StartRpcServer(
            w_pb.StartRpcServerRequest(
                lease_id="bench@head", head_host=head.address, reserve_bytes=200 * 1024**2,
                n_threads=threads,
            ),
            timeout=60,
        )  # fmt: skip
        alias = f"split-{lease.guard}"
        spec = w_pb.ModelSpec(alias=alias, n_gpu_layers=remote, rpc_servers=[lease.endpoint],
                              tensor_split=[1.0], **model)  # fmt: skip
        head_stub.LoadModel(w_pb.LoadModelRequest(spec=spec), timeout=300)
        splits.append(alias)
    # The split's child must batch as many streams as llama-server's -np (its ListModels,
    # relayed by the head, says how many slots its engine has).
    time.sleep(2.0)  # the head refreshes the child's figures every second
    for info in head_stub.ListModels(w_pb.ListModelsRequest(), timeout=10).models:
        if info.slots_total != slots:
            raise SystemExit(f"{info.alias} has {info.slots_total} slots, not {slots}")

    def runner(alias: str) -> Callable[[str, int], Stream]:
        def run(prompt: str, max_tokens: int) -> Stream:
            request = gen_pb.GenerateRequest(
                model=alias, prompt=prompt,
                sampling=gen_pb.SamplingParams(
                    temperature=0, max_tokens=max_tokens,
                    logit_bias={t: -100 for t in EOG_TOKENS},
                ),
            )  # fmt: skip
            started = time.perf_counter()
            chunks = head_stub.Generate(request, timeout=600)
            return _timed(((c.text, len(c.token_ids)) for c in chunks), started)

        return run

    pid = head_worker.process.pid  # `ip netns exec` execs the worker: the same process
    return [*(Variant(f"llamaherd {alias.replace('-', ' (')})", runner(alias), pid=pid)
              for alias in splits),
            Variant("llamaherd single node", runner("single"))]  # fmt: skip


# ---- llama.cpp -----------------------------------------------------------------------------
def llama_cpp_variants(
    stack: ExitStack,
    args: argparse.Namespace,
    head: Host,
    helper: Host,
    slots: int = 1,
    peer_args: Sequence[str] = (),
) -> list[Variant]:
    """llama-server's RPC split (its defaults), one more split per `peer_args` entry (extra
    llama-server arguments, e.g. "--ctx-checkpoints 0"), and llama-server on the head alone.

    ggml's rpc-server serves one client at a time, so each split gets an rpc-server of its
    own on the helper host (RPC_PORT, RPC_PORT + 1, ...); an idle one costs no CPU."""
    model = resolve("builtin:gemma-3-270m")
    threads = str(args.threads)
    splits: list[tuple[str, list[str]]] = []
    for i, extra_args in enumerate(["", *peer_args]):
        port = RPC_PORT + i
        rpc_log = (args.workdir / f"rpc-server-{i}.log").open("wb")
        stack.callback(rpc_log.close)
        rpc = subprocess.Popen(
            [*helper.exec_prefix(), str(args.rpc_server), "-H", helper.address,
             "-p", str(port), "-t", threads],
            stdout=rpc_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.callback(_stop, rpc)
        name = f"{PEER_SPLIT}, {extra_args}" if extra_args else PEER_SPLIT
        remote = ["--rpc", f"{helper.address}:{port}", "-ngl", str(args.remote_layers), "-ts", "1"]
        splits.append((name, [*remote, *shlex.split(extra_args)]))
    time.sleep(1.0)
    # -c is the context of all slots together: N_CTX each, as llamaherd's n_ctx.
    common = ["-m", str(model), "-c", str(N_CTX * slots), "-np", str(slots), "-t", threads,
              "-tb", threads, "-fa", "off", "--no-webui", "--host", head.address]  # fmt: skip
    variants = []
    for offset, (name, extra) in enumerate([*splits, ("llama.cpp single node", ["-ngl", "0"])]):
        port = HTTP_PORT + offset
        log = args.workdir / f"llama-server-{offset}.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [*head.exec_prefix(), str(args.llama_server), *common, "--port", str(port),
                 *extra],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        stack.callback(_stop, server)
        base = f"http://{head.address}:{port}"
        _wait_http(f"{base}/health", server, log, 300)
        http = httpx.Client(base_url=base, timeout=600)
        stack.callback(http.close)
        variants.append(Variant(name, _llama_server_run(http)))
    return variants


def _llama_server_run(http: httpx.Client) -> Callable[[str, int], Stream]:
    def run(prompt: str, max_tokens: int) -> Stream:
        body = {"prompt": prompt, "n_predict": max_tokens, "temperature": 0, "stream": True,
                "ignore_eos": True, "cache_prompt": False}  # fmt: skip
        started = time.perf_counter()
        events: Iterator[dict[str, object]] = _sse(http, "/completion", body)
        return _timed(((str(e.get("content", "")), 0 if e.get("stop") else 1) for e in events),
                      started)  # fmt: skip

    return run


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def idle_cpu(pid: int, seconds: float = 5.0) -> tuple[float, float]:
    """CPU seconds per second that process `pid` and its children use with nothing to do."""
    head, child = cpu_seconds(pid)
    time.sleep(seconds)
    head_after, child_after = cpu_seconds(pid)
    return (head_after - head) / seconds, (child_after - child) / seconds


def parse_streams(text: str) -> list[int]:
    """--streams: comma-separated positive stream counts, e.g. 1,4,8."""
    try:
        counts = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--streams takes counts like 1,4,8, not {text!r}"
        ) from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"--streams counts must be at least 1, got {text!r}")
    return counts


def measure_round(variants: list[Variant], r: int, streams: list[int], max_tokens: int) -> None:
    """One round: every stream count, every variant, in an order that rotates by round."""
    order = variants[r % len(variants) :] + variants[: r % len(variants)]
    for n in streams:
        prompts = [prompt_for(1000 * n + r * n + i) for i in range(n)]
        for variant in order:
            before = cpu_seconds(variant.pid) if variant.pid else None
            started = time.perf_counter()
            done = wave(variant.run, prompts, max_tokens)
            elapsed = time.perf_counter() - started
            tokens = sum(s.tokens for s in done.streams)
            if before is not None and variant.pid is not None:
                # Less what the processes burn at rest (heartbeats, telemetry, probes).
                head, child = cpu_seconds(variant.pid)
                head -= before[0] + variant.idle_cpu[0] * elapsed
                child -= before[1] + variant.idle_cpu[1] * elapsed
                variant.head_cpu.setdefault(n, []).append(head / tokens * 1e6)
                variant.child_cpu.setdefault(n, []).append(child / tokens * 1e6)
            for stream in done.streams:
                if stream.tokens != max_tokens:
                    print(f"warning: {variant.name} gave {stream.tokens} tokens", file=sys.stderr)
            if n == 1:
                stream = done.streams[0]
                variant.decode.append(decode_rate(stream))
                variant.ttft.append(stream.ttft_ms)
                variant.texts.append(stream.text)
            else:
                variant.waves.setdefault(n, []).append(done.decode_rate)
                variant.steady.setdefault(n, []).append(done.steady_rate)
                variant.e2e.setdefault(n, []).append(done.e2e_rate)
                variant.wave_ttft.setdefault(n, []).extend(s.ttft_ms for s in done.streams)
        rates = ", ".join(
            f"{v.name} {v.decode[-1] if n == 1 else v.waves[n][-1]:.1f}" for v in variants
        )
        print(f"round {r + 1}, {n} stream(s), decode tok/s: {rates}", file=sys.stderr, flush=True)


def references(variants: list[Variant]) -> list[Variant]:
    """The llama.cpp RPC splits the ratios are taken against: llama-server with its
    defaults first, then one per --peer-args."""
    return [v for v in variants if v.name.startswith(PEER_SPLIT)]


def _ratio_heads(refs: list[Variant]) -> str:
    return " | ".join("vs llama.cpp RPC" + v.name.removeprefix(PEER_SPLIT) for v in refs)


def _ratios(value: float, of: list[float]) -> str:
    return " | ".join(f"{value / ref:.2f}x" for ref in of)


def report(variants: list[Variant], args: argparse.Namespace, slots: int) -> None:
    by_name = {v.name: v for v in variants}
    refs = references(variants)
    columns = "---:|" * len(refs)
    print(f"\nGemma 3 270M Q4_K_M, {args.remote_layers} of 19 offloadable layers (-ngl) on "
          f"the helper host, "
          f"{args.threads} thread(s) per process, {slots} slot(s) per server, greedy, "
          f"{args.max_tokens} tokens per stream, {args.rounds} rounds\n")  # fmt: skip
    if 1 in args.streams:
        ref_decode = [statistics.median(v.decode) for v in refs]
        ref_ttft = [statistics.median(v.ttft) for v in refs]
        print(f"| variant | decode tok/s (median) | {_ratio_heads(refs)} | TTFT ms (median) "
              f"| {_ratio_heads(refs)} |")  # fmt: skip
        print(f"|---|---:|{columns}---:|{columns}")
        for v in variants:
            decode, ttft = statistics.median(v.decode), statistics.median(v.ttft)
            print(f"| {v.name} | {decode:.1f} | {_ratios(decode, ref_decode)} | {ttft:.0f} "
                  f"| {_ratios(ttft, ref_ttft)} |")  # fmt: skip
    many = [n for n in args.streams if n > 1]
    if many:
        heads = _ratio_heads(refs)
        print(f"\n| variant | streams | aggregate decode tok/s (median) | {heads} "
              f"| steady decode tok/s (median) | {heads} "
              f"| end-to-end tok/s (median) | {heads} | TTFT ms (median) |")  # fmt: skip
        print(f"|---|---:|---:|{columns}---:|{columns}---:|{columns}---:|")
        for n in many:
            ref = [statistics.median(v.waves[n]) for v in refs]
            ref_steady = [statistics.median(v.steady[n]) for v in refs]
            ref_e2e = [statistics.median(v.e2e[n]) for v in refs]
            for v in variants:
                decode, e2e = statistics.median(v.waves[n]), statistics.median(v.e2e[n])
                steady = statistics.median(v.steady[n])
                print(
                    f"| {v.name} | {n} | {decode:.1f} | {_ratios(decode, ref)} "
                    f"| {steady:.1f} | {_ratios(steady, ref_steady)} | {e2e:.1f} "
                    f"| {_ratios(e2e, ref_e2e)} | {statistics.median(v.wave_ttft[n]):.0f} |"
                )
    relayed = [v for v in variants if v.head_cpu]
    if relayed:
        print("\n| variant | streams | head worker (relay) CPU µs/token | child (model) CPU "
              "µs/token |")  # fmt: skip
        print("|---|---:|---:|---:|")
        for v in relayed:
            for n in args.streams:
                print(
                    f"| {v.name} | {n} | {statistics.median(v.head_cpu[n]):.0f} "
                    f"| {statistics.median(v.child_cpu[n]):.0f} |"
                )
    if 1 in args.streams:
        single = by_name["llamaherd single node"].texts
        for v in variants:
            if v.name.startswith("llamaherd split"):
                same = sum(a == b for a, b in zip(v.texts, single, strict=True))
                print(f"\n{v.name} output equal to its single-node output: {same}/{args.rounds}")
    out = args.workdir / "split.json"
    out.write_text(json.dumps(as_json(variants, args), indent=1))
    print(f"\n(JSON: {out})")


def as_json(variants: list[Variant], args: argparse.Namespace) -> dict[str, object]:
    """Every measurement of the run, per variant (what the tables above are medians of)."""
    return {
        "command": " ".join(sys.argv),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_average": os.getloadavg(),
        "variants": {
            v.name: {
                "decode_tok_s": v.decode, "ttft_ms": v.ttft,
                "waves": {
                    str(n): {"decode_tok_s": v.waves[n], "steady_tok_s": v.steady[n],
                             "e2e_tok_s": v.e2e[n], "ttft_ms": v.wave_ttft[n]}
                    for n in v.waves
                },
                "head_cpu_us_per_token": {str(n): c for n, c in v.head_cpu.items()},
                "child_cpu_us_per_token": {str(n): c for n, c in v.child_cpu.items()},
            }
            for v in variants
        },
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", type=Path, required=True)
    parser.add_argument("--rpc-server", type=Path, required=True)
    parser.add_argument("--remote-layers", type=int, default=9, help="layers on the helper")
    parser.add_argument("--threads", type=int, default=1, help="per process")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--streams", type=parse_streams, default=[1],
        help="concurrent stream counts, comma-separated (e.g. 1,4,8); every server gets "
        "the largest count of slots",
    )  # fmt: skip
    parser.add_argument(
        "--guards", default="auto",
        help="the helper's rpc_guard setting(s), comma-separated: auto, forwarder, or both "
        "(one helper host each, side by side)",
    )  # fmt: skip
    parser.add_argument(
        "--peer-args", action="append", default=[], metavar="ARGS",
        help="one more llama.cpp RPC split, with these extra llama-server arguments (e.g. "
        "\"--ctx-checkpoints 0 --cache-ram 0\"), measured beside the default one; repeatable",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamaherd-bench-split"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    slots = max(args.streams)

    guards = args.guards.split(",")
    with network(1 + len(guards)) as net, ExitStack() as stack:
        head, *helpers = net.hosts
        print("starting llamaherd and llama.cpp on namespaced hosts ...", file=sys.stderr)
        variants = llama_cpp_variants(stack, args, head, helpers[0], slots, args.peer_args)
        variants += llamaherd_variants(
            stack, args.workdir, head, dict(zip(guards, helpers, strict=True)),
            args.remote_layers, args.threads, slots,
        )  # fmt: skip
        for variant in variants:  # warm-up: page cache, graphs, connections
            wave(variant.run, [prompt_for(-1 - i) for i in range(slots)], 8)
        for variant in variants:
            if variant.pid is not None:
                variant.idle_cpu = idle_cpu(variant.pid)
        for r in range(args.rounds):
            measure_round(variants, r, args.streams, args.max_tokens)

    report(variants, args, slots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
