"""A model split across two hosts, side by side: llamaherd vs. llama.cpp's own RPC split.

Two network namespaces stand for two hosts (tests.support.netns; needs root). The same
layer split of the embedded Gemma 3 270M Q4_K_M (the last --remote-layers of its 18 layers
on the helper's CPU) runs

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

Peers are built in a temporary folder from the sources llama-cpp-python vendors, never
committed (see tests/bench/bench_batching.py for the download):

    cmake -S /tmp/peer/llama_cpp_python-0.3.36/vendor/llama.cpp -B /tmp/peer/build \\
        -DCMAKE_BUILD_TYPE=Release $(deploy/llama-cpp/cmake-args.sh) -DLLAMA_CURL=OFF
    cmake --build /tmp/peer/build --target llama-server ggml-rpc-server -j

    .venv/bin/python tests/bench/bench_split.py --llama-server /tmp/peer/build/bin/llama-server \\
        --rpc-server /tmp/peer/build/bin/ggml-rpc-server [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
WORDS = "amber basil cedar delta ember fjord grove harbor iris juniper kestrel lagoon".split()


@dataclass
class Variant:
    name: str
    run: Callable[[str, int], Stream]
    decode: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


def prompt_for(n: int) -> str:
    words = [WORDS[(n * 7 + i * 5) % len(WORDS)] for i in range(24)]
    return f"Story {n}: " + " ".join(words)


def decode_rate(stream: Stream) -> float:
    seconds = sum(stream.gaps_ms) / 1e3
    return len(stream.gaps_ms) / seconds if seconds > 0 else float("nan")


# ---- llamaherd ---------------------------------------------------------------------------
def llamaherd_variants(
    stack: ExitStack,
    workdir: Path,
    head: Host,
    helpers: dict[str, Host],
    remote: int,
    threads: int,
) -> list[Variant]:
    model = {"path": "builtin:gemma-3-270m", "n_ctx": N_CTX, "n_parallel": 1,
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

    return [*(Variant(f"llamaherd {alias.replace('-', ' (')})", runner(alias)) for alias in splits),
            Variant("llamaherd single node", runner("single"))]  # fmt: skip


# ---- llama.cpp -----------------------------------------------------------------------------
def llama_cpp_variants(
    stack: ExitStack, args: argparse.Namespace, head: Host, helper: Host
) -> list[Variant]:
    model = resolve("builtin:gemma-3-270m")
    rpc_log = (args.workdir / "rpc-server.log").open("wb")
    rpc = subprocess.Popen(
        [*helper.exec_prefix(), str(args.rpc_server), "-H", helper.address,
         "-p", str(RPC_PORT), "-t", str(args.threads)],
        stdout=rpc_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    stack.callback(_stop, rpc)
    time.sleep(1.0)
    threads = str(args.threads)
    common = ["-m", str(model), "-c", str(N_CTX), "-np", "1", "-t", threads, "-tb", threads,
              "-fa", "off", "--no-webui", "--host", head.address]  # fmt: skip
    variants = []
    for offset, (name, extra) in enumerate([
        ("llama.cpp RPC split", ["--rpc", f"{helper.address}:{RPC_PORT}",
                                 "-ngl", str(args.remote_layers), "-ts", "1"]),
        ("llama.cpp single node", ["-ngl", "0"]),
    ]):  # fmt: skip
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", type=Path, required=True)
    parser.add_argument("--rpc-server", type=Path, required=True)
    parser.add_argument("--remote-layers", type=int, default=9, help="layers on the helper")
    parser.add_argument("--threads", type=int, default=1, help="per process")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--guards", default="auto",
        help="the helper's rpc_guard setting(s), comma-separated: auto, forwarder, or both "
        "(one helper host each, side by side)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamaherd-bench-split"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    guards = args.guards.split(",")
    with network(1 + len(guards)) as net, ExitStack() as stack:
        head, *helpers = net.hosts
        print("starting llamaherd and llama.cpp on namespaced hosts ...", file=sys.stderr)
        variants = llama_cpp_variants(stack, args, head, helpers[0])
        variants += llamaherd_variants(
            stack, args.workdir, head, dict(zip(guards, helpers, strict=True)),
            args.remote_layers, args.threads,
        )  # fmt: skip
        for variant in variants:  # warm-up: page cache, graphs, connections
            variant.run(prompt_for(-1), 8)
        for r in range(args.rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for variant in order:
                stream = variant.run(prompt_for(r), args.max_tokens)
                if stream.tokens != args.max_tokens:
                    print(f"warning: {variant.name} gave {stream.tokens} tokens", file=sys.stderr)
                variant.decode.append(decode_rate(stream))
                variant.ttft.append(stream.ttft_ms)
                variant.texts.append(stream.text)
            rates = ", ".join(f"{v.name} {v.decode[-1]:.1f} tok/s" for v in variants)
            print(f"round {r + 1}: {rates}", file=sys.stderr, flush=True)

    by_name = {v.name: v for v in variants}
    reference = by_name["llama.cpp RPC split"]
    ref_decode = statistics.median(reference.decode)
    ref_ttft = statistics.median(reference.ttft)
    print(f"\nGemma 3 270M Q4_K_M, last {args.remote_layers} of 18 layers on the helper host, "
          f"{args.threads} thread(s) per process, greedy, {args.max_tokens} tokens, "
          f"{args.rounds} rounds\n")  # fmt: skip
    print("| variant | decode tok/s (median) | vs llama.cpp RPC | TTFT ms (median) "
          "| vs llama.cpp RPC |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for v in variants:
        decode, ttft = statistics.median(v.decode), statistics.median(v.ttft)
        print(f"| {v.name} | {decode:.1f} | {decode / ref_decode:.2f}x | {ttft:.0f} "
              f"| {ttft / ref_ttft:.2f}x |")  # fmt: skip
    single = by_name["llamaherd single node"].texts
    for v in variants:
        if v.name.startswith("llamaherd split"):
            same = sum(a == b for a, b in zip(v.texts, single, strict=True))
            print(f"\n{v.name} output equal to its single-node output: {same}/{args.rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
