"""A client that cancels or disconnects stops its generation promptly and frees the model."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import grpc
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as pb
from support.models import GEMMA
from support.rpc import TIMEOUT, generate

LONG = gen_pb.SamplingParams(temperature=0, max_tokens=5000)  # ~25 s of tokens if not stopped


def _long_request(prompt: str = "Once upon a time") -> gen_pb.GenerateRequest:
    return gen_pb.GenerateRequest(model=GEMMA, prompt=prompt, sampling=LONG)


def _queued(stub) -> int:
    models = stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
    return next(m for m in models if m.alias == GEMMA).queued_requests


def _next_request_waits_ms(stub) -> float:
    final = generate(stub, GEMMA, "Hello", temperature=0, max_tokens=2).final
    return final.timings.queue_ms


def test_cancel_mid_stream_frees_the_model_at_once(stub):
    call = stub.Generate(_long_request(), timeout=TIMEOUT)
    for _ in range(3):
        next(call)
    call.cancel()
    started = time.monotonic()
    waited = _next_request_waits_ms(stub)
    assert waited < 500, f"the next request waited {waited:.0f} ms for the cancelled one"
    assert time.monotonic() - started < 5


def test_cancelled_request_that_was_still_queued_leaves_the_queue(stub):
    running = stub.Generate(_long_request(), timeout=TIMEOUT)
    next(running)
    waiting = stub.Generate(_long_request("The sea"), timeout=TIMEOUT)
    deadline = time.monotonic() + 5
    while _queued(stub) != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _queued(stub) == 1
    waiting.cancel()
    deadline = time.monotonic() + 5
    while _queued(stub) != 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _queued(stub) == 0
    running.cancel()
    assert _next_request_waits_ms(stub) < 500


def test_client_process_killed_mid_stream_frees_the_model(worker, stub):
    client = textwrap.dedent(
        f"""
        import os, sys
        from pydantic import SecretStr
        from common.cluster_auth import sync_channel
        from llamaherd.v1 import generation_pb2 as g, worker_pb2_grpc as w
        token = SecretStr(os.environ["LLAMAHERD_CLUSTER_TOKEN"])  # the test run's
        stub = w.WorkerStub(sync_channel("{worker.address}", token))
        req = g.GenerateRequest(model="{GEMMA}", prompt="Once upon a time",
                                sampling=g.SamplingParams(temperature=0, max_tokens=5000))
        for chunk in stub.Generate(req):
            print("chunk", flush=True)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", client], stdout=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.readline()  # the stream is flowing
    process.send_signal(signal.SIGKILL)
    process.wait()
    waited = _next_request_waits_ms(stub)
    assert waited < 1000, f"the next request waited {waited:.0f} ms behind a dead client"


def test_deadline_exceeded_stops_the_generation(stub):
    call = stub.Generate(_long_request(), timeout=1.0)
    try:
        for _ in call:
            pass
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        raise AssertionError("a 5000-token generation cannot finish within 1 s")
    assert _next_request_waits_ms(stub) < 500
