"""A steady mixed load on a gateway while a worker is killed or stopped: half the requests
stream, half do not, and each one's fate is tallied (the chaos figures of issue 14).

`run_load` sends `count` completions through the OpenAI HTTP API, `concurrency` at a time,
and calls `fault(node)` once a stream is flowing from some node: that node is the victim.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

PROMPT = "Count from one to one hundred in words: one, two,"
MAX_TOKENS = 24


@dataclass
class Outcome:
    streamed: bool
    ok: bool = False
    error: str = ""  # a clear error the client received (HTTP status or SSE error event)
    node: str = ""
    moved: bool = False  # migrated (stream) or restarted elsewhere (non-streaming)
    moved_at: float = 0.0  # when a moved stream's first chunk from its new node arrived
    finished_at: float = 0.0


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    victim: str = ""
    fault_at: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def succeeded(self) -> int:
        return sum(o.ok for o in self.outcomes)

    @property
    def failed(self) -> int:
        return sum(bool(not o.ok and o.error) for o in self.outcomes)

    @property
    def lost(self) -> int:
        """Requests that neither succeeded nor ended with a clear error."""
        return self.sent - self.succeeded - self.failed

    def resumed_s(self, pick: Callable[[list[float]], float] = max) -> float:
        """From the fault to a moved stream's first chunk from its new node: the last one's
        (max) or the first one's (min); a moved stream waits in the survivor's queue."""
        gaps = [o.moved_at - self.fault_at for o in self.outcomes if o.moved_at]
        return pick(gaps) if gaps else 0.0

    @property
    def recovery_s(self) -> float:
        """From the fault to the last moved request's completion (0: none moved)."""
        moved = [o.finished_at - self.fault_at for o in self.outcomes if o.moved]
        return max(moved, default=0.0)

    def line(self, scenario: str) -> str:
        streams = [o for o in self.outcomes if o.streamed]
        plain = [o for o in self.outcomes if not o.streamed]
        return (
            f"{scenario}: sent {self.sent}, succeeded {self.succeeded}, failed {self.failed}, "
            f"lost {self.lost}; non-streaming {sum(o.ok for o in plain)}/{len(plain)}, "
            f"streams {sum(o.ok for o in streams)}/{len(streams)}; moved "
            f"{sum(o.moved for o in self.outcomes)} (victim {self.victim}); "
            f"moved streams resumed {self.resumed_s(min):.1f}-{self.resumed_s():.1f} s and "
            f"moved requests were done within {self.recovery_s:.1f} s of the fault"
        )


async def run_load(
    base_url: str, count: int, concurrency: int, fault: Callable[[str], None]
) -> Tally:
    tally = Tally()
    flowing = asyncio.Event()
    gate = asyncio.Semaphore(concurrency)

    def on_flowing(node: str) -> None:
        if not tally.victim:
            tally.victim = node
            tally.fault_at = time.monotonic()
            fault(node)
            flowing.set()

    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:

        async def one(i: int) -> None:
            outcome = Outcome(streamed=i % 2 == 0)
            tally.outcomes.append(outcome)
            async with gate:
                body = {"model": "gemma", "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                        "temperature": 0, "stream": outcome.streamed}  # fmt: skip
                try:
                    if outcome.streamed:
                        await _stream(client, body, outcome, on_flowing)
                    else:
                        await _plain(client, body, outcome)
                except httpx.HTTPError as exc:
                    outcome.error = ""  # a broken connection is no clear error: lost
                    outcome.ok = False
                    print(f"request {i} lost: {exc!r}")
                outcome.finished_at = time.monotonic()

        await asyncio.gather(*(one(i) for i in range(count)))
    return tally


async def _plain(client: httpx.AsyncClient, body: dict[str, object], outcome: Outcome) -> None:
    reply = await client.post("/completions", json=body)
    outcome.node = reply.headers.get("x-llamaherd-node", "")
    outcome.moved = bool(reply.headers.get("x-llamaherd-retried-from"))
    if reply.status_code == 200:
        outcome.ok = bool(reply.json()["choices"][0]["text"])
    else:
        outcome.error = f"{reply.status_code}: {reply.text[:200]}"


async def _stream(
    client: httpx.AsyncClient,
    body: dict[str, object],
    outcome: Outcome,
    on_flowing: Callable[[str], None],
) -> None:
    async with client.stream("POST", "/completions", json=body) as reply:
        outcome.node = reply.headers.get("x-llamaherd-node", "")
        if reply.status_code != 200:
            outcome.error = f"{reply.status_code}: {(await reply.aread())[:200]!r}"
            return
        finished = done = False
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                outcome.error = event["error"]["message"]
                continue
            if "llamaherd" in event and not outcome.moved:
                outcome.moved = True
                outcome.moved_at = time.monotonic()
            on_flowing(outcome.node)
            finished = finished or any(c.get("finish_reason") for c in event["choices"])
        outcome.ok = done and finished and not outcome.error
