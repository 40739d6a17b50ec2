"""The head of a split model: a child worker process hosts it, this worker relays to it.

ggml's RPC client aborts its process when a helper's connection fails, and a helper whose
link drops leaves it blocked in a read for as long as TCP retries. Neither may reach the
worker, so the model lives in a child worker (same code, `split_child` set, loopback only)
and this worker relays its requests there, through the servicer's own protobuf converters,
serving it as any worker.models.served.ServedModel. A watchdog notices a lost helper
within seconds, by the child exiting or by failed probes of the helpers' endpoints (UDP
datagrams to the RPC port number, echoed by the helper's RPC server process: ggml serves
one TCP connection at a time and would queue a TCP probe behind the head's), then kills the
child and reports the model lost: requests in flight end with UNAVAILABLE at once and new
ones are refused until the coordinator re-plans.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import worker_pb2 as pb
from llamaherd.v1 import worker_pb2_grpc

from common.cluster_auth import Metadata, auth_metadata
from common.errors import FailedPrecondition, LlamaherdError, Unavailable
from common.grpc_errors import REQUEST_ID_KEY, error_from_rpc
from common.model_settings import ModelConfig
from common.net import split_host_port
from common.status import EngineFigures
from common.wire.status import model_status_from_proto
from worker import wire
from worker.config import WorkerSettings
from worker.engine.generation import (
    ChatMessage,
    Constraint,
    EmbeddingResult,
    GenerationEvent,
    Tools,
)
from worker.engine.sampling import SamplingParams
from worker.models.served import ModelFacts, OnLost, Tokenized
from worker.models.tool_calls import NO_TOOLS
from worker.split.lifetime import end

log = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # the weights cross the network to the helpers while it loads
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0
PROBE_RESEND_S = 0.25
PROBE_FAILURES = 3  # consecutive failed probes of one helper before the split is given up
STATS_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL = 20
# What the child's exit code says about a helper, for the error clients and operators see.
_EXIT_HINTS = {
    -signal.SIGABRT: "ggml aborted: a helper's RPC connection failed or answered garbage",
    -signal.SIGKILL: "killed",
}


@dataclass(frozen=True)
class TemplateSource:
    source: str


class SplitModel:
    """A model whose layers are split over helper nodes, hosted by a child worker."""

    def __init__(
        self,
        config: ModelConfig,
        facts: ModelFacts,
        process: asyncio.subprocess.Process,
        channel: aio.Channel,
        on_lost: OnLost,
        auth: Metadata = (),
    ) -> None:
        self.config = config
        self.facts = facts
        self._figures = EngineFigures()
        self.template: TemplateSource | None = None
        self._process = process
        self._channel = channel
        self._stub = worker_pb2_grpc.WorkerStub(channel)
        # The join token goes with each call rather than through channel interceptors:
        # grpc.aio wraps every streamed message of an intercepted call in extra layers.
        self._auth = auth
        self._on_lost = on_lost
        self._lost: str | None = None
        self._closing: str | None = None  # why it is being stopped on purpose
        self._log_tail: deque[str] = deque(maxlen=LOG_TAIL)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def alias(self) -> str:
        return self.config.alias

    def figures(self) -> EngineFigures:
        """The child's engine figures, as its ListModels last reported them."""
        return self._figures

    # ---- start and stop ----------------------------------------------------------------
    @classmethod
    async def start(
        cls,
        config: ModelConfig,
        facts: ModelFacts,
        settings: WorkerSettings,
        on_lost: OnLost,
    ) -> SplitModel:
        port = _free_loopback_port()
        with tempfile.TemporaryDirectory(prefix="llamaherd-split-") as folder:
            config_file = Path(folder) / "worker.json"
            config_file.write_text(json.dumps(_child_settings(config, settings, facts)))
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker",
                "--config", str(config_file), "--port", str(port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                # An abort's message is the useful part; ggml's gdb backtrace only buries it.
                # The child serves on loopback without TLS: its relay channel is plain.
                env={**_without_tls(os.environ), "GGML_NO_BACKTRACE": "1"},
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C for the worker reaches it via the worker
            )  # fmt: skip
            channel = aio.insecure_channel(f"127.0.0.1:{port}")
            auth = auth_metadata(settings.cluster_token)
            model = cls(config, facts, process, channel, on_lost, auth)
            model._tasks.append(asyncio.create_task(model._copy_log(), name="split-log"))
            try:
                await asyncio.wait_for(model._wait_ready(), START_TIMEOUT_S)
            except BaseException as exc:
                reason = await model._stop_child()
                await channel.close()
                if isinstance(exc, TimeoutError):
                    raise FailedPrecondition(
                        f"split model {config.alias!r} did not load in {START_TIMEOUT_S:.0f} s"
                    ) from None
                if isinstance(exc, _ChildExited):
                    raise FailedPrecondition(
                        f"split model {config.alias!r} could not load: {reason}"
                    ) from None
                raise
        model._tasks.append(asyncio.create_task(model._watch(), name=f"split:{config.alias}"))
        model._tasks.append(asyncio.create_task(model._probe(), name=f"probe:{config.alias}"))
        log.info(
            "split model %s serving from child %d, layers on %s",
            config.alias, process.pid, ", ".join(config.rpc_servers),
        )  # fmt: skip
        return model

    async def _wait_ready(self) -> None:
        health = health_pb2_grpc.HealthStub(self._channel)
        while True:
            if self._process.returncode is not None:
                raise _ChildExited
            with contextlib.suppress(aio.AioRpcError):
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            await asyncio.sleep(0.1)
        listing = await self._list_models()
        for info in listing.models:
            if info.alias == self.alias and info.state == pb.MODEL_STATE_FAILED:
                raise FailedPrecondition(f"split model {self.alias!r} could not load: {info.error}")
        self._update(listing)

    async def close(self, reason: str) -> None:
        self._closing = reason
        for task in self._tasks:
            task.cancel()
        await self._stop_child()
        await self._channel.close()
        log.info("split model %s stopped: %s", self.alias, reason)

    async def _stop_child(self) -> str:
        """Ends the child (politely, then not) and says how it ended."""
        await end(self._process, STOP_TIMEOUT_S)
        return self._exit_reason()

    def _exit_reason(self) -> str:
        code = self._process.returncode
        hint = _EXIT_HINTS.get(code or 0, f"exited with code {code}")
        last = next((line for line in reversed(self._log_tail) if line.strip()), "")
        return f"{hint}" + (f"; last log line: {last}" if last else "")

    # ---- watching ----------------------------------------------------------------------
    async def _watch(self) -> None:
        """Follows the child: its figures every second, and its death."""
        wait = asyncio.create_task(self._process.wait())
        try:
            while not wait.done():
                with contextlib.suppress(aio.AioRpcError):
                    self._update(await self._list_models())
                await asyncio.wait({wait}, timeout=PROBE_INTERVAL_S)
        finally:
            wait.cancel()
        if self._closing is None:
            self._lose(f"the process hosting it {self._exit_reason()}")

    async def _probe(self) -> None:
        """Connects to each helper every second; one unreachable for PROBE_FAILURES probes
        in a row means its link or host is gone, and the child would hang on it."""
        failures = dict.fromkeys(self.config.rpc_servers, 0)
        while self._lost is None:
            await asyncio.sleep(PROBE_INTERVAL_S)
            for endpoint in failures:
                failures[endpoint] = 0 if await _reachable(endpoint) else failures[endpoint] + 1
                if failures[endpoint] >= PROBE_FAILURES:
                    self._lose(
                        f"helper {endpoint} has not answered for "
                        f"{PROBE_FAILURES * PROBE_INTERVAL_S:.0f} s"
                    )
                    if self._process.returncode is None:
                        self._process.kill()
                    return

    def _lose(self, reason: str) -> None:
        if self._lost is not None or self._closing is not None:
            return
        self._lost = f"split model {self.alias!r} lost: {reason}"
        log.error("%s", self._lost)
        self._on_lost(self._lost)

    async def _copy_log(self) -> None:
        assert self._process.stderr is not None
        async for raw in self._process.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip()
            self._log_tail.append(line)
            log.info("[%s] %s", self.alias, line)

    async def _list_models(self) -> pb.ListModelsResponse:
        reply: pb.ListModelsResponse = await self._stub.ListModels(
            pb.ListModelsRequest(), metadata=self._auth, timeout=STATS_TIMEOUT_S
        )
        return reply

    def _update(self, listing: pb.ListModelsResponse) -> None:
        for info in listing.models:
            if info.alias == self.alias:
                status = model_status_from_proto(info)
                self._figures = status.engine
                self.template = TemplateSource(status.chat_template_source)

    # ---- relaying ----------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self) -> Iterator[SplitModel]:
        if self._lost is not None:
            raise Unavailable(self._lost)
        yield self

    def generate(
        self,
        request_id: str,
        prompt: str | Sequence[int],
        sampling: SamplingParams,
        constraint: Constraint | None,
        n: int = 1,
    ) -> AsyncIterator[GenerationEvent]:
        text, tokens = (prompt, ()) if isinstance(prompt, str) else ("", prompt)
        request = gen_pb.GenerateRequest(
            model=self.alias,
            prompt=text,
            prompt_tokens=tokens,
            sampling=wire.sampling_to_proto(sampling),
            constraint=wire.constraint_to_proto(constraint),
            n=n,
        )
        return self._relay_stream(self._stub.Generate, request, request_id)

    def chat(
        self,
        request_id: str,
        messages: Sequence[ChatMessage],
        sampling: SamplingParams,
        constraint: Constraint | None,
        tools: Tools = NO_TOOLS,
        n: int = 1,
    ) -> AsyncIterator[GenerationEvent]:
        request = gen_pb.ChatRequest(
            model=self.alias,
            messages=wire.messages_to_proto(messages),
            sampling=wire.sampling_to_proto(sampling),
            constraint=wire.constraint_to_proto(constraint),
            n=n,
        )
        wire.tools_to_proto(tools, request)  # the child worker parses the calls
        return self._relay_stream(self._stub.Chat, request, request_id)

    async def embed(
        self, request_id: str, inputs: Sequence[str], normalize: bool
    ) -> EmbeddingResult:
        request = gen_pb.EmbedRequest(model=self.alias, inputs=inputs, normalize=normalize)
        reply = await self._relay_unary(self._stub.Embed, request, request_id)
        return wire.embeddings_from_proto(reply)

    async def tokenize(
        self,
        request_id: str,
        text: str,
        add_special: bool = True,
        parse_special: bool = True,
        with_pieces: bool = False,
    ) -> Tokenized:
        request = gen_pb.TokenizeRequest(
            model=self.alias,
            text=text,
            add_special=add_special,
            parse_special=parse_special,
            with_pieces=with_pieces,
        )
        reply = await self._relay_unary(self._stub.Tokenize, request, request_id)
        return wire.tokenized_from_proto(reply)

    async def tokenize_chat(
        self,
        request_id: str,
        messages: Sequence[ChatMessage],
        with_pieces: bool = False,
        tools: Tools = NO_TOOLS,
    ) -> Tokenized:
        chat = gen_pb.ChatRequest(model=self.alias, messages=wire.messages_to_proto(messages))
        wire.tools_to_proto(tools, chat)
        request = gen_pb.TokenizeRequest(model=self.alias, chat=chat, with_pieces=with_pieces)
        reply = await self._relay_unary(self._stub.Tokenize, request, request_id)
        return wire.tokenized_from_proto(reply)

    async def detokenize(self, request_id: str, tokens: Sequence[int]) -> str:
        request = gen_pb.DetokenizeRequest(model=self.alias, tokens=tokens)
        reply = await self._relay_unary(self._stub.Detokenize, request, request_id)
        text: str = reply.text
        return text

    async def _relay_stream(
        self, method: Any, request: Any, request_id: str
    ) -> AsyncIterator[GenerationEvent]:
        call = method(request, metadata=(*self._auth, (REQUEST_ID_KEY, request_id)))
        try:
            async for chunk in call:
                yield wire.chunk_from_proto(chunk)
        except aio.AioRpcError as exc:
            raise self._relayed(exc) from None
        finally:
            call.cancel()  # the client went away: the child stops generating too

    async def _relay_unary(self, method: Any, request: Any, request_id: str) -> Any:
        try:
            return await method(request, metadata=(*self._auth, (REQUEST_ID_KEY, request_id)))
        except aio.AioRpcError as exc:
            raise self._relayed(exc) from None

    def _relayed(self, exc: aio.AioRpcError) -> LlamaherdError:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) and (
            self._lost or self._closing or self._process.returncode is not None
        ):
            return Unavailable(
                self._lost or self._closing or f"split model {self.alias!r} lost its process"
            )
        return error_from_rpc(exc)  # the child's refusal, with the code the child gave it


