"""Drives a benchmark: checks the endpoint, calibrates the prompt length, then runs each load
level (warm-up first, excluded from the figures) and collects per-request records."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from orchestrator.bench.client import (
    BenchError,
    RequestSpec,
    Target,
    check_model,
    count_prompt_tokens,
    payload,
    stream_request,
)
from orchestrator.bench.metrics import RequestRecord, SloTerm
from orchestrator.bench.workload import (
    Level,
    arrival_offsets,
    next_word_count,
    prompt_text,
    request_rng,
)

MAX_CALIBRATION_PROBES = 6


@dataclass(frozen=True)
class BenchConfig:
    target: Target
    levels: tuple[Level, ...]
    prompt_tokens: int
    output_tokens: int
    requests: int | None = 20  # per level; None with a duration
    duration_s: float | None = None  # per level, instead of a request count
    warmup: int = 1  # requests per level before the measured ones
    seed: int = 0
    slo: tuple[SloTerm, ...] = ()
    temperature: float = 0.0
    ignore_eos: bool = True
    ban_tokens: tuple[int, ...] = ()  # token ids given a -100 logit bias (e.g. EOS)
    timeout_s: float = 300.0

    @property
    def sampling(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"temperature": self.temperature}
        if self.ignore_eos:
            extra["ignore_eos"] = True
        if self.ban_tokens:
            extra["logit_bias"] = {str(t): -100 for t in self.ban_tokens}
        return extra


@dataclass(frozen=True)
class Calibration:
    """How the prompt length was fitted: the (words, tokens) probes and the words chosen."""

    method: str
    words: int
    probes: tuple[tuple[int, int], ...]

    @property
    def reference_tokens(self) -> int:
        return dict(self.probes).get(self.words, self.probes[-1][1])


@dataclass
class BenchRun:
    calibration: Calibration
    records: list[RequestRecord] = field(default_factory=list)
    started_unix_s: float = 0.0


Progress = Callable[[int, RequestRecord | None], None]  # (level index, finished request)


async def calibrate(client: httpx.AsyncClient, config: BenchConfig) -> Calibration:
    """Finds the word count whose prompt the server counts as `prompt_tokens` tokens."""
    points: list[tuple[int, int]] = []
    rng_seed = f"{config.seed}:calibration"
    for _ in range(MAX_CALIBRATION_PROBES):
        words = next_word_count(points, config.prompt_tokens)
        if any(w == words for w, _ in points):
            break
        text = prompt_text(words, random.Random(rng_seed))
        points.append((words, await count_prompt_tokens(client, config.target, text)))
        if points[-1][1] == config.prompt_tokens:
            break
    best = min(points, key=lambda p: (abs(p[1] - config.prompt_tokens), -p[0]))
    return Calibration("usage.prompt_tokens of one-token requests", best[0], tuple(points))


def _spec(config: BenchConfig, words: int, level: int, index: int, warmup: bool) -> RequestSpec:
    text = prompt_text(words, request_rng(config.seed, level, index))
    body = payload(config.target, text, config.output_tokens, config.sampling)
    return RequestSpec(level, index, warmup, body)


async def _closed_loop(
    send: Callable[[int, bool], Any],
    streams: int,
    first: int,
    count: int | None,
    deadline: float | None,
    warmup: bool,
) -> None:
    """`streams` workers, each sending its next request when its last one ends, until
    `count` requests were sent or the deadline passed."""
    taken = first

    async def worker() -> None:
        nonlocal taken
        while (count is None or taken < first + count) and (
            deadline is None or time.monotonic() < deadline
        ):
            index = taken
            taken += 1
            await send(index, warmup)

    await asyncio.gather(*(worker() for _ in range(streams)))


async def _open_loop(
    send: Callable[[int, bool], Any], offsets: Sequence[float], first: int
) -> None:
    start = time.monotonic()
    tasks = []
    for i, offset in enumerate(offsets):
        delay = start + offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(first + i, False)))
    await asyncio.gather(*tasks)


async def run_bench(config: BenchConfig, progress: Progress | None = None) -> BenchRun:
    """Runs every level; raises BenchError when the endpoint cannot be benchmarked."""
    zero = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - zero

    most_streams = max(level.streams for level in config.levels)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=most_streams + 8)
    timeout = httpx.Timeout(config.timeout_s, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        await check_model(client, config.target)
        calibration = await calibrate(client, config)
        run = BenchRun(calibration, started_unix_s=time.time())
        for n, level in enumerate(config.levels):
            await _run_level(client, config, run, n, level, clock, progress)
        failed = [r for r in run.records if not r.warmup and not r.ok]
        if failed and len(failed) == sum(not r.warmup for r in run.records):
            first = failed[0]
            raise BenchError(f"every request failed; the first: {first.error}: {first.detail}")
        return run


async def _run_level(
    client: httpx.AsyncClient,
    config: BenchConfig,
    run: BenchRun,
    n: int,
    level: Level,
    clock: Callable[[], float],
    progress: Progress | None,
) -> None:
    async def send(index: int, warmup: bool) -> None:
        spec = _spec(config, run.calibration.words, n, index, warmup)
        record = await stream_request(client, config.target, spec, clock)
        run.records.append(record)
        if progress and not warmup:
            progress(n, record)

    if config.warmup:
        await _closed_loop(send, level.streams, 0, config.warmup, None, warmup=True)
    if progress:
        progress(n, None)  # the measured part starts
    first = config.warmup
    if level.kind == "concurrency":
        deadline = time.monotonic() + config.duration_s if config.duration_s else None
        await _closed_loop(send, level.streams, first, config.requests, deadline, warmup=False)
    else:
        rng = random.Random(f"{config.seed}:arrivals:{n}")
        offsets = arrival_offsets(level, rng, config.requests, config.duration_s)
        await _open_loop(send, offsets, first)
