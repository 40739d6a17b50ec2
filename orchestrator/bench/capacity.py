"""`llamaherd capacity`: the largest number of concurrent streams one node sustains for one
model within an SLO, and the prefill and decode rates that explain it.

The sweep runs bench's machinery (orchestrator.bench.run) one concurrency level at a time
through the gateway, every request pinned to the node with the x-llamaherd-node header: 1,
2, 4, ... until a level misses the SLO (or --max-concurrency), then bisects between the last
level that met it and the first that did not. A level meets the SLO when every request was
served and each term holds on the level's aggregate figure (ttft_p99 over its requests).

The context the model is loaded with (n_ctx) is the replica's, read from /v1/cluster:
reloading a model with another context is placement's business (the catalog's n_ctx), not
something a benchmark should do behind its back. What the sweep varies instead is the
context *used*: `--prompt-tokens 128,1024` sweeps each prompt length, and the capacity
recorded is that of the longest (it holds for every shorter prompt).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from orchestrator.bench.client import BenchError, Target
from orchestrator.bench.metrics import LevelFigures, SloTerm, level_figures
from orchestrator.bench.run import BenchConfig, run_bench
from orchestrator.bench.workload import Level
from orchestrator.cluster.capacity import CapacityRecord
from orchestrator.cluster.view import ClusterView, view_from_json

PIN_HEADER = "x-llamaherd-node"
_QUANT = re.compile(r"(?i)(?:^|[-_.])((?:i?q\d(?:_[a-z0-9]+)*)|bf16|f16|f32)(?=\.gguf$|[-.]|$)")


@dataclass(frozen=True)
class PinnedTarget(Target):
    """A bench Target whose every request asks the gateway for one node."""

    node: str = ""

    @property
    def headers(self) -> dict[str, str]:
        headers = dict(super().headers)
        if self.node:
            headers[PIN_HEADER] = self.node
        return headers


# ---- the sweep's decisions (pure) -------------------------------------------------------
def next_concurrency(outcomes: Mapping[int, bool], max_concurrency: int) -> int | None:
    """The next concurrency to try given the levels tried so far (level -> met the SLO), or
    None when the largest passing level is known: double from 1 while levels pass (capped
    at `max_concurrency`), then bisect between the last pass and the first failure."""
    if not outcomes:
        return 1
    passed = [c for c, ok in outcomes.items() if ok]
    failed = [c for c, ok in outcomes.items() if not ok]
    low = max(passed, default=0)
    high = min((c for c in failed if c > low), default=None)
    if high is None:
        if low >= max_concurrency:
            return None
        return min(low * 2, max_concurrency)
    if high - low <= 1:
        return None
    return (low + high) // 2


def max_streams(outcomes: Mapping[int, bool]) -> int:
    """The largest level that met the SLO below every level that did not; 0 when none did."""
    failed = [c for c, ok in outcomes.items() if not ok]
    first_fail = min(failed, default=None)
    passing = [c for c, ok in outcomes.items() if ok and (first_fail is None or c < first_fail)]
    return max(passing, default=0)


def meets_slo(figures: LevelFigures) -> bool:
    """Every request served and every SLO term held (no SLO: every request served)."""
    return (
        figures.completed == figures.requests
        and figures.requests > 0
        and all(figures.slo_met.values())
    )


def quant_of(path: str) -> str:
    """The quantization a GGUF file name states (gemma-3-270m-q4_k_m.gguf -> Q4_K_M)."""
    match = _QUANT.search(path.rsplit("/", 1)[-1])
    return match.group(1).upper() if match else ""


# ---- the measurement ------------------------------------------------------------------
@dataclass(frozen=True)
class CapacityConfig:
    target: Target  # the gateway's base URL, the model, the API key
    node: str | None  # None: the one node that serves the model
    slo: tuple[SloTerm, ...]
    prompt_tokens: tuple[int, ...] = (128,)
    output_tokens: int = 64
    max_concurrency: int = 16
    requests_per_stream: int = 3  # measured requests per level: this many per stream ...
    min_requests: int = 6  # ... and at least this many
    warmup: int = 1
    seed: int = 0
    ban_tokens: tuple[int, ...] = ()
    timeout_s: float = 300.0
    contexts: tuple[int, ...] = ()  # --n-ctx: each must be the replica's loaded n_ctx


@dataclass(frozen=True)
class Replica:
    """The replica measured, as /v1/cluster describes it."""

    node: str
    n_ctx: int
    model_sha256: str
    quant: str


@dataclass(frozen=True)
class LevelResult:
    prompt_tokens: int
    concurrency: int
    met: bool
    figures: LevelFigures


@dataclass
class CapacityResult:
    replica: Replica
    levels: list[LevelResult] = field(default_factory=list)
    records: list[CapacityRecord] = field(default_factory=list)  # one per prompt length

    @property
    def record(self) -> CapacityRecord:
        """The one to store: the longest prompt's."""
        return max(self.records, key=lambda r: r.prompt_tokens)


