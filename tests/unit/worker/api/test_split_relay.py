"""A split model served through the head's Worker API, relayed to its child worker.

The child is a second in-process Worker service (tests/unit/worker/api/serving.py) and the
head's SplitModel talks to it over a real loopback channel, so the relay, its converters and
its error mapping are the real code; only the child's OS process is stood in for
(InProcessChild, at asyncio's subprocess boundary). Starting a real child, losing helpers
and the output against the real model are in tests/integration/worker/test_split.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from llamaherd.v1 import generation_pb2 as gen_pb

from common.model_settings import ModelConfig
from tests.unit.worker.api.serving import (
    TEMPLATE,
    Worker,
    generate_request,
    refusal,
    serving,
    wait_until,
)
from worker.models.served import ModelFacts, OnLost, ServedModel
from worker.split.runner import SplitModel

SPLIT = {"rpc_servers": ["10.0.0.2:50052"], "tensor_split": [1.0], "n_gpu_layers": 1}


class InProcessChild:
    """Stands in for the child's asyncio.subprocess.Process: the child worker is a server
    in this process, so there is nothing to signal; it only records how it 'ended'."""

    def __init__(self) -> None:
        self.returncode: int | None = None
        self._ended = asyncio.Event()

    def terminate(self) -> None:
        self.end(-15)

    def kill(self) -> None:
        self.end(-9)

    def end(self, code: int) -> None:
        self.returncode = code
        self._ended.set()

    async def wait(self) -> int:
        await self._ended.wait()
        assert self.returncode is not None
        return self.returncode


@asynccontextmanager
async def split_over(
    tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[Worker, Worker, InProcessChild]]:
    """A head serving split model `s` from a child worker serving it locally."""
    process = InProcessChild()

    async with serving(tmp_path, {"alias": "s", **settings}) as child:

        async def start(config: ModelConfig, facts: ModelFacts, on_lost: OnLost) -> ServedModel:
            channel = aio.insecure_channel(child.address)
            return SplitModel(config, facts, process, channel, on_lost)  # type: ignore[arg-type]

        async with serving(tmp_path, {"alias": "s", **settings, **SPLIT}, split=start) as head:
            yield head, child, process


def test_the_head_relays_the_childs_stream_exactly(tmp_path):
    async def scenario() -> None:
        async with split_over(tmp_path, chat_template=TEMPLATE) as (head, child, _):
            backend = child.models.backends["s"]
            backend.script("Once upon", " a time")
            backend.script("[user]Hi[assistant]", "Hello!")
            request = generate_request("Once upon", model="s", temperature=0.0, top_p=0.5)
            relayed = [c async for c in head.stub.Generate(request)]
            direct = [c async for c in child.stub.Generate(request)]
            assert "".join(c.text for c in relayed) == " a time"
            for a, b in zip(relayed, direct, strict=True):
                assert (a.text, list(a.token_ids), a.finish_reason) == (
                    b.text, list(b.token_ids), b.finish_reason,
                )  # fmt: skip
            assert relayed[-1].usage.prompt_tokens == direct[-1].usage.prompt_tokens == 9
            assert relayed[-1].timings.decode_ms > 0  # the child's own timings pass through

            chat = gen_pb.ChatRequest(
                model="s", messages=[gen_pb.ChatMessage(role="user", content="Hi")]
            )
            assert "".join([c.text async for c in head.stub.Chat(chat)]) == "Hello!"
            # The head itself built no model: everything ran in the child.
            assert head.models.built == [] and child.models.built == ["s"]

    asyncio.run(scenario())


def test_n_token_id_prompts_and_logprobs_cross_the_relay(tmp_path):
    async def scenario() -> None:
        async with split_over(tmp_path, n_parallel=2) as (head, _, _):
            request = gen_pb.GenerateRequest(
                model="s", prompt_tokens=list(b"ab"), n=2,
                sampling=gen_pb.SamplingParams(max_tokens=2, top_logprobs=1),
            )  # fmt: skip
            chunks = [c async for c in head.stub.Generate(request)]
            assert sorted({c.index for c in chunks}) == [0, 1]
            for index in (0, 1):
                mine = [c for c in chunks if c.index == index]
                assert "".join(c.text for c in mine) == "cd"
                assert [lp.chosen.token_id for c in mine for lp in c.logprobs] == list(b"cd")

    asyncio.run(scenario())


def test_tokenize_detokenize_and_embed_are_relayed(tmp_path):
    async def scenario() -> None:
        async with split_over(tmp_path) as (head, _, _):
            request = gen_pb.TokenizeRequest(model="s", text="hé", with_pieces=True)
            tokenized = await head.stub.Tokenize(request)
            assert list(tokenized.tokens) == list("hé".encode())
            assert list(tokenized.pieces) == [b"h", b"\xc3", b"\xa9"]
            request = gen_pb.TokenizeRequest(model="s", text="hé", add_special=False)
            assert list((await head.stub.Tokenize(request)).pieces) == []
            detokenized = await head.stub.Detokenize(
                gen_pb.DetokenizeRequest(model="s", tokens=tokenized.tokens)
            )
            assert detokenized.text == "hé"

        async with split_over(tmp_path, embedding=True) as (head, _, _):
            reply = await head.stub.Embed(gen_pb.EmbedRequest(model="s", inputs=["ab"]))
            assert len(reply.embeddings) == 1 and reply.prompt_tokens == 2

    asyncio.run(scenario())


def test_the_childs_refusals_keep_their_status_codes(tmp_path):
    async def scenario() -> None:
        async with split_over(tmp_path, max_queue=0) as (head, child, _):
            # Checked only where the model runs: the head has no context to compare with.
            error = await refusal(head.stub.Generate(generate_request("x" * 200, model="s")))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "n_ctx" in error.details()
            # A split generation model embeds; an empty input is refused where it runs.
            reply = await head.stub.Embed(gen_pb.EmbedRequest(model="s", inputs=["a"]))
            assert len(reply.embeddings) == 1
            error = await refusal(head.stub.Embed(gen_pb.EmbedRequest(model="s", inputs=[""])))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "inputs[0] is empty" in error.details()
            request = gen_pb.DetokenizeRequest(model="s", tokens=[9999])
            error = await refusal(head.stub.Detokenize(request))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

            child.models.backends["s"].step_delay = 0.005
            running = head.stub.Generate(generate_request("ab", model="s", max_tokens=100))
            await running.read()
            error = await refusal(head.stub.Generate(generate_request("cd", model="s")))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_queue=0" in error.details()
            running.cancel()

    asyncio.run(scenario())


def test_a_client_leaving_the_head_stops_the_childs_job(tmp_path):
    async def scenario() -> None:
        async with split_over(tmp_path) as (head, child, _):
            backend = child.models.backends["s"]
            backend.step_delay = 0.005
            call = head.stub.Generate(generate_request("ab", model="s", max_tokens=120))
            for _ in range(3):
                await call.read()
            call.cancel()
            await wait_until(lambda: child.registry.info("s").engine.active == 0)
            assert len(backend.cells[0]) < 2 + 120

    asyncio.run(scenario())


def test_a_child_that_is_gone_turns_requests_into_unavailable(tmp_path):
    async def scenario() -> None:
        async with split_over(tmp_path) as (head, child, process):
            await child.server.stop(0)  # the child is gone ...
            process.end(-9)  # ... and its process has exited
            error = await refusal(head.stub.Generate(generate_request("ab", model="s")))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "lost its process" in error.details()

    asyncio.run(scenario())
