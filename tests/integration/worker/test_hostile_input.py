"""Nothing a request sends can stall the real worker (issue 14, findings 2, 3 and 7).

Measured before the fix on this machine: the schema below took 25 s and held a bystander
stream and the health service for 23 s; the 1 MB grammar ran into its client's 120 s
deadline after holding both for 28 s. Here each is refused at once, naming its limit, while
another client streams and health answers throughout; then abandoned loads, paths that are
not regular files and raw request bytes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as pb
from support.models import GEMMA
from support.rpc import TIMEOUT, rpc_error

GEMMA_BUILTIN = "builtin:gemma-3-270m"
MAX_GAP_S = 2.0
NESTED_LOOPS = (
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    "{% for m in messages %}{{ m.content }}{% endfor %}"
)


def _alternatives(size: int) -> str:
    """A grammar of `size` bytes whose root has ~size/12 alternatives: llama.cpp's cost per
    token grows with them (1,365 at 16 KiB take ~2 s a token here)."""
    return "root ::= " + " | ".join(f'"w{i:06d}"' for i in range(size // 12))


def _generate(stub, prompt: str = "Hi", **constraint: str) -> Callable[[], object]:
    request = gen_pb.GenerateRequest(
        model=GEMMA,
        prompt=prompt,
        sampling=gen_pb.SamplingParams(temperature=0, max_tokens=2),
        constraint=gen_pb.OutputConstraint(**constraint) if constraint else None,
    )
    return lambda: list(stub.Generate(request, timeout=TIMEOUT))


class Bystander:
    """Streams replies and checks health until stopped; keeps every gap and health latency."""

    def __init__(self, stub, health_stub) -> None:
        self.gaps: list[float] = []
        self.health: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._stream, args=(stub,), daemon=True),
            threading.Thread(target=self._ping, args=(health_stub,), daemon=True),
        ]

    def __enter__(self) -> Bystander:
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(self.gaps) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _stream(self, stub) -> None:
        request = gen_pb.GenerateRequest(
            model=GEMMA,
            prompt="Once upon a time",
            sampling=gen_pb.SamplingParams(temperature=0, max_tokens=400),
        )
        while not self._stop.is_set():
            last: float | None = None  # the first chunk's wait is the prompt's, not a gap
            call = stub.Generate(request, timeout=TIMEOUT)
            try:
                for _ in call:
                    now = time.monotonic()
                    if last is not None:
                        self.gaps.append(now - last)
                    last = now
                    if self._stop.is_set():
                        call.cancel()
                        return
            except grpc.RpcError as exc:
                if not self._stop.is_set():
                    self.errors.append(f"stream: {exc.code()}: {exc.details()}")

    def _ping(self, health_stub) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            reply = health_stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            self.health.append(time.monotonic() - started)
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                self.errors.append(f"health: {reply.status}")
            time.sleep(0.1)


@pytest.fixture
def template_model(stub) -> Iterator[str]:
    """Gemma loaded again with a chat template of nested loops (36.5 s a request before)."""
    alias = "gemma-nested-loops"
    spec = pb.ModelSpec(alias=alias, path=GEMMA_BUILTIN, n_ctx=256, chat_template=NESTED_LOOPS)
    stub.LoadModel(pb.LoadModelRequest(spec=spec), timeout=TIMEOUT)
    yield alias
    stub.UnloadModel(pb.UnloadModelRequest(alias=alias), timeout=TIMEOUT)


def test_hostile_inputs_at_once_leave_streams_and_health_flowing(stub, health_stub, template_model):
    chat = gen_pb.ChatRequest(
        model=template_model, messages=[gen_pb.ChatMessage(role="user", content="hi")]
    )
    hostile: dict[str, tuple[Callable[[], object], str]] = {
        "schema": (
            _generate(stub, json_schema='{"type":"string","minLength":100000000}'),
            "$.minLength is 100000000; the limit is 2000 (max_repetition)",
        ),
        "grammar 1 MB": (_generate(stub, grammar=_alternatives(1024 * 1024)), "max_grammar_bytes"),
        "grammar 16 KB": (
            _generate(stub, grammar=_alternatives(16 * 1024 - 64)),
            "ms per token to apply; the limit is 250 ms (max_sample_ms)",
        ),
        "deep schema": (
            _generate(stub, json_schema="[" * 20_000 + "]" * 20_000),
            "nests 20000 levels deep; the limit is 64 (max_json_depth)",
        ),
        "5 MB prompt": (_generate(stub, prompt="x" * (5 * 1024**2)), "(max_prompt_bytes)"),
        "template": (
            lambda: list(stub.Chat(chat, timeout=TIMEOUT)),
            "(max_template_iterations)",
        ),
    }
    outcomes: dict[str, tuple[grpc.RpcError, float]] = {}

    def send(name: str, call: Callable[[], object]) -> None:
        started = time.monotonic()
        error = rpc_error(call)
        outcomes[name] = (error, time.monotonic() - started)

    with Bystander(stub, health_stub) as bystander:
        senders = [
            threading.Thread(target=send, args=(name, call)) for name, (call, _) in hostile.items()
        ]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(60)
        time.sleep(1.0)  # the bystander keeps streaming after the storm too
    for name, (error, took) in sorted(outcomes.items()):
        print(f"{name}: {error.code().name} in {took:.2f} s: {error.details()[:100]}")
    print(
        f"bystander: {len(bystander.gaps)} chunks, largest gap {max(bystander.gaps):.2f} s; "
        f"health: {len(bystander.health)} checks, slowest {max(bystander.health):.2f} s"
    )
    assert set(outcomes) == set(hostile)
    for name, (_, expected) in hostile.items():
        error, took = outcomes[name]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
        assert expected in error.details(), (name, error.details())
        assert took < 10, (name, took)
    assert bystander.errors == []
    assert max(bystander.gaps) < MAX_GAP_S
    assert max(bystander.health) < 1.0


def _states(stub) -> dict[str, int]:
    models = stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
    return {m.alias: m.state for m in models}


def test_loads_whose_deadline_passed_end_loaded_listed_and_unloadable(stub):
    aliases = ["gemma-abandoned-0", "gemma-abandoned-1"]
    for alias in aliases:
        spec = pb.ModelSpec(alias=alias, path=GEMMA_BUILTIN, n_ctx=256)
        err = rpc_error(
            lambda spec=spec: stub.LoadModel(pb.LoadModelRequest(spec=spec), timeout=0.05)
        )
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = _states(stub)
        if all(states.get(a) == pb.MODEL_STATE_READY for a in aliases):
            break
        time.sleep(0.1)
    assert all(_states(stub).get(a) == pb.MODEL_STATE_READY for a in aliases), _states(stub)
    for alias in aliases:
        stub.UnloadModel(pb.UnloadModelRequest(alias=alias), timeout=TIMEOUT)
    assert not set(aliases) & set(_states(stub))


def _fifo(folder: Path) -> str:
    path = folder / "fifo.gguf"
    if not path.exists():
        os.mkfifo(path)
    return str(path)


def _loop(folder: Path) -> str:
    a, b = folder / "loop-a.gguf", folder / "loop-b.gguf"
    if not a.is_symlink():
        a.symlink_to(b)
        b.symlink_to(a)
    return str(a)


def _directory(folder: Path) -> str:
    (folder / "dir.gguf").mkdir(exist_ok=True)
    return str(folder / "dir.gguf")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_fifo, "is a FIFO, not a regular file"),
        (_directory, "is a directory, not a regular file"),
        (_loop, "is a symlink loop"),
        (lambda folder: str(folder / "a\0b.gguf"), "contains a NUL byte"),
        (lambda folder: str(folder / ("x" * 5000)), "the limit is 4096"),
    ],
)
def test_model_paths_that_are_not_regular_files_are_invalid(stub, models_dir, make, message):
    spec = pb.ModelSpec(alias="gemma-bad-path", path=make(models_dir), n_ctx=256)
    for method in (stub.LoadModel, stub.EstimateModel):
        started = time.monotonic()
        err = rpc_error(lambda m=method: m(pb.LoadModelRequest(spec=spec), timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert message in err.details()
        assert time.monotonic() - started < 5
    assert "gemma-bad-path" not in _states(stub)


def test_invalid_utf8_in_a_raw_request_is_invalid_argument(channel):
    good = gen_pb.TokenizeRequest(model=GEMMA, text="ok").SerializeToString()
    call = channel.unary_unary("/llamaherd.v1.Worker/Tokenize")
    err = rpc_error(lambda: call(good.replace(b"ok", b"\xff\xfe"), timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid llamaherd.v1.TokenizeRequest" in err.details()
