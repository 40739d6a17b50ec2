"""The benchmark's HTTP side: checks an OpenAI-compatible endpoint, counts a prompt's tokens,
and streams one request, timestamping each chunk as it arrives.

Failures of the endpoint as a whole (unreachable, wrong key, unknown model) raise BenchError
with a one-line message; a failure of one request is recorded in its RequestRecord.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from orchestrator.bench.metrics import RequestRecord, node_power

Api = Literal["completions", "chat"]
NODE_HEADER = "x-llamaherd-node"


class BenchError(Exception):
    """The benchmark cannot run; the message says why and what to do, in one line."""


@dataclass(frozen=True)
class Target:
    url: str  # the API's base, e.g. http://127.0.0.1:8000/v1
    model: str
    api: Api = "completions"
    api_key: str | None = None

    @property
    def path(self) -> str:
        return "/chat/completions" if self.api == "chat" else "/completions"

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def _unreachable(url: str, exc: httpx.HTTPError) -> BenchError:
    return BenchError(f"cannot reach {url}: {_reason(exc)}; is the gateway running? (make run)")


def _reason(exc: BaseException) -> str:
    """The socket error under httpx's wrapping ("All connection attempts failed")."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "unknown host"
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    return str(exc).strip().lower() or type(exc).__name__


async def served_models(client: httpx.AsyncClient, target: Target) -> list[str]:
    """The model ids GET /models lists."""
    try:
        reply = await client.get(f"{target.url}/models", headers=target.headers)
    except (httpx.ConnectError, httpx.TimeoutException) as exc:
        raise _unreachable(target.url, exc) from None
    if reply.status_code in (401, 403):
        raise BenchError(
            f"{target.url} refused the API key ({reply.status_code}); pass the variable that "
            "holds the right one with --api-key-env"
        )
    if reply.status_code != 200:
        raise BenchError(
            f"{target.url}/models answered {reply.status_code}: is {target.url} the API's base "
            "(it usually ends in /v1)?"
        )
    try:
        return [str(m["id"]) for m in reply.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise BenchError(f"{target.url}/models did not answer an OpenAI model list") from None


async def check_model(client: httpx.AsyncClient, target: Target) -> None:
    models = await served_models(client, target)
    if target.model not in models:
        listing = ", ".join(models) if models else "none"
        raise BenchError(
            f"{target.url} does not serve model {target.model!r}; it serves: {listing}"
        )


def payload(
    target: Target,
    prompt: str,
    max_tokens: int,
    sampling: dict[str, Any],
    history: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """The request body. `ignore_eos` asks llama-server and vLLM for exactly max_tokens
    tokens; servers that do not know it ignore it (their real lengths are recorded).
    `history` (chat only): the messages before this prompt (system prompt, earlier turns)."""
    body: dict[str, Any] = {"model": target.model, "max_tokens": max_tokens, **sampling}
    if target.api == "chat":
        body["messages"] = [*history, {"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


async def count_prompt_tokens(client: httpx.AsyncClient, target: Target, prompt: str) -> int:
    """The prompt tokens the server counts for `prompt` (template and BOS included): what
    its usage.prompt_tokens reports for a one-token request."""
    body = payload(target, prompt, 1, {"temperature": 0})
    try:
        reply = await client.post(f"{target.url}{target.path}", json=body, headers=target.headers)
    except (httpx.ConnectError, httpx.TimeoutException) as exc:
        raise _unreachable(target.url, exc) from None
    if reply.status_code != 200:
        raise BenchError(
            f"a one-token request to {target.url}{target.path} failed "
            f"({reply.status_code}): {_error_message(reply.text)}"
        )
    try:
        return int(reply.json()["usage"]["prompt_tokens"])
    except (ValueError, KeyError, TypeError):
        raise BenchError(
            f"{target.url}{target.path} reports no usage.prompt_tokens, so prompt lengths "
            "cannot be calibrated"
        ) from None


def _error_message(text: str) -> str:
    try:
        error = json.loads(text)["error"]
        return str(error["message"] if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        return text.strip()[:200]


@dataclass(frozen=True)
class RequestSpec:
    level: int
    index: int
    warmup: bool
    body: dict[str, Any]
    turn: int | None = None  # 1-based turn of a multi-turn chat


async def stream_request(
    client: httpx.AsyncClient,
    target: Target,
    spec: RequestSpec,
    clock: Callable[[], float],
    text: list[str] | None = None,
) -> RequestRecord:
    """Sends one streamed request and records when each content chunk arrived; the content
    itself is appended to `text` when given (a multi-turn chat keeps the reply)."""
    body = {**spec.body, "stream": True, "stream_options": {"include_usage": True}}
    chunks: list[float] = []
    usage: dict[str, Any] = {}
    node: str | None = None
    error: tuple[str, str] | None = None
    sent = clock()

    async def trace(event: str, info: dict[str, Any]) -> None:
        # The request counts as sent when its headers start going out, after the client got
        # a connection (pool wait, TCP connect): client-side set-up is not the server's
        # latency. GuideLLM times from the same httpcore event.
        nonlocal sent
        if event.endswith(".send_request_headers.started"):
            sent = clock()

    try:
        async with client.stream(
            "POST", f"{target.url}{target.path}", json=body, headers=target.headers,
            extensions={"trace": trace},
        ) as reply:  # fmt: skip
            node = reply.headers.get(NODE_HEADER)
            if reply.status_code != 200:
                error = (
                    f"http_{reply.status_code}",
                    _error_message((await reply.aread()).decode()),
                )
            else:
                async for line in reply.aiter_lines():
                    now = clock()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        error = ("stream_error", _error_message(data))
                        break
                    usage = event.get("usage") or usage
                    if content := _content(event, target.api):
                        chunks.append(now)
                        if text is not None:
                            text.append(content)
    except httpx.TimeoutException as exc:
        error = ("timeout", str(exc) or "timed out")
    except httpx.ConnectError as exc:
        error = ("connect", str(exc))
    except (httpx.HTTPError, ValueError) as exc:  # dropped connection, bad JSON
        error = ("disconnected", str(exc) or type(exc).__name__)
    done = clock()
    if error is None and not chunks:
        error = ("no_content", "the stream ended without content")
    return RequestRecord(
        level=spec.level,
        index=spec.index,
        warmup=spec.warmup,
        sent_s=sent,
        chunk_s=tuple(chunks),
        done_s=done,
        output_tokens=int(usage.get("completion_tokens") or len(chunks)),
        prompt_tokens=usage.get("prompt_tokens"),
        node=node,
        error=error[0] if error else None,
        detail=error[1][:300] if error else None,
        turn=spec.turn,
    )


def _content(event: dict[str, Any], api: Api) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    text = (choice.get("delta") or {}).get("content") if api == "chat" else choice.get("text")
    return text if isinstance(text, str) else ""


async def cluster_power(
    client: httpx.AsyncClient, target: Target
) -> dict[str, tuple[float, float, str]] | None:
    """Each node's (taken_at, watts, source) from the endpoint's /v1/cluster, {} when no
    node reports power, None when the endpoint has no cluster view (a peer such as
    llama-server) or it could not be read this time: energy is then n/a, never an error."""
    try:
        reply = await client.get(f"{target.url}/cluster", headers=target.headers, timeout=5.0)
        return node_power(reply.json()) if reply.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
