"""Hostile inputs sent straight to a worker's gRPC API (with the cluster token, as a
compromised gateway or an insider could), past the gateway's own checks.

A gRPC reply is classified as the HTTP ones are: OK is ok; a status that names the problem
(INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...) is a clear failure; UNKNOWN (an unhandled
exception), DEADLINE_EXCEEDED (a hang past the bound) or no status at all is lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import grpc
from chaos.load import FAILED, LOST, OK, Outcome
from llamaherd.v1 import generation_pb2 as gen_pb

GENERATE = "/llamaherd.v1.Worker/Generate"
UNCLEAR = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}


def _request(model: str, **constraint: str) -> bytes:
    request = gen_pb.GenerateRequest(
        model=model,
        prompt="Hi XX",
        sampling=gen_pb.SamplingParams(max_tokens=4),
        constraint=gen_pb.OutputConstraint(**constraint) if constraint else None,
    )
    return bytes(request.SerializeToString())


def direct_inputs(model: str) -> list[tuple[str, bytes]]:
    """(name, serialised GenerateRequest) of each hostile input."""
    schema = json.dumps({"type": "string", "minLength": 100_000_000})
    grammar = "root ::= " + " | ".join(f'"w{i}"' for i in range(110_000))
    deep_schema = json.dumps({"type": "array", "items": {}}).replace(
        "{}", '{"type": "array", "items": {}}', 1
    )
    for _ in range(12):  # 2**12 levels of nested items, built by doubling
        deep_schema = deep_schema.replace("{}", deep_schema, 1)
    return [
        ("schema minLength 1e8", _request(model, json_schema=schema)),
        ("1 MB grammar", _request(model, grammar=grammar)),
        ("schema nested 8000 deep", _request(model, json_schema=deep_schema)),
        # Invalid UTF-8 in a protobuf string field: only a raw client can send it.
        ("invalid UTF-8 prompt", _request(model).replace(b"Hi XX", b"Hi \xff\xfe")),
    ]


Metadata = tuple[tuple[str, str], ...]


def call(
    channel: grpc.Channel, name: str, payload: bytes, metadata: Metadata, bound_s: float
) -> Outcome:
    """Sends one serialised GenerateRequest and classifies the reply."""
    started = time.monotonic()
    generate: Callable[..., Iterator[bytes]] = channel.unary_stream(
        GENERATE, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    tag = f"direct {name}"
    try:
        for _ in generate(payload, metadata=metadata, timeout=bound_s):
            pass
    except grpc.RpcError as exc:
        code = exc.code()
        detail = f"{code.name}: {exc.details()}"
        kind = LOST if code in UNCLEAR or not exc.details() else FAILED
        return Outcome(started, time.monotonic(), kind, True, detail, tag)
    return Outcome(started, time.monotonic(), OK, True, tag=tag)


def attack(
    address: str, model: str, token: str | None, seconds: float, bound_s: float = 60
) -> list[Outcome]:
    """Rounds of every direct input, one after another, for `seconds`."""
    metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
    options = [("grpc.max_send_message_length", 16 << 20)]
    outcomes: list[Outcome] = []
    end = time.monotonic() + seconds
    with grpc.insecure_channel(address, options=options) as channel:
        while time.monotonic() < end:
            for name, payload in direct_inputs(model):
                outcomes.append(call(channel, name, payload, metadata, bound_s))
            time.sleep(0.5)
    return outcomes
