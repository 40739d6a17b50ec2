"""What the head's relay costs per chunk of a split model's stream (issue 21, deliverable 2).

A split model's head relays every chunk from the child worker that hosts the model
(worker.split.runner.SplitModel) to its own client. Here the head is the real Worker
service and SplitModel (tests/unit/worker/api/serving.py: a real grpc.aio server on
loopback), and the child is a bare Worker service that streams ready-made chunks, so
only the transport and the relay are measured, not a model. Every server and client runs
on one event loop in this one process, so the process's CPU time is the whole cost:

    relay cost per chunk = CPU per chunk streamed through the head
                           - CPU per chunk streamed from the child directly

for N concurrent streams (--streams), with the join token sent per call (what the relay
does) or through channel interceptors (what it did before), over TCP loopback or a Unix
socket (--transports), interleaved over --rounds rounds; medians are reported.

    .venv/bin/python tests/bench/bench_split_relay.py --streams 1,8 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from grpc import aio
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from llamaherd.v1 import generation_pb2 as gen_pb  # noqa: E402
from llamaherd.v1 import worker_pb2_grpc  # noqa: E402

from common.cluster_auth import aio_interceptors, auth_metadata  # noqa: E402
from common.model_settings import ModelConfig  # noqa: E402
from tests.unit.worker.api.serving import serving  # noqa: E402
from worker.models.served import ModelFacts, OnLost, ServedModel  # noqa: E402
from worker.split.runner import SplitModel  # noqa: E402

TOKEN = SecretStr("t" * 32)
SPLIT = {"rpc_servers": ["10.0.0.2:50052"], "tensor_split": [1.0], "n_gpu_layers": 1}
FINAL = gen_pb.GenerationChunk(
    finish_reason=gen_pb.FINISH_REASON_LENGTH,
    usage=gen_pb.Usage(prompt_tokens=9, completion_tokens=1, total_tokens=10),
    timings=gen_pb.Timings(decode_ms=1.0, total_ms=2.0),
)


class Child(worker_pb2_grpc.WorkerServicer):  # type: ignore[misc]
    """Streams `max_tokens` one-token chunks, as a child worker's engine would."""

    async def Generate(
        self, request: gen_pb.GenerateRequest, context: aio.ServicerContext
    ) -> AsyncIterator[gen_pb.GenerationChunk]:
        for i in range(request.sampling.max_tokens - 1):
            yield gen_pb.GenerationChunk(text=" word", token_ids=[1000 + i % 100])
            await asyncio.sleep(0)  # as the engine's steps interleave the streams
        yield FINAL


class InProcessChild:
    """The child's asyncio.subprocess.Process, stood in for: nothing to end."""

    returncode: int | None = None

    def kill(self) -> None:
        self.returncode = -9

    def terminate(self) -> None:
        self.returncode = -15

    async def wait(self) -> int:
        return self.returncode or 0


def relay_to(target: str, auth: str) -> Callable[..., Awaitable[ServedModel]]:
    """The head's split factory: a SplitModel relaying to the child at `target`, sending the
    join token per call ("metadata") or through channel interceptors ("interceptors")."""

    async def start(config: ModelConfig, facts: ModelFacts, on_lost: OnLost) -> ServedModel:
        child: Any = InProcessChild()
        if auth == "interceptors":
            channel = aio.insecure_channel(target, interceptors=aio_interceptors(TOKEN))
            return SplitModel(config, facts, child, channel, on_lost)
        channel = aio.insecure_channel(target)
        return SplitModel(config, facts, child, channel, on_lost, auth_metadata(TOKEN))

    return start


async def per_chunk(stub: Any, model: str, streams: int, chunks: int) -> float:
    """Process CPU µs per chunk of `streams` concurrent streams of `chunks` chunks."""
    request = gen_pb.GenerateRequest(
        model=model, prompt="x", sampling=gen_pb.SamplingParams(max_tokens=chunks)
    )

    async def one() -> int:
        call = stub.Generate(request, metadata=auth_metadata(TOKEN))
        return sum([1 async for _ in call])

    started = time.process_time()
    received = sum(await asyncio.gather(*(one() for _ in range(streams))))
    assert received == streams * chunks, received
    return (time.process_time() - started) / received * 1e6


async def measure(args: argparse.Namespace) -> dict[tuple[str, str, int], list[float]]:
    results: dict[tuple[str, str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-split-relay-") as folder:
        tmp = Path(folder)
        for transport in args.transports:
            child_server = aio.server()
            worker_pb2_grpc.add_WorkerServicer_to_server(Child(), child_server)
            if transport == "unix":
                target = f"unix:{tmp / 'child.sock'}"
                child_server.add_insecure_port(target)
            else:
                target = f"127.0.0.1:{child_server.add_insecure_port('127.0.0.1:0')}"
            await child_server.start()
            direct_channel = aio.insecure_channel(target)
            direct = worker_pb2_grpc.WorkerStub(direct_channel)
            try:
                async with AsyncExitStack() as stack:
                    heads = {
                        auth: await stack.enter_async_context(
                            serving(tmp, {"alias": "s", "n_parallel": 8, **SPLIT},
                                    split=relay_to(target, auth))
                        )
                        for auth in args.auth
                    }  # fmt: skip
                    for streams in args.streams:  # warm-up: connections, code paths
                        await per_chunk(direct, "s", streams, 16)
                        for head in heads.values():
                            await per_chunk(head.stub, "s", streams, 16)
                    for _ in range(args.rounds):
                        for streams in args.streams:
                            base = await per_chunk(direct, "s", streams, args.chunks)
                            results.setdefault((transport, "direct", streams), []).append(base)
                            for auth, head in heads.items():
                                relayed = await per_chunk(head.stub, "s", streams, args.chunks)
                                results.setdefault((transport, auth, streams), []).append(
                                    relayed - base
                                )
            finally:
                await direct_channel.close()
                await child_server.stop(0)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,8", help="concurrent stream counts")
    parser.add_argument("--chunks", type=int, default=1000, help="chunks per stream")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--auth", default="metadata,interceptors",
        help="how the relay sends the join token: metadata, interceptors",
    )  # fmt: skip
    parser.add_argument("--transports", default="tcp,unix", help="the hop: tcp, unix")
    args = parser.parse_args()
    args.streams = [int(n) for n in args.streams.split(",")]
    args.auth = args.auth.split(",")
    args.transports = args.transports.split(",")
    results = asyncio.run(measure(args))
    print(f"\n{args.chunks} chunks per stream, {args.rounds} rounds, CPU µs per chunk (median)\n")
    print("| hop | token sent by | streams | child directly | through the head | relay cost |")
    print("|---|---|---:|---:|---:|---:|")
    for transport in args.transports:
        for auth in args.auth:
            for streams in args.streams:
                base = statistics.median(results[(transport, "direct", streams)])
                cost = statistics.median(results[(transport, auth, streams)])
                print(f"| {transport} | {auth} | {streams} | {base:.0f} | {base + cost:.0f} "
                      f"| {cost:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