# (prompt tokens, concurrency) of a level that starts, or None; then each finished request
LevelStarted = Callable[[int, int, int], None]  # prompt tokens, concurrency, requests


async def fetch_view(client: httpx.AsyncClient, target: Target) -> ClusterView:
    """The gateway's /v1/cluster; BenchError when it has none (not llamaherd's gateway)."""
    url = f"{target.url}/cluster"
    try:
        reply = await client.get(url, headers=target.headers)
    except (httpx.ConnectError, httpx.TimeoutException) as exc:
        raise BenchError(f"cannot reach {url}: {exc}; is the gateway running? (make run)") from None
    if reply.status_code != 200:
        raise BenchError(
            f"{url} answered {reply.status_code}: llamaherd capacity measures through a "
            "llamaherd gateway (pass its API base with --url; an API key with --api-key-env)"
        )
    try:
        return view_from_json(reply.json())
    except ValueError:
        raise BenchError(f"{url} did not answer a llamaherd cluster view") from None


def find_replica(view: ClusterView, model: str, node: str | None) -> Replica:
    """The ready replica of `model` to measure; BenchError naming what is served instead."""
    serving = {
        entry.status.node_id: replica
        for entry in view.nodes
        if entry.up
        for replica in entry.status.models
        if replica.alias == model and replica.ready
    }
    if node is None:
        if not serving:
            raise BenchError(f"no node serves model {model!r} now; llamaherd status shows why")
        if len(serving) > 1:
            listed = ", ".join(sorted(serving))
            raise BenchError(f"several nodes serve {model!r} ({listed}): pick one with --node")
        node = next(iter(serving))
    if node not in serving:
        known = {e.status.node_id: e for e in view.nodes}
        if node not in known:
            names = ", ".join(sorted(known)) or "none"
            raise BenchError(f"no node {node!r} in the cluster; nodes: {names}")
        models = ", ".join(m.alias for m in known[node].status.models if m.ready) or "none"
        others = ", ".join(sorted(serving)) or "none"
        raise BenchError(
            f"node {node!r} does not serve model {model!r} (it serves: {models}); "
            f"nodes serving it: {others}"
        )
    replica = serving[node]
    source = replica.config.source
    return Replica(
        node=node,
        n_ctx=replica.config.n_ctx,
        model_sha256=source.sha256 if source is not None else "",
        quant=quant_of(source.name if source is not None else replica.config.path),
    )


def check_contexts(replica: Replica, model: str, contexts: Sequence[int]) -> None:
    """BenchError unless every context asked for is the one the replica is loaded with."""
    others = sorted(set(contexts) - {replica.n_ctx})
    if others:
        raise BenchError(
            f"node {replica.node} serves {model} with n_ctx {replica.n_ctx}, not "
            f"{', '.join(map(str, others))}; a benchmark does not reload models: change the "
            "catalog's n_ctx and let placement reload it, or sweep the context used with "
            "--prompt-tokens"
        )


