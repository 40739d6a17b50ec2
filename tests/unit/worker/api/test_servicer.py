"""The Worker gRPC service over a real in-process grpc.aio server on loopback, with the
registry building real LocalModels over the fake llama.cpp backend: requests, streams,
status codes and cancellation as a client sees them, in milliseconds. The same paths
against the real model are in tests/integration/worker/."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from llamaherd.v1 import generation_pb2 as gen_pb

from tests.unit.worker.api.serving import (
    TEMPLATE,
    generate_request,
    refusal,
    rest,
    serving,
    wait_until,
)


# ---- streams -----------------------------------------------------------------------------
def test_generate_streams_the_reply_then_its_accounting(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m"}) as worker:
            worker.models.backends["m"].script("Once upon", " a time")
            chunks = [c async for c in worker.stub.Generate(generate_request("Once upon"))]
            assert "".join(c.text for c in chunks) == " a time"
            final = chunks[-1]
            assert final.finish_reason == gen_pb.FINISH_REASON_STOP
            assert all(c.finish_reason == gen_pb.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])
            assert final.usage.prompt_tokens == len("Once upon")
            assert final.usage.completion_tokens == len(" a time")  # the EOS is not counted
            assert [t for c in chunks for t in c.token_ids] == list(b" a time")

    asyncio.run(scenario())


def test_generate_n_sequences_from_token_ids_with_logprobs(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m", "n_parallel": 2}) as worker:
            request = gen_pb.GenerateRequest(
                model="m", prompt_tokens=list(b"ab"), n=2,
                sampling=gen_pb.SamplingParams(max_tokens=3, top_logprobs=1),
            )  # fmt: skip
            chunks = [c async for c in worker.stub.Generate(request)]
            for index in (0, 1):
                mine = [c for c in chunks if c.index == index]
                assert "".join(c.text for c in mine) == "cde"
                assert mine[-1].finish_reason == gen_pb.FINISH_REASON_LENGTH
                assert mine[-1].usage.prompt_tokens == 2
                logprobs = [lp for c in mine for lp in c.logprobs]
                assert [lp.chosen.token_id for lp in logprobs] == list(b"cde")
                assert all(len(lp.top) == 1 for lp in logprobs)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("seed", "seeds"), [(5, [5, 6, 7]), (0xFFFFFFFE, [0xFFFFFFFE, 0, 1]), (None, [None] * 3)]
)
def test_each_of_n_sequences_gets_its_own_sampler_seeded_seed_plus_i(tmp_path, seed, seeds):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m", "n_parallel": 3}) as worker:
            sampling = gen_pb.SamplingParams(max_tokens=1, seed=seed)
            request = gen_pb.GenerateRequest(model="m", prompt="ab", n=3, sampling=sampling)
            assert len([c async for c in worker.stub.Generate(request)]) == 3
            assert [p.seed for p in worker.models.backends["m"].sampled_with] == seeds

    asyncio.run(scenario())


def test_generate_stops_at_max_tokens_with_finish_length(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m"}) as worker:
            chunks = [c async for c in worker.stub.Generate(generate_request("ab", max_tokens=3))]
            assert "".join(c.text for c in chunks) == "cde"
            assert chunks[-1].finish_reason == gen_pb.FINISH_REASON_LENGTH

    asyncio.run(scenario())


def test_chat_renders_the_messages_with_the_models_template(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m", "chat_template": TEMPLATE}) as worker:
            worker.models.backends["m"].script("[system]Be brief.[user]Hi[assistant]", "Hello!")
            request = gen_pb.ChatRequest(
                model="m",
                messages=[
                    gen_pb.ChatMessage(role="system", content="Be brief."),
                    gen_pb.ChatMessage(role="user", content="Hi"),
                ],
            )
            chunks = [c async for c in worker.stub.Chat(request)]
            assert "".join(c.text for c in chunks) == "Hello!"
            assert chunks[-1].finish_reason == gen_pb.FINISH_REASON_STOP

    asyncio.run(scenario())


def test_chat_with_n_replies_once_per_sequence(tmp_path):
    async def scenario() -> None:
        config = {"alias": "m", "chat_template": TEMPLATE, "n_parallel": 3}
        async with serving(tmp_path, config) as worker:
            worker.models.backends["m"].script("[user]Hi[assistant]", "Hello!")
            request = gen_pb.ChatRequest(
                model="m", messages=[gen_pb.ChatMessage(role="user", content="Hi")], n=3
            )
            chunks = [c async for c in worker.stub.Chat(request)]
            for index in range(3):
                mine = [c for c in chunks if c.index == index]
                assert "".join(c.text for c in mine) == "Hello!"
                assert mine[-1].finish_reason == gen_pb.FINISH_REASON_STOP
            error = await refusal(worker.stub.Chat(gen_pb.ChatRequest(model="m", n=4)))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "n = 4 sequences need 4 slots" in error.details()

    asyncio.run(scenario())


def test_tokenize_and_detokenize_round_trip_with_pieces(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m"}) as worker:
            request = gen_pb.TokenizeRequest(model="m", text="héllo", with_pieces=True)
            tokenized = await worker.stub.Tokenize(request)
            assert list(tokenized.tokens) == list("héllo".encode())
            assert b"".join(tokenized.pieces) == "héllo".encode()
            detokenized = await worker.stub.Detokenize(
                gen_pb.DetokenizeRequest(model="m", tokens=tokenized.tokens)
            )
            assert detokenized.text == "héllo"
            plain = await worker.stub.Tokenize(gen_pb.TokenizeRequest(model="m", text="hi"))
            assert list(plain.pieces) == []

    asyncio.run(scenario())


def test_embed_returns_one_vector_per_input(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "e", "embedding": True}) as worker:
            request = gen_pb.EmbedRequest(model="e", inputs=["ab", "abc"], normalize=False)
            reply = await worker.stub.Embed(request)
            # The fake pools a sequence into [length, sum of bytes, 1, 0].
            assert [list(e.values) for e in reply.embeddings] == [
                [2.0, float(sum(b"ab")), 1.0, 0.0],
                [3.0, float(sum(b"abc")), 1.0, 0.0],
            ]
            assert reply.prompt_tokens == 5

    asyncio.run(scenario())


# ---- status codes ------------------------------------------------------------------------
def test_an_unknown_model_is_not_found_naming_the_loaded_ones(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m"}, {"alias": "n"}) as worker:
            error = await refusal(worker.stub.Generate(generate_request("hi", model="x")))
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert "loaded: 'm', 'n'" in error.details()
            error = await refusal(worker.stub.Tokenize(gen_pb.TokenizeRequest(model="x")))
            assert error.code() == grpc.StatusCode.NOT_FOUND

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (generate_request("hi", temperature=3.0), "sampling.temperature"),
        (generate_request("hi", model=""), "model is empty"),
        (generate_request(""), "prompt is empty"),
        (generate_request("x" * 200), "n_ctx"),
        (
            gen_pb.GenerateRequest(
                model="m", prompt="hi", constraint=gen_pb.OutputConstraint(json_schema="{")
            ),
            "json_schema",
        ),
        (generate_request("hi", top_logprobs=50), "sampling.top_logprobs must be in [0, 20]"),
        (gen_pb.GenerateRequest(model="m", prompt="hi", n=1000), "n must be in [1, 16]"),
        (gen_pb.GenerateRequest(model="m", prompt="hi", n=2), "n = 2 sequences need 2 slots"),
        (
            gen_pb.GenerateRequest(model="m", prompt="hi", prompt_tokens=[104]),
            "prompt or prompt_tokens, not both",
        ),
        (gen_pb.GenerateRequest(model="m", prompt_tokens=[104, 9999]), "prompt_tokens[1] = 9999"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_problem(tmp_path, request_, fragment):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m"}) as worker:
            error = await refusal(worker.stub.Generate(request_))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert fragment in error.details()

    asyncio.run(scenario())


def test_a_token_outside_the_vocabulary_is_invalid_argument(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m"}) as worker:
            request = gen_pb.DetokenizeRequest(model="m", tokens=[104, 9999])
            error = await refusal(worker.stub.Detokenize(request))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "tokens[1] = 9999" in error.details()

    asyncio.run(scenario())


def test_generation_on_an_embedding_model_is_failed_precondition(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m"}, {"alias": "e", "embedding": True}) as w:
            error = await refusal(w.stub.Generate(generate_request("a", model="e")))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "embedding: true" in error.details()
            # A generation model embeds (pooled hidden states): no config step needed.
            reply = await w.stub.Embed(gen_pb.EmbedRequest(model="m", inputs=["a", "bc"]))
            assert [len(e.values) for e in reply.embeddings] == [4, 4]
            assert reply.prompt_tokens == 3

    asyncio.run(scenario())


def test_a_full_queue_is_resource_exhausted(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m", "max_queue": 0}) as worker:
            worker.models.backends["m"].step_delay = 0.005
            running = worker.stub.Generate(generate_request("ab", max_tokens=100))
            await running.read()  # the one slot is taken
            error = await refusal(worker.stub.Generate(generate_request("cd")))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_queue=0" in error.details()
            running.cancel()

    asyncio.run(scenario())


# ---- cancellation ------------------------------------------------------------------------
def test_a_cancelled_stream_stops_its_job_and_frees_the_slot(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m"}) as worker:
            backend = worker.models.backends["m"]
            backend.step_delay = 0.005
            call = worker.stub.Generate(generate_request("ab", max_tokens=120))
            for _ in range(3):
                await call.read()
            call.cancel()
            await wait_until(lambda: worker.registry.info("m").engine.active == 0)
            decoded = len(backend.cells[0])
            await asyncio.sleep(0.05)
            assert len(backend.cells[0]) == decoded < 2 + 120  # stopped, well before the end
            # The slot serves the next request.
            chunks = [c async for c in worker.stub.Generate(generate_request("xy", max_tokens=2))]
            assert chunks[-1].finish_reason == gen_pb.FINISH_REASON_LENGTH

    asyncio.run(scenario())


def test_a_queued_request_whose_client_leaves_never_runs(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m"}) as worker:
            worker.models.backends["m"].step_delay = 0.005
            running = worker.stub.Generate(generate_request("ab", max_tokens=60))
            await running.read()
            queued = worker.stub.Generate(generate_request("zz", max_tokens=5))
            await wait_until(lambda: worker.registry.info("m").engine.queued == 1)
            queued.cancel()
            await wait_until(lambda: worker.registry.info("m").engine.queued == 0)
            assert (await rest(running))[-1].finish_reason == gen_pb.FINISH_REASON_LENGTH
            assert worker.registry.info("m").engine.completed == 1

    asyncio.run(scenario())


def test_unloading_ends_a_running_stream_with_unavailable(tmp_path):
    async def scenario() -> None:
        async with serving(tmp_path, {"alias": "m"}) as worker:
            worker.models.backends["m"].step_delay = 0.005
            call = worker.stub.Generate(generate_request("ab", max_tokens=120))
            await call.read()
            await worker.registry.unload("m", "model 'm' was unloaded")
            error = await refusal(call)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "unloaded" in error.details()

    asyncio.run(scenario())
