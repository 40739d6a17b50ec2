"""The chaos cluster (a real coordinator and real workers on loopback) and the scenarios run
against it, each starting from a healthy cluster and ending with one result row."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import ray
from chaos.direct import attack as direct_attack
from chaos.forge import ACCEPTED, BlackHole, flood
from chaos.load import FAILED, LOST, OK, Load, Outcome, send
from support.cluster import Coordinator, ready_replicas, start_coordinator, start_node
from support.worker_process import WorkerProcess

from orchestrator.reaper import reap

MODEL = "gemma"
SPLIT = "gemma-split"
BASE = {"path": "builtin:gemma-3-270m", "n_ctx": 512, "n_threads": 1, "flash_attn": "off"}
TOKEN_ENV = "LLAMAHERD_CLUSTER_TOKEN"
HEAL_TIMEOUT_S = 90.0
CLIENTS = 4  # concurrent senders of the steady load
HOSTILE_S = 10.0


@dataclass
class Row:
    """One scenario's line of the table."""

    scenario: str
    sent: int = 0
    ok: int = 0
    failed: int = 0
    lost: int = 0
    recovery_s: float | None = None
    verdict: str = "PASS"  # PASS, FAIL or SKIP
    notes: list[str] = field(default_factory=list)
    lost_details: list[str] = field(default_factory=list)
    failed_details: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def tally(row: Row, outcomes: list[Outcome], fault_at: float | None) -> Row:
    """Counts the outcomes into `row`; recovery is the time from the fault to the end of the
    last request that did not succeed (0: no client noticed)."""
    row.sent += len(outcomes)
    row.ok += sum(o.kind == OK for o in outcomes)
    row.failed += sum(o.kind == FAILED for o in outcomes)
    row.lost += sum(o.kind == LOST for o in outcomes)
    row.lost_details += sorted({f"{o.tag}: {o.detail}" for o in outcomes if o.kind == LOST})
    row.failed_details += sorted(
        {f"{o.tag}: {o.detail[:160]}" for o in outcomes if o.kind == FAILED}
    )
    if fault_at is not None:
        # The steady load's view: a scenario's own hostile requests are meant to fail.
        bad = [
            o.ended for o in outcomes if o.kind != OK and o.ended >= fault_at and o.tag == "load"
        ]
        row.recovery_s = round(max(bad) - fault_at, 1) if bad else 0.0
    if row.lost:
        row.verdict = "FAIL"
    return row