async def measure_capacity(
    config: CapacityConfig, started: LevelStarted | None = None, progress: Any = None
) -> CapacityResult:
    """Sweeps each prompt length; BenchError when the node or model cannot be measured."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as client:
        view = await fetch_view(client, config.target)
        replica = find_replica(view, config.target.model, config.node)
        check_contexts(replica, config.target.model, config.contexts)
        target = PinnedTarget(**_target_fields(config.target), node=replica.node)
        result = CapacityResult(replica)
        for prompt_tokens in config.prompt_tokens:
            await _sweep(config, target, prompt_tokens, result, started, progress)
    return result


def _target_fields(target: Target) -> dict[str, Any]:
    return {"url": target.url, "model": target.model, "api": target.api, "api_key": target.api_key}


async def _sweep(
    config: CapacityConfig,
    target: PinnedTarget,
    prompt_tokens: int,
    result: CapacityResult,
    started: LevelStarted | None,
    progress: Any,
) -> None:
    outcomes: dict[int, bool] = {}
    figures: dict[int, LevelFigures] = {}
    watts: dict[int, list[float]] = {}  # the node's power readings per level (bench's)
    while (streams := next_concurrency(outcomes, config.max_concurrency)) is not None:
        requests = max(config.requests_per_stream * streams, config.min_requests)
        if started:
            started(prompt_tokens, streams, requests)
        bench = BenchConfig(
            target=target, levels=(Level("concurrency", streams),), prompt_tokens=prompt_tokens,
            output_tokens=config.output_tokens, requests=requests, warmup=config.warmup,
            seed=config.seed, slo=config.slo, ban_tokens=config.ban_tokens,
            timeout_s=config.timeout_s,
        )  # fmt: skip
        run = await run_bench(bench, progress)
        level = level_figures(run.records, config.slo)
        outcomes[streams] = meets_slo(level)
        figures[streams] = level
        watts[streams] = [p.watts for p in run.power if p.node == target.node]
        result.levels.append(LevelResult(prompt_tokens, streams, outcomes[streams], level))
    best = max_streams(outcomes)
    record = _record(config, result.replica, prompt_tokens, best, figures)
    readings = watts[best or 1]
    if readings:
        record = replace(record, watts=sum(readings) / len(readings))
    result.records.append(record)


def _record(
    config: CapacityConfig,
    replica: Replica,
    prompt_tokens: int,
    best: int,
    figures: Mapping[int, LevelFigures],
) -> CapacityRecord:
    """The record of one prompt length: prefill from the lone stream's TTFT, decode and
    end-to-end time at the best level (at 1 stream when none met the SLO)."""
    alone = figures[1]
    at = figures[best or 1]
    ttft = alone.ttft.mean if alone.ttft else 0.0
    tpot = at.tpot.mean if at.tpot else 0.0
    measured_prompt = round(alone.prompt_tokens.mean) if alone.prompt_tokens else prompt_tokens
    return CapacityRecord(
        node=replica.node,
        model=config.target.model,
        n_ctx=replica.n_ctx,
        slo=",".join(term.text for term in config.slo),
        max_streams=best,
        prefill_tps=measured_prompt / ttft if ttft > 0 else 0.0,
        decode_tps_stream=1 / tpot if tpot > 0 else 0.0,
        decode_tps_total=at.output_token_throughput,
        e2e_s=at.e2e.mean if at.e2e else 0.0,
        prompt_tokens=measured_prompt,
        output_tokens=config.output_tokens,
        measured_at=time.time(),
        model_sha256=replica.model_sha256,
        quant=replica.quant,
    )


def sweep_seconds(levels: Sequence[LevelResult]) -> float:
    """The measured time of the levels, for the report."""
    return sum(level.figures.window_s for level in levels)
