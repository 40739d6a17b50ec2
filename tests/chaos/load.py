"""A steady load of mixed OpenAI HTTP requests, each classified by what its client got.

Every request ends as exactly one of:
- ok: a complete answer (a JSON completion, or a stream that ends with `data: [DONE]`);
- failed: a clear refusal the client can act on: an HTTP status with OpenAI's error envelope,
  an SSE `error` event, or a connection refused before anything was accepted (the gateway
  was down: nothing was started, the client may safely retry);
- lost: anything else: no answer within the bound, a stream that stalls or is cut without an
  error event, a reset connection, a malformed body, a status without an envelope.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

OK, FAILED, LOST = "ok", "failed", "lost"
PROMPTS = ["Once upon a time", "The capital of France is", "List three colours:", "1, 2, 3,"]


@dataclass(frozen=True)
class Outcome:
    """One request and what its client got."""

    started: float  # time.monotonic()
    ended: float
    kind: str  # OK, FAILED or LOST
    stream: bool
    detail: str = ""  # for failed and lost: what the client saw
    tag: str = "load"  # which sender: the steady load, or a scenario's own requests


def envelope_error(body: Any) -> str | None:
    """The message of an OpenAI error envelope, or None when `body` is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    message = body["error"].get("message")
    return message if isinstance(message, str) and message else None


async def _stream_outcome(response: httpx.Response, started: float, tag: str) -> Outcome:
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            return Outcome(started, time.monotonic(), OK, True, tag=tag)
        try:
            chunk = json.loads(data)
        except ValueError:
            return Outcome(
                started, time.monotonic(), LOST, True, f"malformed SSE {data[:60]!r}", tag
            )
        message = envelope_error(chunk)
        if message is not None:
            return Outcome(started, time.monotonic(), FAILED, True, f"SSE error: {message}", tag)
        if not isinstance(chunk, dict) or "choices" not in chunk:
            return Outcome(started, time.monotonic(), LOST, True, f"odd chunk {data[:60]!r}", tag)
    return Outcome(started, time.monotonic(), LOST, True, "stream cut without [DONE] or error", tag)


def _answer_outcome(response: httpx.Response, started: float, tag: str) -> Outcome:
    try:
        body = response.json()
    except ValueError:
        body = None
    now = time.monotonic()
    if response.status_code == 200:
        choices = body.get("choices") if isinstance(body, dict) else None
        if isinstance(choices, list) and choices:
            return Outcome(started, now, OK, False, tag=tag)
        return Outcome(started, now, LOST, False, "200 without choices", tag)
    message = envelope_error(body)
    if message is None:
        return Outcome(
            started, now, LOST, False, f"{response.status_code} without an error envelope", tag
        )
    return Outcome(started, now, FAILED, False, f"{response.status_code}: {message}", tag)


async def send(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    bound_s: float,
    tag: str = "load",
    raw: bytes | None = None,
) -> Outcome:
    """Sends one request (`raw` bytes instead of `body` when given) and classifies it."""
    stream = bool(body.get("stream"))
    started = time.monotonic()
    content = raw if raw is not None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}

    async def exchange() -> Outcome:
        async with client.stream("POST", path, content=content, headers=headers) as response:
            if stream and response.status_code == 200:
                return await _stream_outcome(response, started, tag)
            await response.aread()
            return _answer_outcome(response, started, tag)

    try:
        return await asyncio.wait_for(exchange(), bound_s)
    except asyncio.TimeoutError:
        return Outcome(
            started, time.monotonic(), LOST, stream, f"no answer within {bound_s} s", tag
        )
    except httpx.ConnectError as exc:
        return Outcome(started, time.monotonic(), FAILED, stream, f"refused: {exc}", tag)
    except httpx.ReadTimeout:
        return Outcome(started, time.monotonic(), LOST, stream, "stalled (read timeout)", tag)
    except httpx.HTTPError as exc:
        detail = f"{type(exc).__name__}: {exc}"
        return Outcome(started, time.monotonic(), LOST, stream, detail, tag)


def request_body(
    rng: random.Random, model: str, stream: bool, max_tokens: int
) -> tuple[str, dict[str, Any]]:
    """A chat or a completion request, streaming or not, with a short answer."""
    prompt = rng.choice(PROMPTS)
    common = {"model": model, "stream": stream, "max_tokens": max_tokens, "temperature": 0.7}
    if rng.random() < 0.5:
        return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": prompt}]}
    return "/v1/completions", {**common, "prompt": prompt}


@dataclass
class Load:
    """`clients` concurrent senders in a thread of their own, until stopped."""

    base_url: str  # http://127.0.0.1:PORT
    model: str
    clients: int = 3
    max_tokens: int = 8
    bound_s: float = 30.0  # a request with no answer after this is lost
    gap_s: float = 10.0  # a stream silent for this long is lost (stalled)
    seed: int = 1
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._stop.clear()
        self.outcomes = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Outcome]:
        """Stops sending and waits for the requests in flight (at most `bound_s`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.bound_s + 10)
        return list(self.outcomes)

    async def _run(self) -> None:
        timeout = httpx.Timeout(self.bound_s, connect=5.0, read=self.gap_s)
        limits = httpx.Limits(max_connections=self.clients * 2)
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, limits=limits
        ) as client:
            await asyncio.gather(*(self._client(client, i) for i in range(self.clients)))

    async def _client(self, client: httpx.AsyncClient, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        while not self._stop.is_set():
            path, body = request_body(rng, self.model, rng.random() < 0.5, self.max_tokens)
            outcome = await send(client, path, body, self.bound_s)
            self.outcomes.append(outcome)
            if outcome.kind != OK:
                await asyncio.sleep(0.25)  # a refusing gateway must not be spun on
