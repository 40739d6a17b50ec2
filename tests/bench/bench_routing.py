"""Routing policies side by side on three namespaced, CPU-limited hosts (issue 19, deliverable 6).

Three network namespaces stand for three boards (tests.support.netns; needs root), each in a
cgroup (v1 cpu controller) of its own capped at --cpus-per-host CPUs, so the three run like
three small boards rather than sharing the machine's cores. Each runs a real `llamaherd
worker` holding the embedded Gemma 3 270M (one thread, --slots sequence slots). A real
`llamaherd coordinator` runs in the root namespace (registry on the bridge, gateway on
loopback) with --routing-policy set. The policy is coordinator configuration, so a switch
restarts the coordinator the way it is built to restart (ControlPlane below): the detached
control plane stays, the new coordinator replaces only the gateway, and the workers keep
their registration, their loaded models and their measured speeds.

Three workloads, each a fixed schedule built from --seed, the same for every policy:

  shared  multi-turn chats (--turns turns) that all open with one of --system-prompts long
          shared system prompts (excerpts of the Apache 2.0 text, a few hundred tokens);
          each turn sends the whole history, the replies as they came, with the OpenAI
          `user` field set to the conversation id;
  none    single-turn requests with no shared prefix (each opens with its own id);
  mixed   about a quarter of the requests in shared chats as above, the rest as `none`.

Load: --clients concurrent clients (a closed loop, by default one per slot of the cluster)
work through the segment's fixed list of items, each taking the next one when done with its
own, a chat's turns one after the other: shared, one chat per client; none, --singles
single requests; mixed, those singles after about a third as many chat turns. A fixed
number of clients rather than open-loop arrivals because this machine is shared: an arrival
rate calibrated to load the cluster while the machine is quiet overloads it without bound
when other work starts, while a fixed concurrency stays stable and bounds every segment's
length, and loads the cluster either way (every slot busy while the work is spread evenly).
A policy that piles onto one node or misses the caches pays in TTFT (requests queue for a
slot, or share a host's CPU) and in throughput (the same work takes longer).

Every segment's prompts (and session keys) open with a segment tag, so no policy finds a
cache or a session its predecessor left. Policies run in a new order each round
(round_order: reversed every other round, so drift in the machine's load favours none).
Reported per workload and policy: TTFT p50/p99 (streamed, at the client), completion
tokens/s and requests/s (served requests over the segments' wall time, from the first
request to the last reply), the TTFT p50 ratio to round-robin's and to least-loaded's, the
throughput ratio to least-loaded's, the busiest node's share of requests, and the share of
the chats' later turns served by the node that served the turn before (where its cache is).

    .venv/bin/python tests/bench/bench_routing.py [--quick] [--json out.json] \\
        [--plot docs/routing-bench.svg] [--policies round-robin,least-loaded,...]

Cleanup (namespaces, cgroups, workers, coordinators) runs on every exit but kill -9.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import importlib.util
import json
import os
import random
import shlex
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from support.auth import use_run_token  # noqa: E402
from support.cluster import Coordinator, ready_replicas, start_coordinator, wait_for  # noqa: E402
from support.netns import Host, Network, network  # noqa: E402
from support.worker_process import WorkerProcess, free_port, start_worker  # noqa: E402

from orchestrator.bench.client import RequestSpec, Target, payload, stream_request  # noqa: E402
from orchestrator.bench.metrics import RequestRecord, percentile  # noqa: E402
from orchestrator.reaper import reap  # noqa: E402
from orchestrator.routing.policies import DEFAULT_POLICY, POLICY_NAMES  # noqa: E402

ALIAS = "gemma-bench"
CPU_ROOT = Path("/sys/fs/cgroup/cpu")
CFS_PERIOD_US = 100_000
TEXT = ROOT / "tests" / "support" / "texts" / "apache-2.0.txt"
WORKLOADS = ("shared", "none", "mixed")
MIXED_SHARED = 0.25  # the share of requests in shared chats in the mixed workload
_COMPARED = ("round-robin", "least-loaded", DEFAULT_POLICY, "least-expected-latency")
WANTED = tuple(dict.fromkeys((*_COMPARED, "session-affinity", "prefix-cache")))
TOPICS = ("warranty", "patents", "trademarks", "liability", "notices", "derivative works",
          "contributions", "redistribution", "sublicensing", "termination")  # fmt: skip


# ---- hosts limited to their own share of CPU --------------------------------------------------
@dataclass(frozen=True)
class LimitedHost(Host):
    """A namespaced host whose processes start in its own cpu cgroup: the command joins the
    group (its children inherit it) before it enters the namespace."""

    cgroup: str = ""

    def exec_prefix(self) -> list[str]:
        join = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        return ["sh", "-c", join, self.cgroup, *super().exec_prefix()]


@contextmanager
def cpu_groups(count: int, cpus: float) -> Iterator[list[Path]]:
    """`count` cgroups (v1 cpu controller) capped at `cpus` CPUs each; removed afterwards,
    any process still in one moved back to the root group first (rmdir refuses otherwise)."""
    if not (CPU_ROOT / "cgroup.procs").exists():
        raise SystemExit(f"no cgroup v1 cpu controller at {CPU_ROOT}: cannot limit the hosts")
    made: list[Path] = []
    try:
        for i in range(count):
            group = CPU_ROOT / f"llamaherd-bench-{os.getpid()}-h{i}"
            group.mkdir()
            made.append(group)
            (group / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(round(cpus * CFS_PERIOD_US)))
        yield made
    finally:
        for group in reversed(made):
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    (CPU_ROOT / "cgroup.procs").write_text(pid)
            group.rmdir()


def throttled_s(group: Path) -> float:
    """Seconds the group's processes were held back by its quota so far."""
    for line in (group / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "throttled_time":
            return int(value) / 1e9
    return 0.0


# ---- workloads ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chat:
    """A conversation: a shared system prompt, then its questions, one per turn."""

    key: str  # the OpenAI `user` field: the session key
    system: int  # which shared system prompt
    questions: tuple[str, ...]


@dataclass(frozen=True)
class Single:
    key: str
    prompt: str


Item = Chat | Single


@dataclass(frozen=True)
class Sizes:
    clients: int
    singles: int  # single requests in a `none` segment, and in a `mixed` one
    turns: int
    system_prompts: int
    system_words: int
    single_words: int
    max_tokens: int


def text_words() -> list[str]:
    return TEXT.read_text().split()


def system_prompts(words: Sequence[str], count: int, length: int) -> list[str]:
    """`count` excerpts of `length` words from evenly spaced places of the text: openings that
    differ from their first words on, as different assistants' instructions would."""
    step = max(1, (len(words) - length) // max(1, count))
    return [
        "You answer questions about the licence text below, briefly and precisely.\n\n"
        + " ".join(words[i * step : i * step + length])
        for i in range(count)
    ]


def mixed_chats(singles: int, turns: int) -> int:
    """Chats beside `singles` single requests such that about MIXED_SHARED of the requests
    are chat turns (at least one)."""
    return max(1, round(singles * MIXED_SHARED / ((1 - MIXED_SHARED) * turns)))


def build_items(
    workload: str, sizes: Sizes, words: Sequence[str], rng: random.Random
) -> list[Item]:
    """The workload's fixed sequence of conversations and single requests, which the clients
    take in this order. shared: one chat per client; none: `sizes.singles` single requests;
    mixed: those singles after a quarter's worth of chats. The chats come first, so that a
    chat's turns, which follow one another, run beside the singles instead of after them."""
    chats = {"shared": sizes.clients, "none": 0,
             "mixed": mixed_chats(sizes.singles, sizes.turns)}[workload]  # fmt: skip
    singles = 0 if workload == "shared" else sizes.singles
    items: list[Item] = []
    for n in range(chats):
        key = f"{workload}-chat-{n}"
        questions = tuple(
            f"Question {t + 1} from {key}: what does the text say about "
            f"{rng.choice(TOPICS)}? Answer in one sentence."
            for t in range(sizes.turns)
        )
        items.append(Chat(key, rng.randrange(sizes.system_prompts), questions))
    for n in range(singles):
        key = f"{workload}-single-{n}"
        start = rng.randrange(len(words) - sizes.single_words)
        excerpt = " ".join(words[start : start + sizes.single_words])
        items.append(Single(key, f"Request {key}, {rng.random():.6f}: summarise this.\n{excerpt}"))
    return items


# ---- one segment: one workload under one policy --------------------------------------------
@dataclass
class Segment:
    workload: str
    policy: str
    round: int
    wall_s: float  # from the first request to the last reply
    records: list[RequestRecord]
    sessions: list[str | None] = field(default_factory=list)  # each record's chat, if any
    trace: list[dict[str, Any]] | None = None  # --trace: the gateway's view, polled

    @property
    def ok(self) -> list[RequestRecord]:
        return [r for r in self.records if r.ok]

    def follow_ups(self) -> tuple[int, int]:
        """(chat turns after the first, those served by the node of the turn before)."""
        last: dict[str, str | None] = {}
        turns = kept = 0
        for record, session in zip(self.records, self.sessions, strict=True):
            if session is None or not record.ok:
                continue
            if session in last:
                turns += 1
                kept += record.node == last[session]
            last[session] = record.node
        return turns, kept


async def run_segment(
    base_url: str,
    items: Sequence[Item],
    systems: Sequence[str],
    tag: str,
    sizes: Sizes,
    trace: list[dict[str, Any]] | None = None,
) -> tuple[float, list[RequestRecord], list[str | None]]:
    """`sizes.clients` clients take the items in order until none is left, each sending its
    item's requests one after the other (a chat's turns with the history so far). Returns
    the wall time, every request, and each one's session key (None for a single). With
    `trace`, the gateway's view of the nodes is polled into it meanwhile (poll_cluster)."""
    target = Target(base_url, ALIAS, api="chat")
    sampling = {"temperature": 0, "ignore_eos": True}
    records: list[RequestRecord] = []
    sessions: list[str | None] = []
    queue = iter(items)
    started = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - started

    async def send(
        client: httpx.AsyncClient,
        prompt: str,
        history: list[dict[str, str]],
        user: str | None,
        turn: int | None,
        reply: list[str] | None = None,
    ) -> RequestRecord:
        body = payload(target, prompt, sizes.max_tokens, sampling, history)
        if user is not None:
            body["user"] = user
        spec = RequestSpec(level=0, index=len(records), warmup=False, body=body, turn=turn)
        record = await stream_request(client, target, spec, clock, reply)
        records.append(record)
        sessions.append(user)
        return record

    async def client_loop(client: httpx.AsyncClient) -> None:
        for item in queue:  # one iterator shared by every client: each item is taken once
            if isinstance(item, Single):
                await send(client, f"[{tag}] {item.prompt}", [], None, None)
                continue
            history = [{"role": "system", "content": f"[{tag}] {systems[item.system]}"}]
            for turn, question in enumerate(item.questions, 1):
                reply: list[str] = []
                record = await send(client, question, history, f"{tag}/{item.key}", turn, reply)
                if not record.ok:
                    break  # the conversation cannot go on without its reply
                history += [{"role": "user", "content": question},
                            {"role": "assistant", "content": "".join(reply)}]  # fmt: skip

    limits = httpx.Limits(max_connections=sizes.clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        poller = None
        if trace is not None:
            poller = asyncio.create_task(poll_cluster(client, base_url, clock, trace))
        try:
            await asyncio.gather(*(client_loop(client) for _ in range(sizes.clients)))
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
    return time.perf_counter() - started, records, sessions


TRACE_INTERVAL_S = 0.1


async def poll_cluster(
    client: httpx.AsyncClient, base_url: str, clock: Callable[[], float], out: list[dict[str, Any]]
) -> None:
    """Diagnostics (--trace): every TRACE_INTERVAL_S, what the gateway knows of each node
    (/v1/cluster: the last report's load and rates, its age, the gateway's in-flight count),
    appended to `out` with the segment's clock reading, until cancelled."""
    while True:
        reply = await client.get(f"{base_url.removesuffix('/v1')}/v1/cluster")
        reply.raise_for_status()
        at = clock()
        nodes: dict[str, dict[str, float]] = {}
        for node in reply.json()["nodes"]:
            status = node["status"]
            model = next((m for m in status["models"] if m["alias"] == ALIAS), None)
            if model is None:
                continue
            engine = model["engine"]
            nodes[status["node_id"]] = {
                "load": engine["queued"] + engine["active"], "active": engine["active"],
                "queued": engine["queued"], "decode_tps": engine["decode_tps"],
                "prompt_tps": engine["prompt_tps"], "inflight": node["gateway_inflight"],
                "report_age_s": node["seconds_since_report"],
            }  # fmt: skip
        out.append({"t": at, "nodes": nodes})
        await asyncio.sleep(TRACE_INTERVAL_S)


# ---- the cluster ------------------------------------------------------------------------------
def model_settings(slots: int) -> dict[str, Any]:
    return {"alias": ALIAS, "path": "builtin:gemma-3-270m", "n_ctx": 2048, "n_parallel": slots,
            "n_threads": 1, "flash_attn": "off"}  # fmt: skip


def start_workers(
    stack: ExitStack, workdir: Path, hosts: Sequence[Host], registry: str, slots: int
) -> list[WorkerProcess]:
    """A worker on each host, started together (each takes a while on its CPU share)."""
    config = {"models": [model_settings(slots)], "log_level": "WARNING",
              "reference_speed": False, "coordinator_lost_exit_s": 0}  # fmt: skip

    def start(index: int) -> WorkerProcess:
        return start_worker(
            workdir, config, "--coordinator", registry, "--node-id", f"host{index}",
            "--heartbeat-interval-s", "0.5", name=f"host{index}", host=hosts[index],
            ready_timeout=300,
        )  # fmt: skip

    workers: list[WorkerProcess] = []
    failure: BaseException | None = None
    with ThreadPoolExecutor(len(hosts)) as pool:
        for future in [pool.submit(start, i) for i in range(len(hosts))]:
            try:
                worker = future.result()
            except BaseException as exc:  # the others still need stopping
                failure = failure or exc
                continue
            stack.callback(worker.stop)
            workers.append(worker)
    if failure is not None:
        raise failure
    return workers


class ControlPlane:
    """One control plane for the whole run, its routing policy switched between segments.

    The policy is gateway configuration, so a switch is the restart path `llamaherd
    coordinator` is built for: the running coordinator is killed (its detached Ray head,
    registry, placement and gateway keep serving), and a coordinator with the next
    --routing-policy adopts them, replacing only the gateway, whose settings changed. The
    workers stay registered and their models loaded; a switch takes seconds, not the
    ~40 s of a fresh Ray on this machine. A clean stop of the last one ends the plane.
    """

    def __init__(self, workdir: Path, net: Network, slots: int, hosts: int) -> None:
        self.workdir = workdir
        self.net = net
        self.catalog = [{**model_settings(slots), "replicas": hosts}]
        self.hosts = hosts
        self.ports = (free_port(), free_port(), free_port())
        self.current: Coordinator | None = None
        self.switches = 0

    @property
    def registry(self) -> str:
        return f"{self.net.gateway}:{self.ports[0]}"

    def route_with(self, policy: str) -> Coordinator:
        """The plane's gateway routing with `policy`, once it sees every host's replica."""
        if self.current is not None:
            self.current.stop(signal.SIGKILL)  # the plane stays; the successor adopts it
        self.switches += 1
        # A log of its own: start_coordinator waits for its endpoints to be printed there.
        self.current = start_coordinator(
            self.workdir, self.catalog, "--host", self.net.gateway, "--routing-policy", policy,
            "--log-level", "WARNING", ports=self.ports,
            name=f"coordinator-{self.switches:02d}-{policy}", ready_timeout=180,
        )  # fmt: skip
        coordinator = self.current
        wait_for(
            lambda: len(ready_replicas(coordinator).get(ALIAS, ())) == self.hosts,
            180, f"{self.hosts} ready replicas behind the {policy} gateway",
        )  # fmt: skip
        return coordinator

    def stop(self) -> None:
        """A clean stop ends the actors and the Ray head; whatever a failed start left of
        this run's head (its record still there) is reaped by its session directory."""
        # Imported here: orchestrator.runtime imports Ray, which the rest of the script (and
        # its unit test) does without.
        from orchestrator.runtime import HEAD_RECORD, read_head_record

        if self.current is not None:
            self.current.stop()
        state_dir = self.workdir / "coordinator-state"
        record = read_head_record(state_dir)
        if record is not None:
            ray_spec = importlib.util.find_spec("ray")
            if ray_spec is not None and ray_spec.origin is not None:
                reap(Path(record.session_dir), Path(ray_spec.origin).parent, why="bench ends")
            (state_dir / HEAD_RECORD).unlink(missing_ok=True)


# ---- figures ----------------------------------------------------------------------------------
@dataclass
class Figures:
    requests: int = 0
    failed: int = 0
    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0
    nodes: Counter[str] = field(default_factory=Counter)
    follow_ups: int = 0
    kept: int = 0

    def add(self, segment: Segment) -> None:
        self.requests += len(segment.records)
        self.failed += len(segment.records) - len(segment.ok)
        self.ttft += [r.ttft for r in segment.ok]
        self.tokens += sum(r.output_tokens for r in segment.ok)
        self.wall_s += segment.wall_s
        self.nodes.update(r.node or "?" for r in segment.ok)
        turns, kept = segment.follow_ups()
        self.follow_ups += turns
        self.kept += kept

    def summary(self) -> dict[str, Any]:
        served = self.requests - self.failed
        return {
            "requests": self.requests,
            "failed": self.failed,
            "ttft_p50_s": percentile(self.ttft, 50) if self.ttft else None,
            "ttft_p99_s": percentile(self.ttft, 99) if self.ttft else None,
            "tokens_per_s": self.tokens / self.wall_s if self.wall_s else None,
            "requests_per_s": served / self.wall_s if self.wall_s else None,
            "wall_s": self.wall_s,
            "busiest_node_share": max(self.nodes.values()) / served if served else None,
            "requests_per_node": dict(sorted(self.nodes.items())),
            # Of the chats' later turns, the share served where the turn before was.
            "turns_kept_on_node": self.kept / self.follow_ups if self.follow_ups else None,
        }


def summarise(segments: Sequence[Segment], policies: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per workload and policy: the figures, and ratios to round-robin and least-loaded."""
    out: dict[str, dict[str, Any]] = {}
    for workload in WORKLOADS:
        by_policy: dict[str, Any] = {}
        for policy in policies:
            figures = Figures()
            for segment in segments:
                if segment.workload == workload and segment.policy == policy:
                    figures.add(segment)
            by_policy[policy] = figures.summary()
        for summary in by_policy.values():
            summary["ttft_p50_vs_round_robin"] = _ratio(summary, by_policy.get("round-robin"),
                                                        "ttft_p50_s")  # fmt: skip
            summary["ttft_p50_vs_least_loaded"] = _ratio(summary, by_policy.get("least-loaded"),
                                                         "ttft_p50_s")  # fmt: skip
            summary["tokens_per_s_vs_least_loaded"] = _ratio(
                summary, by_policy.get("least-loaded"), "tokens_per_s"
            )
        out[workload] = by_policy
    return out


def diagnose(segments: Sequence[Segment], slots: int) -> dict[str, dict[str, Any]]:
    """Diagnostics (--trace), per workload and policy, from where each request went (the
    clients' records) and what the gateway knew then (the last poll before it was sent):

      misrouted   sent to a node with more requests in flight (the clients' own count)
                  than another node had then: least-loaded with fresh figures never does;
      queued      sent to a node whose slots were all busy then (it waited for one);
      view_ties   the gateway's view (load = max(reported, in flight), as Candidate.load)
                  had two or more nodes at the lowest load: the tie-break decided;
      off_least   sent to a node the view did not have at the lowest load: the rates decided;
      rate_spread the fastest node's reported decode rate over the slowest's (median);
      rate_at_active  the median reported per-sequence rate by the reporting node's number of
                  running sequences (is a busy node's rate lower because it is busy?).
    """
    out: dict[str, dict[str, Any]] = {}
    for segment in segments:
        if not segment.trace:
            continue
        ok = segment.ok
        times = [poll["t"] for poll in segment.trace]
        tally = out.setdefault(segment.workload, {}).setdefault(segment.policy, {
            "requests": 0, "misrouted": 0, "queued": 0, "view_ties": 0, "off_least": 0,
            "spreads": [], "by_active": {},
        })  # fmt: skip
        for poll in segment.trace:
            for figures in poll["nodes"].values():
                if figures["decode_tps"] > 0:
                    active = str(int(figures["active"]))
                    tally["by_active"].setdefault(active, []).append(figures["decode_tps"])
        for record in ok:
            at = bisect.bisect_right(times, record.sent_s) - 1
            if at < 0 or record.node is None:
                continue
            view = segment.trace[at]["nodes"]
            if record.node not in view:
                continue
            running = dict.fromkeys(view, 0)
            for other in ok:
                if other is not record and other.sent_s < record.sent_s < other.done_s:
                    running[other.node or "?"] = running.get(other.node or "?", 0) + 1
            seen = {n: max(f["load"], running.get(n, 0)) for n, f in view.items()}
            lowest = min(seen.values())
            tally["requests"] += 1
            tally["misrouted"] += running[record.node] > min(running[n] for n in view)
            tally["queued"] += running[record.node] >= slots
            tally["view_ties"] += sum(load == lowest for load in seen.values()) >= 2
            tally["off_least"] += seen[record.node] > lowest
            rates = [f["decode_tps"] for f in view.values() if f["decode_tps"] > 0]
            if len(rates) >= 2:
                tally["spreads"].append(max(rates) / min(rates))
    for by_policy in out.values():
        for policy, tally in by_policy.items():
            n = max(tally["requests"], 1)
            by_policy[policy] = {
                "requests": tally["requests"],
                **{k: tally[k] / n for k in ("misrouted", "queued", "view_ties", "off_least")},
                "rate_spread_p50": percentile(tally["spreads"], 50) if tally["spreads"] else None,
                "rate_at_active_p50": {a: percentile(v, 50)
                                       for a, v in sorted(tally["by_active"].items())},
            }  # fmt: skip
    return out


def _ratio(summary: dict[str, Any], reference: dict[str, Any] | None, key: str) -> float | None:
    if reference is None or not summary.get(key) or not reference.get(key):
        return None
    return float(summary[key]) / float(reference[key])


def table(summary: dict[str, dict[str, Any]], title: str) -> Table:
    grid = Table(title=title)
    for name, justify in [("workload", "left"), ("policy", "left"), ("requests", "right"),
                          ("TTFT p50 s", "right"), ("p99 s", "right"), ("p50 ÷ RR", "right"),
                          ("p50 ÷ LL", "right"), ("tok/s", "right"), ("req/s", "right"),
                          ("tok/s ÷ LL", "right"), ("busiest node", "right"),
                          ("turns kept", "right")]:  # fmt: skip
        grid.add_column(name, justify=justify)  # type: ignore[arg-type]
    for workload, by_policy in summary.items():
        for policy, s in by_policy.items():
            grid.add_row(
                workload, policy,
                _served(s),
                _num(s["ttft_p50_s"], 2), _num(s["ttft_p99_s"], 2),
                _x(s["ttft_p50_vs_round_robin"]), _x(s["ttft_p50_vs_least_loaded"]),
                _num(s["tokens_per_s"], 1), _num(s["requests_per_s"], 2),
                _x(s["tokens_per_s_vs_least_loaded"]),
                _pct(s["busiest_node_share"]), _pct(s["turns_kept_on_node"]),
            )  # fmt: skip
        grid.add_section()
    return grid


def goals(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Issue 19's goals, per policy: shared TTFT p50 <= 0.5x round-robin's; none and mixed
    within 5% of least-loaded (TTFT p50 and tokens/s)."""
    lines: list[str] = []
    if not {"round-robin", "least-loaded"} <= set(summary["shared"]):
        return lines  # the goals are ratios to both
    for policy in summary["shared"]:
        if policy in ("round-robin", "least-loaded"):
            continue
        checks = [("shared p50 <= 0.5x RR", summary["shared"][policy]["ttft_p50_vs_round_robin"],
                   lambda x: x <= 0.5)]  # fmt: skip
        for workload in ("none", "mixed"):
            s = summary[workload][policy]
            checks += [(f"{workload} p50 <= 1.05x LL", s["ttft_p50_vs_least_loaded"],
                        lambda x: x <= 1.05),
                       (f"{workload} tok/s >= 0.95x LL", s["tokens_per_s_vs_least_loaded"],
                        lambda x: x >= 0.95)]  # fmt: skip
        verdicts = [
            f"{name} {'n/a' if value is None else f'{value:.2f}x'} "
            f"{'-' if value is None else 'met' if ok(value) else 'MISSED'}"
            for name, value, ok in checks
        ]
        lines.append(f"{policy}: " + "; ".join(verdicts))
    return lines


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    """The table as Markdown, for BENCHMARKS.md."""
    lines = [
        "| workload | policy | requests | TTFT p50 s | TTFT p99 s | p50 vs round-robin "
        "| p50 vs least-loaded | tokens/s | requests/s | tokens/s vs least-loaded "
        "| busiest node | chat turns on the previous turn's node |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workload, by_policy in summary.items():
        for policy, s in by_policy.items():
            name = f"{policy} (default)" if policy == DEFAULT_POLICY else policy
            lines.append(
                f"| {workload} | {name} | {_served(s)} | {_num(s['ttft_p50_s'], 2)} "
                f"| {_num(s['ttft_p99_s'], 2)} | {_x(s['ttft_p50_vs_round_robin'])} "
                f"| {_x(s['ttft_p50_vs_least_loaded'])} | {_num(s['tokens_per_s'], 1)} "
                f"| {_num(s['requests_per_s'], 2)} | {_x(s['tokens_per_s_vs_least_loaded'])} "
                f"| {_pct(s['busiest_node_share'])} | {_pct(s['turns_kept_on_node'])} |"
            )
    return "\n".join(lines)


def _served(s: dict[str, Any]) -> str:
    served = f"{s['requests'] - s['failed']}"
    return served + (f" ({s['failed']} failed)" if s["failed"] else "")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


PANEL_TITLES = {
    "shared": "shared system prompts (3-turn chats)",
    "none": "no shared prefix",
    "mixed": "mixed (1/4 of requests shared)",
}


def plot(summary: dict[str, dict[str, Any]], path: Path, caption: str) -> None:
    """TTFT p50 (solid) and p99 (pale) bars per policy, one panel per workload."""
    import matplotlib

    matplotlib.use("agg")  # no display
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "llamaherd-routing-bench"  # stable ids: diffable files
    figure, axes = plt.subplots(1, len(summary), figsize=(4.2 * len(summary), 3.8), sharey=True)
    colours = plt.get_cmap("tab10").colors
    for ax, (workload, by_policy) in zip(axes, summary.items(), strict=True):
        policies = list(by_policy)
        for i, policy in enumerate(policies):
            s = by_policy[policy]
            colour = colours[i % len(colours)]
            ax.bar(i, s["ttft_p99_s"] or 0, color=colour, alpha=0.3, width=0.7,
                   label="p99" if i == 0 else None)  # fmt: skip
            ax.bar(i, s["ttft_p50_s"] or 0, color=colour, width=0.7,
                   label="p50" if i == 0 else None)  # fmt: skip
        labels = [f"{p} (default)" if p == DEFAULT_POLICY else p for p in policies]
        ax.set_xticks(range(len(policies)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(PANEL_TITLES[workload], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("TTFT at the client (s)")
    axes[0].legend(fontsize=8)
    figure.suptitle(caption, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".svg":
        figure.savefig(path, format="svg", metadata={"Date": None})  # no date: diffable
    else:
        figure.savefig(path, dpi=110)
    plt.close(figure)


# ---- the run ----------------------------------------------------------------------------------
def round_order(policies: Sequence[str], round_index: int) -> list[str]:
    """The policies' order in a round: rotated by one every two rounds and reversed in every
    odd one, so that over each pair of rounds every policy's mean position is the same and a
    machine that grows busier or quieter during the run favours none."""
    shift = (round_index // 2) % len(policies)
    order = [*policies[shift:], *policies[:shift]]
    return order[::-1] if round_index % 2 else order


def report_segment(console: Console, segment: Segment, elapsed_s: float) -> None:
    ttft = [x.ttft for x in segment.ok]
    p50 = percentile(ttft, 50) if ttft else float("nan")
    console.print(
        f"round {segment.round + 1} {segment.policy:24} {segment.workload:6} "
        f"{len(segment.ok)}/{len(segment.records)} ok, TTFT p50 {p50:.2f} s, "
        f"{segment.wall_s:.1f} s; {elapsed_s:.0f} s in"
    )
    for failure in [x for x in segment.records if not x.ok][:2]:
        console.print(f"  failed: {failure.error}: {failure.detail}")


def policies_to_run(text: str | None) -> list[str]:
    if text is None:
        return [p for p in WANTED if p in POLICY_NAMES]
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in POLICY_NAMES]
    if unknown:
        raise SystemExit(f"unknown policy {', '.join(unknown)}; known: {', '.join(POLICY_NAMES)}")
    return chosen


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every cleanup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--policies", help=f"comma-separated; default: those of {', '.join(WANTED)} registered"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--singles", type=int, default=18,
        help="single requests per none and mixed segment (shared: one chat per client)",
    )  # fmt: skip
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--system-prompts", type=int, default=3)
    parser.add_argument("--system-words", type=int, default=220)
    parser.add_argument("--single-words", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--slots", type=int, default=2, help="sequence slots per worker")
    parser.add_argument("--cpus-per-host", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument(
        "--quick", action="store_true",
        help="development: one round, 3 clients, 6 singles, and (without --policies) only "
        "round-robin and the default: about two minutes",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write the TTFT plot (SVG) here")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamaherd-bench-routing"))
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS),
        help=f"comma-separated, of {', '.join(WORKLOADS)} (diagnostics: fewer, sooner)",
    )  # fmt: skip
    parser.add_argument(
        "--trace", action="store_true",
        help="diagnostics: poll the gateway's view of the nodes every "
        f"{TRACE_INTERVAL_S} s during each segment, keep it in the JSON and report where "
        "requests went against it (diagnose); the polls cost the coordinator a little CPU",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.clients, args.singles = 1, 3, 6
        args.policies = args.policies or f"round-robin,{DEFAULT_POLICY}"
    policies = policies_to_run(args.policies)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not workloads or not set(workloads) <= set(WORKLOADS):
        raise SystemExit(f"--workloads: choose among {', '.join(WORKLOADS)}")
    sizes = Sizes(args.clients, args.singles, args.turns, args.system_prompts,
                  args.system_words, args.single_words, args.max_tokens)  # fmt: skip
    if os.geteuid() != 0:
        print("bench_routing needs root (network namespaces and cgroups)", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)

    words = text_words()
    systems = system_prompts(words, sizes.system_prompts, sizes.system_words)
    schedules = {
        w: build_items(w, sizes, words, random.Random(f"{args.seed}-{w}")) for w in WORKLOADS
    }
    # A directory per run: a coordinator adopts the Ray head recorded in its state directory.
    args.workdir = args.workdir / f"run-{os.getpid()}"
    args.workdir.mkdir(parents=True, exist_ok=True)
    use_run_token()
    segments: list[Segment] = []
    console = Console(stderr=True)
    started = time.monotonic()
    load_before = os.getloadavg()
    with cpu_groups(3, args.cpus_per_host) as groups, network(3) as net, ExitStack() as stack:
        hosts = [LimitedHost(h.name, h.address, h.link, cgroup=str(g))
                 for h, g in zip(net.hosts, groups, strict=True)]  # fmt: skip
        plane = ControlPlane(args.workdir, net, args.slots, len(hosts))
        stack.callback(plane.stop)
        console.print(f"starting 3 workers at {args.cpus_per_host} CPU each ...")
        start_workers(stack, args.workdir, hosts, plane.registry, args.slots)
        for r in range(args.rounds):
            order = round_order(policies, r)
            for policy in order:
                coordinator = plane.route_with(policy)
                for workload in workloads:
                    tag = f"segment {len(segments) + 1:03d}"
                    trace: list[dict[str, Any]] | None = [] if args.trace else None
                    wall, records, sessions = asyncio.run(
                        run_segment(coordinator.base_url, schedules[workload], systems, tag,
                                    sizes, trace)
                    )  # fmt: skip
                    segments.append(Segment(workload, policy, r, wall, records, sessions, trace))
                    report_segment(console, segments[-1], time.monotonic() - started)
        throttled = {f"host{i}": throttled_s(g) for i, g in enumerate(groups)}

    summary = summarise(segments, policies)
    command = "python tests/bench/bench_routing.py " + shlex.join(sys.argv[1:])
    caption = (f"3 hosts x {args.cpus_per_host} CPU, Gemma 3 270M, {args.clients} clients, "
               f"{args.rounds} round(s)")  # fmt: skip
    Console(width=150).print(table(summary, caption))
    for line in goals(summary):
        print(line)
    diagnosis = diagnose(segments, args.slots) if args.trace else None
    if diagnosis:
        print(json.dumps(diagnosis, indent=1))
    result = {
        "format": "llamaherd-bench-routing/1",
        "command": command,
        "config": {
            **vars(args),
            "json": str(args.json),
            "plot": str(args.plot),
            "markdown": str(args.markdown),
            "workdir": str(args.workdir),
            "policies": policies,
        },
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "elapsed_s": time.monotonic() - started,
        "throttled_s": throttled,
        "summary": summary,
        **({"diagnosis": diagnosis} if diagnosis is not None else {}),
        "segments": [
            {
                "workload": s.workload,
                "policy": s.policy,
                "round": s.round,
                "wall_s": s.wall_s,
                "requests": [
                    {
                        "ttft_s": x.ttft if x.ok else None,
                        "e2e_s": x.e2e,
                        "output_tokens": x.output_tokens,
                        "prompt_tokens": x.prompt_tokens,
                        "node": x.node,
                        "sent_s": x.sent_s,
                        "done_s": x.done_s,
                        "session": session,
                        "turn": x.turn,
                        "error": x.error,
                    }
                    for x, session in zip(s.records, s.sessions, strict=True)
                ],
                **({"trace": s.trace} if s.trace is not None else {}),
            }
            for s in segments
        ],
    }
    print(f"load average before {load_before}, after {os.getloadavg()}; "
          f"{time.monotonic() - started:.0f} s", file=sys.stderr)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(summary, args.plot, caption)
    if args.markdown:
        args.markdown.write_text(markdown(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
