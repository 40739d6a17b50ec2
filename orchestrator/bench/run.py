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
    cluster_power,
    count_prompt_tokens,
    payload,
    stream_request,
)
from orchestrator.bench.metrics import PowerSample, RequestRecord, SloTerm
from orchestrator.bench.workload import (
    Lengths,
    Level,
    arrival_offsets,
    length_rng,
    next_word_count,
    prompt_text,
    request_rng,
    words_for,
)

MAX_CALIBRATION_PROBES = 6
POWER_POLL_S = 1.0  # how often /v1/cluster is read for power while a level runs


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
    # Distributions of the lengths, drawn per request from the seed; None = the fixed
    # prompt_tokens / output_tokens above (prompt_tokens is then the calibration target).
    prompt_lengths: Lengths | None = None
    output_lengths: Lengths | None = None
    turns: int = 1  # > 1: each stream is a user holding chats of this many turns (chat API)
    system_tokens: int = 0  # a system prompt of about this many tokens, shared by all users
    energy: bool = True  # sample /v1/cluster for node power while each level runs

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

    @property
    def overhead(self) -> int:
        """Tokens the server adds to a prompt of WORDS (BOS, chat template)."""
        return self.reference_tokens - self.words


@dataclass
class BenchRun:
    calibration: Calibration
    records: list[RequestRecord] = field(default_factory=list)
    started_unix_s: float = 0.0
    power: list[PowerSample] = field(default_factory=list)
    power_reported: bool | None = None  # None: no cluster view; False: no node has power


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


def _spec(
    config: BenchConfig,
    calibration: Calibration,
    level: int,
    index: int,
    warmup: bool,
    history: Sequence[dict[str, str]] = (),
    turn: int | None = None,
) -> RequestSpec:
    """Request `index` of `level`: its prompt of WORDS, and its own drawn lengths when the
    lengths are distributions."""
    words = calibration.words
    if config.prompt_lengths is not None and config.prompt_lengths.fixed is None:
        drawn = config.prompt_lengths.draw(length_rng(config.seed, "prompt", level, index))
        words = words_for(drawn, calibration.overhead)
    max_tokens = config.output_tokens
    if config.output_lengths is not None:
        max_tokens = config.output_lengths.draw(length_rng(config.seed, "output", level, index))
    text = prompt_text(words, request_rng(config.seed, level, index))
    body = payload(config.target, text, max_tokens, config.sampling, history)
    return RequestSpec(level, index, warmup, body, turn)


def system_prompt(config: BenchConfig) -> list[dict[str, str]]:
    """The system message every simulated user shares (none without --system-tokens)."""
    if not config.system_tokens:
        return []
    text = prompt_text(config.system_tokens, random.Random(f"{config.seed}:system"))
    return [{"role": "system", "content": text}]


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


Turn = Callable[[int, bool, list[dict[str, str]], int], Any]  # -> the reply's text


async def _conversations(
    send_turn: Turn,
    streams: int,
    first: int,
    count: int | None,
    deadline: float | None,
    warmup: bool,
    turns: int,
    system: list[dict[str, str]],
) -> None:
    """`streams` simulated users, each holding chats of `turns` turns one after another:
    every turn sends the shared system prompt, the user's history and a new message, and
    keeps the reply; a new chat starts with the system prompt alone."""
    taken = first

    def more() -> bool:
        return (count is None or taken < first + count) and (
            deadline is None or time.monotonic() < deadline
        )

    async def user() -> None:
        nonlocal taken
        while more():
            history = list(system)
            for turn in range(1, turns + 1):
                if not more():
                    return
                index = taken
                taken += 1
                history = await send_turn(index, warmup, history, turn)

    await asyncio.gather(*(user() for _ in range(streams)))


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
        if config.energy:
            power = await cluster_power(client, config.target)
            run.power_reported = None if power is None else bool(power)
        for n, level in enumerate(config.levels):
            sampler = (
                asyncio.create_task(_sample_power(client, config, run, n))
                if run.power_reported
                else None
            )
            try:
                await _run_level(client, config, run, n, level, clock, progress)
            finally:
                if sampler is not None:
                    sampler.cancel()
                    await asyncio.gather(sampler, return_exceptions=True)
        failed = [r for r in run.records if not r.warmup and not r.ok]
        if failed and len(failed) == sum(not r.warmup for r in run.records):
            first = failed[0]
            raise BenchError(f"every request failed; the first: {first.error}: {first.detail}")
        return run


async def _sample_power(
    client: httpx.AsyncClient, config: BenchConfig, run: BenchRun, n: int
) -> None:
    """Reads every node's power from /v1/cluster each POWER_POLL_S while level `n` runs
    (warm-up included: a node's sample lags its heartbeat)."""
    while True:
        for node, (taken, watts, source) in (
            await cluster_power(client, config.target) or {}
        ).items():
            run.power.append(PowerSample(n, node, taken, watts, source))
        await asyncio.sleep(POWER_POLL_S)


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
        spec = _spec(config, run.calibration, n, index, warmup)
        record = await stream_request(client, config.target, spec, clock)
        run.records.append(record)
        if progress and not warmup:
            progress(n, record)

    async def send_turn(
        index: int, warmup: bool, history: list[dict[str, str]], turn: int
    ) -> list[dict[str, str]]:
        spec = _spec(config, run.calibration, n, index, warmup, history, turn)
        reply: list[str] = []
        record = await stream_request(client, config.target, spec, clock, reply)
        run.records.append(record)
        if progress and not warmup:
            progress(n, record)
        # A failed turn still leaves the user's message and what came back in the history.
        return [*spec.body["messages"], {"role": "assistant", "content": "".join(reply)}]

    first = config.warmup
    if config.turns > 1 or config.system_tokens:
        system = system_prompt(config)
        deadline = time.monotonic() + config.duration_s if config.duration_s else None
        if config.warmup:
            await _conversations(send_turn, level.streams, 0, config.warmup, None, True,
                                 config.turns, system)  # fmt: skip
        if progress:
            progress(n, None)
        await _conversations(send_turn, level.streams, first, config.requests, deadline, False,
                             config.turns, system)  # fmt: skip
        return
    if config.warmup:
        await _closed_loop(send, level.streams, 0, config.warmup, None, warmup=True)
    if progress:
        progress(n, None)  # the measured part starts
    if level.kind == "concurrency":
        deadline = time.monotonic() + config.duration_s if config.duration_s else None
        await _closed_loop(send, level.streams, first, config.requests, deadline, warmup=False)
    else:
        rng = random.Random(f"{config.seed}:arrivals:{n}")
        offsets = arrival_offsets(level, rng, config.requests, config.duration_s)
        await _open_loop(send, offsets, first)