class Chaos:
    """A coordinator (its own local Ray) and `n_workers` worker processes on loopback."""

    def __init__(self, workdir: Path, n_workers: int, split: bool, log: Callable[[str], None]):
        self.workdir = workdir
        self.log = log
        self.split = split
        self.catalog: list[dict[str, Any]] = [{"alias": MODEL, "replicas": 2, **BASE}]
        if split:
            self.catalog.append({"alias": SPLIT, "split_nodes": 2, "n_parallel": 1, **BASE})
        self.node_ids = [f"chaos-{i}" for i in range(1, n_workers + 1)]
        self.coordinator: Coordinator | None = None
        self.workers: dict[str, WorkerProcess] = {}
        self.restarts = 0

    # ---- lifetime -------------------------------------------------------------------------
    def start(self) -> None:
        self.coordinator = start_coordinator(self.workdir, self.catalog)
        for node_id in self.node_ids:
            self.start_worker(node_id)

    def start_worker(self, node_id: str) -> None:
        assert self.coordinator is not None
        self.workers[node_id] = start_node(self.workdir, self.coordinator, node_id)

    def stop(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(Exception):
                os.kill(worker.process.pid, signal.SIGCONT)
            worker.stop()
        if self.coordinator is not None:
            self.coordinator.stop()
        # A coordinator that died rather than stopped leaves its Ray head (and the actors)
        # serving, by design: end what its record names.
        record = self.workdir / "coordinator-state" / "ray.json"
        if record.exists():
            session = Path(json.loads(record.read_text())["session_dir"])
            self.log(f"ending the Ray head a dead coordinator left ({session.name})")
            reap(session, Path(ray.__file__).parent)
            record.unlink()

    @property
    def base_url(self) -> str:
        assert self.coordinator is not None
        return f"http://127.0.0.1:{self.coordinator.http_port}"

    # ---- health ---------------------------------------------------------------------------
    def ready(self) -> dict[str, set[str]]:
        assert self.coordinator is not None
        try:
            return ready_replicas(self.coordinator)
        except Exception:  # a restarting gateway: not ready yet
            return {}

    def split_ready(self) -> bool:
        return bool(self.ready().get(SPLIT))

    def heal(self, timeout: float = HEAL_TIMEOUT_S) -> float:
        """Restarts dead workers and waits until every model has its replicas; the seconds
        it took. Raises TimeoutError naming what is missing."""
        started = time.monotonic()
        for node_id, worker in list(self.workers.items()):
            if not worker.alive():
                self.log(f"  restarting {node_id}")
                self.start_worker(node_id)
        deadline = started + timeout
        while time.monotonic() < deadline:
            ready = self.ready()
            if len(ready.get(MODEL, ())) >= 2 and (not self.split or ready.get(SPLIT)):
                return time.monotonic() - started
            time.sleep(0.5)
        raise TimeoutError(f"cluster not healthy after {timeout} s: ready {self.ready()}")

    def serving_node(self, alias: str = MODEL) -> str:
        return sorted(self.ready().get(alias, set()) or self.workers)[0]


def _load(chaos: Chaos, alias: str = MODEL) -> Load:
    return Load(chaos.base_url, alias, clients=CLIENTS).start()


def watch_down(chaos: Chaos, node_id: str, seconds: float) -> str:
    """Polls the cluster status for `seconds`; says when `node_id` left routing."""
    assert chaos.coordinator is not None
    started = time.monotonic()
    left: float | None = None
    while time.monotonic() - started < seconds:
        with contextlib.suppress(Exception):
            nodes = {n.status.node_id: n for n in chaos.coordinator.status().nodes}
            if left is None and node_id in nodes and not nodes[node_id].up:
                left = time.monotonic() - started
        time.sleep(0.2)
    if left is None:
        return f"{node_id} never left routing"
    return f"{node_id} left routing {left:.1f} s after the fault"


def probe(chaos: Chaos, row: Row, alias: str = MODEL) -> bool:
    """One request before the fault: a model that does not serve even then is noted, so its
    failures are not read as the fault's."""

    async def once() -> Outcome:
        async with httpx.AsyncClient(base_url=chaos.base_url, timeout=30) as client:
            body = {"model": alias, "prompt": "Hi", "max_tokens": 2}
            return await send(client, "/v1/completions", body, 30.0, tag="probe")

    outcome = asyncio.run(once())
    if outcome.kind != OK:
        # Not the fault's doing, but a cluster that cannot serve is no pass either.
        row.notes.append(f"{alias} did not serve before the fault: {outcome.detail[:120]}")
        row.verdict = "FAIL"
    return outcome.kind == OK


# ---- the scenarios -------------------------------------------------------------------------
def baseline(chaos: Chaos) -> Row:
    row = Row("baseline (no fault)")
    probe(chaos, row)
    load = _load(chaos)
    time.sleep(10)
    return tally(row, load.stop(), None)


def kill_worker(chaos: Chaos) -> Row:
    row = Row("kill -9 a worker")
    probe(chaos, row)
    load = _load(chaos)
    time.sleep(3)
    victim = chaos.serving_node()
    chaos.workers[victim].process.send_signal(signal.SIGKILL)
    fault_at = time.monotonic()
    row.notes.append(watch_down(chaos, victim, 10))
    row.notes.append(f"{victim} killed; healed (restarted, replica ready) in {chaos.heal():.1f} s")
    return tally(row, load.stop(), fault_at)


def stop_worker(chaos: Chaos) -> Row:
    row = Row("SIGSTOP a worker (6 s)")
    probe(chaos, row)
    load = _load(chaos)
    time.sleep(3)
    victim = chaos.serving_node()
    pid = chaos.workers[victim].process.pid
    os.kill(pid, signal.SIGSTOP)
    fault_at = time.monotonic()
    try:
        row.notes.append(watch_down(chaos, victim, 6))
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    healthy = chaos.heal()
    while victim not in chaos.ready().get(MODEL, set()) and time.monotonic() - resumed < 30:
        time.sleep(0.2)
    row.notes.append(
        f"{victim} stopped; replicas ready {healthy:.1f} s after SIGCONT, {victim} serving "
        f"again after {time.monotonic() - resumed:.1f} s"
    )
    time.sleep(2)
    return tally(row, load.stop(), fault_at)


def kill_coordinator(chaos: Chaos) -> Row:
    """kill -9 `llamaherd coordinator` under load: its Ray head, registry, placement and
    gateways are detached and keep serving; a restart on the same ports adopts them."""
    row = Row("kill -9 the coordinator, restart")
    coordinator = chaos.coordinator
    assert coordinator is not None
    probe(chaos, row)
    load = _load(chaos)
    time.sleep(3)
    coordinator.stop(signal.SIGKILL)
    fault_at = time.monotonic()
    time.sleep(2)  # the load runs on with no coordinator at all
    answering = bool(chaos.ready().get(MODEL))
    row.notes.append(
        "gateway answering with the coordinator dead"
        if answering
        else "the gateway stopped answering when the coordinator died"
    )
    restarted_at = time.monotonic()
    chaos.restarts += 1
    chaos.coordinator = start_coordinator(
        chaos.workdir, chaos.catalog, ports=coordinator.ports(), name=f"restart-{chaos.restarts}"
    )
    back = time.monotonic() - restarted_at
    log = chaos.coordinator.log_tail(lines=5000)
    adopted = "adopted the running control plane" in log
    healed = chaos.heal()
    row.notes.append(
        f"restarted coordinator {'adopted the plane' if adopted else 'started afresh'} "
        f"{back:.1f} s after its start; replicas ready {healed:.1f} s later"
    )
    if not answering or not adopted:
        row.verdict = "FAIL"
    loads, unloads = log.count("placement.controller: loading "), log.count(": unloading ")
    if loads or unloads:
        # The models were all loaded: a restart that resumes cleanly changes nothing.
        row.notes.append(f"placement after the restart: {loads} loads, {unloads} unloads")
    time.sleep(3)
    return tally(row, load.stop(), fault_at)


def registry_flood(chaos: Chaos) -> Row:
    row = Row("registry flooded with forged registrations")
    coordinator = chaos.coordinator
    assert coordinator is not None
    victim = chaos.serving_node()
    template = next(n.status for n in coordinator.status().nodes if n.status.node_id == victim)
    black_hole = BlackHole()
    probe(chaos, row)
    load = _load(chaos)
    down_seen: list[float] = []
    stop_polling = False

    def poll() -> None:
        while not stop_polling:
            with contextlib.suppress(Exception):
                nodes = {n.status.node_id: n for n in coordinator.status().nodes}
                if victim in nodes and not nodes[victim].up:
                    down_seen.append(time.monotonic())
            time.sleep(0.2)

    import threading

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    time.sleep(2)
    fault_at = time.monotonic()
    try:
        counts = flood(
            coordinator.registry, template, black_hole.address, os.environ.get(TOKEN_ENV), 10.0
        )
    finally:
        time.sleep(2)
        stop_polling = True
        poller.join()
        outcomes = load.stop()
        black_hole.close()
    accepted = sum(c[ACCEPTED] for c in counts.values())
    total = sum(sum(c.values()) for c in counts.values())
    row.notes.append(f"{total - accepted}/{total} forgeries refused")
    for kind, c in counts.items():
        if c[ACCEPTED]:
            row.notes.append(f"ACCEPTED {c[ACCEPTED]}x: {kind}")
    if down_seen:
        row.notes.append(f"live node {victim} seen out of routing {len(down_seen)}x (0.2 s polls)")
    tally(row, outcomes, fault_at)
    if accepted or down_seen:
        row.verdict = "FAIL"
    return row


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def hostile_requests(model: str) -> list[tuple[str, str, dict[str, Any], bytes | None]]:
    """(name, path, body, raw bytes instead of the body) of each hostile input."""
    chat = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    schema = {"type": "string", "minLength": 100_000_000}
    words = " | ".join(f'"w{i}"' for i in range(110_000))
    grammar = f"root ::= {words}"  # about 1 MB
    # Just under the workers' default limits: accepted, and as costly as allowed.
    at_limit = "root ::= " + " | ".join(f'"v{i}"' for i in range(2400))[:16_000].rsplit(" |", 1)[0]
    wide = {"type": "string", "minLength": 1000, "maxLength": 2000}
    head = json.dumps({"model": model, "max_tokens": 8}).encode()[:-1]
    return [
        ("schema minLength 1e8", "/v1/chat/completions",
         {**chat, "response_format": {"type": "json_schema",
                                      "json_schema": {"name": "s", "schema": schema}}}, None),
        ("1 MB grammar", "/v1/chat/completions", {**chat, "grammar": grammar}, None),
        ("16 KB grammar (under the limit)", "/v1/completions",
         {**chat, "prompt": "Say", "grammar": at_limit, "stream": True}, None),
        ("schema minLength 1000 (under the limit)", "/v1/chat/completions",
         {**chat, "response_format": {"type": "json_schema",
                                      "json_schema": {"name": "s", "schema": wide}}}, None),
        ("200 KB prompt", "/v1/completions", {**chat, "prompt": "word " * 40_000}, None),
        ("JSON nested 5000 deep", "/v1/chat/completions", chat,
         head + b', "messages": [{"role": "user", "content": "Hi"}], "metadata": '
         + _deep(5000) + b"}"),
        ("lone surrogate", "/v1/chat/completions", chat,
         head + b', "messages": [{"role": "user", "content": "Hi \\ud800"}]}'),
        ("invalid UTF-8", "/v1/completions", {**chat, "prompt": ""},
         head + b', "prompt": "Hi \xff\xfe"}'),
    ]  # fmt: skip


def hostile_inputs(chaos: Chaos) -> Row:
    row = Row("hostile inputs while others stream")
    probe(chaos, row)
    load = _load(chaos)
    time.sleep(2)
    fault_at = time.monotonic()

    async def attack() -> list[Outcome]:
        # Rounds of every hostile input, two of each at once, for HOSTILE_S: the background
        # streams must run through all of it.
        timeout = httpx.Timeout(60.0, connect=5.0, read=60.0)
        outcomes: list[Outcome] = []
        end = time.monotonic() + HOSTILE_S
        async with httpx.AsyncClient(base_url=chaos.base_url, timeout=timeout) as client:
            while time.monotonic() < end:
                jobs = [
                    send(client, path, body, 60.0, tag=f"hostile {name}", raw=raw)
                    for name, path, body, raw in hostile_requests(MODEL)
                    for _ in range(2)
                ]
                outcomes += await asyncio.gather(*jobs)
                await asyncio.sleep(0.5)
        return outcomes

    target = chaos.serving_node()
    with ThreadPoolExecutor(1) as pool:
        direct = pool.submit(
            direct_attack,
            chaos.workers[target].address,
            MODEL,
            os.environ.get(TOKEN_ENV),
            HOSTILE_S,
        )
        hostile = asyncio.run(attack())
        hostile += direct.result()
    row.notes.append(f"direct inputs sent to {target}'s Worker API")
    time.sleep(2)
    outcomes = load.stop()
    for name in sorted({o.tag for o in hostile}):
        mine = [o for o in hostile if o.tag == name]
        kinds = sorted({o.kind if o.kind == OK else o.detail.split(":")[0] for o in mine})
        slowest = max(o.ended - o.started for o in mine)
        row.notes.append(f"{name}: {len(mine)}x {'/'.join(kinds)}, slowest {slowest:.1f} s")
    streams = [o for o in outcomes if o.stream]
    row.notes.append(f"background: {sum(o.kind == OK for o in streams)}/{len(streams)} streams ok")
    return tally(row, outcomes + hostile, fault_at)


def _rpc_helpers() -> Iterator[psutil.Process]:
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if "worker.split.rpc_server" in cmdline:
            yield process


def kill_split_helper(chaos: Chaos) -> Row:
    row = Row("kill -9 a split model's helper")
    if not chaos.split:
        row.verdict = "SKIP"
        row.notes.append("run with the split model to include it (--split)")
        return row
    if not chaos.split_ready():
        row.verdict = "SKIP"
        row.notes.append(f"{SPLIT} was not placed: {chaos.ready()}")
        return row
    probe(chaos, row, SPLIT)
    load = _load(chaos, SPLIT)
    time.sleep(3)
    helpers = list(_rpc_helpers())
    if not helpers:
        row.verdict = "SKIP"
        row.notes.append("no worker.split.rpc_server process found")
        return tally(row, load.stop(), None)
    helpers[0].kill()
    fault_at = time.monotonic()
    time.sleep(8)
    row.notes.append(f"helper pid {helpers[0].pid} killed; re-planned in {chaos.heal():.1f} s")
    time.sleep(2)
    return tally(row, load.stop(), fault_at)


SCENARIOS: dict[str, Callable[[Chaos], Row]] = {
    "baseline": baseline,
    "kill-worker": kill_worker,
    "stop-worker": stop_worker,
    "kill-split-helper": kill_split_helper,
    "kill-coordinator": kill_coordinator,
    "registry-flood": registry_flood,
    "hostile-inputs": hostile_inputs,
}