class _ChildExited(Exception):
    pass


def _child_settings(
    config: ModelConfig, settings: WorkerSettings, facts: ModelFacts
) -> dict[str, Any]:
    model = config.model_dump(mode="json")
    model["path"] = config.path if config.is_builtin else str(facts.path)
    # The slots this worker sized the model for (n_parallel 0: from its memory budget), so
    # that the child batches as many streams as the head reserved memory and reports for.
    model["n_parallel"] = facts.n_parallel
    model.pop("source", None)  # a store model's child loads the verified file by its path
    return {
        "host": "127.0.0.1",
        "models": [model],
        "split_child": True,
        "metrics": False,
        "reference_speed": False,
        "log_level": settings.log_level,
        "memory_reserve": int(settings.memory_reserve),
        "shutdown_grace_s": 1.0,
        "telemetry_interval_s": 60.0,
        # The child guards its port with the worker's join token (this file lies in a
        # private 0700 temporary folder, removed once the child has started).
        **({"cluster_token": settings.cluster_token.get_secret_value()}
           if settings.cluster_token is not None else {}),
    }  # fmt: skip


def _without_tls(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith("LLAMAHERD_TLS_")}


class _Echo(asyncio.DatagramProtocol):
    """Waits for a helper to echo one probe token."""

    def __init__(self, token: bytes) -> None:
        self.answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._token = token

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if data == self._token and not self.answered.done():
            self.answered.set_result(True)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable: the helper's host is up but its RPC server is gone.
        if not self.answered.done():
            self.answered.set_result(False)


async def _reachable(endpoint: str) -> bool:
    """Whether the helper's RPC server process echoes a datagram within PROBE_TIMEOUT_S
    (sent again every PROBE_RESEND_S: one lost datagram is not a lost link)."""
    host, port = split_host_port(endpoint)
    token = os.urandom(8)
    loop = asyncio.get_running_loop()
    try:
        transport, echo = await loop.create_datagram_endpoint(
            lambda: _Echo(token), remote_addr=(host, port)
        )
    except OSError:
        return False

    async def ask() -> bool:
        while not echo.answered.done():
            transport.sendto(token)
            await asyncio.wait({echo.answered}, timeout=PROBE_RESEND_S)
        return echo.answered.result()

    try:
        return await asyncio.wait_for(ask(), PROBE_TIMEOUT_S)
    except asyncio.TimeoutError:  # TimeoutError's alias from Python 3.11
        return False
    finally:
        transport.close()


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
