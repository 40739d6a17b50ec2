"""A gateway's routing: its view of the cluster, its own in-flight counts, and the relay
that sends a request to a worker and, when that worker fails, to another.

The view is a ClusterSnapshot pushed from the registry; routing a request reads it and
calls the routing policy, all in this process: no Ray call, no network hop before the
request reaches its worker.

No request is lost to a failed node while another replica can serve it:
- a request nothing has been streamed for yet is sent again elsewhere (a retry);
- a buffered generation (the HTTP API's non-streaming calls, whose client has received
  nothing until the end) is restarted elsewhere at any point (`complete`);
- a stream already flowing continues on another replica from the text generated so far,
  the prompt extended by it (a migration, `stream`); the chunks then come from another
  node, which is how the front doors tell their clients.
Every re-send counts against one budget, `retries`. A node is judged failed by its error
(see RETRYABLE), by its heartbeat going silent (the registry marks it down in the next
snapshot and `update` cancels its calls at once: this is what catches a hung, SIGSTOPped
worker, whatever it was doing) and, as a backstop, by a started stream that sends nothing
for `stall_timeout_s` (a live heartbeat with a stuck engine).

With a traffic recorder (orchestrator.dashboard.traffic), each call of `stream`, `complete`
and `unary` is one trace: its chunks as they are relayed and its outcome once, whether it
succeeded, failed, found no replica or lost its client, so both front doors are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from llamaherd.v1 import generation_pb2 as gen_pb

from common.errors import ErrorKind, FailedPrecondition, Internal, LlamaherdError, Unavailable
from orchestrator.cluster.feed import CHANGES, Changes
from orchestrator.cluster.types import ClusterSnapshot, Node, NodeId
from orchestrator.dashboard.traffic import CANCELLED, OK, UNKNOWN_MODEL, RequestTrace, Traffic
from orchestrator.gateway.errors import ModelNotServed, Overloaded, UpstreamFailed
from orchestrator.routing.admission import (
    ClusterDraw,
    DrawTracker,
    MeasuredCaps,
    PowerAdmission,
    ReplicaLoad,
    admit,
    measured_caps,
    power_admission,
)
from orchestrator.routing.candidates import (
    EMBEDDINGS_ONLY,
    NOT_LOADED,
    Candidate,
    CandidatePool,
    NoCandidate,
    UnknownModel,
    route,
)
from orchestrator.routing.policies import RoutingPolicy
from orchestrator.routing.request import RouteRequest
from orchestrator.worker_client import WorkerClient, WorkerClients, WorkerStream

log = logging.getLogger(__name__)

_CAPS_KEY = "gateway.router.MeasuredCaps"  # the snapshot's memo: one per model and task

T = TypeVar("T")
Clock = Callable[[], float]
Chunk: TypeAlias = gen_pb.GenerationChunk

# Worker errors that say nothing about the request itself: another replica may serve it.
RETRYABLE = {
    ErrorKind.UNAVAILABLE,  # worker gone, or the model is unloading there
    ErrorKind.RESOURCE_EXHAUSTED,  # that replica's queue is full
    ErrorKind.NOT_FOUND,  # unloaded since the view was taken
    ErrorKind.FAILED_PRECONDITION,  # failed there
    ErrorKind.INTERNAL,  # the node's own failure (or a node that answers only errors)
    ErrorKind.PERMISSION_DENIED,  # the node refuses this gateway: its setup, not the request
}
# Of those, the ones that make the node suspect: avoided for SUSPECT_S by later requests.
NODE_FAULTS = {ErrorKind.UNAVAILABLE, ErrorKind.INTERNAL, ErrorKind.PERMISSION_DENIED}
# Refusals of the request itself, passed to the client as the worker worded them; any other
# failure is the worker's, named after it. INVALID_ARGUMENT is final: every replica would
# refuse the same request the same way.
PASSED_THROUGH = {
    ErrorKind.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND,
    ErrorKind.FAILED_PRECONDITION,
    ErrorKind.RESOURCE_EXHAUSTED,
}
SUSPECT_S = 2.0  # how long a worker that just failed a call is avoided
UPDATE_CHUNK = 512  # changed nodes Router.follow takes between two turns of the loop


@dataclass(frozen=True)
class Progress:
    """What a relayed generation has produced so far: the text its client holds and the
    number of tokens that text came from (a continuation's max_tokens is reduced by it)."""

    text: str = ""
    tokens: int = 0
    chunks: int = 0

    @property
    def started(self) -> bool:
        return self.chunks > 0

    def after(self, chunk: Chunk) -> Progress:
        return Progress(self.text + chunk.text, self.tokens + len(chunk.token_ids), self.chunks + 1)


# Opens a generation on a worker: the request itself for Progress() (a first attempt or a
# restart), else its continuation after `progress` (route_requests.continued).
OpenGeneration = Callable[[WorkerClient, Progress], WorkerStream[Chunk]]


@dataclass
class Completed:
    """A whole generation, as `complete` collects it."""

    chunks: list[Chunk]
    node: NodeId  # the node that produced it
    retried_from: list[NodeId] = field(default_factory=list)  # nodes that failed it first


class Router:
    """Chooses replicas and relays requests to them; one per gateway process.

    `retries`: how many times one request may be sent again after a failure (a retry, a
    restart or a migration alike); `stall_timeout_s`: the longest silence allowed between
    two chunks of a started stream (0: no limit); `power_budget_w`: the cluster's power
    budget (None: none), over which new requests are refused (admission.power_admission);
    `wall_clock` reads unix time, the clock of the telemetry samples' `taken_at`.
    """

    def __init__(
        self,
        policy: RoutingPolicy,
        clients: WorkerClients,
        retries: int,
        clock: Clock = time.monotonic,
        stall_timeout_s: float = 30.0,
        traffic: Traffic | None = None,
        power_budget_w: float | None = None,
        wall_clock: Clock = time.time,
    ) -> None:
        self.policy = policy
        self.traffic = traffic
        self.clients = clients
        self.retries = retries
        self.stall_timeout_s = stall_timeout_s
        self._clock = clock
        self.snapshot = ClusterSnapshot()
        self._snapshot_at = clock()
        self.inflight: Counter[tuple[NodeId, str]] = Counter()
        self._suspects: dict[NodeId, float] = {}
        # Running calls per node, so a node that leaves the view fails its streams at once.
        self._calls: dict[NodeId, set[WorkerStream[Any]]] = {}
        self._call_started: dict[WorkerStream[Any], float] = {}  # for Retry-After estimates
        self._dropped: dict[WorkerStream[Any], str] = {}
        self.power_budget_w = power_budget_w
        self._wall_clock = wall_clock
        # The draw of the last snapshot and the admission it gave (with its hysteresis);
        # computed once per snapshot, not per request: samples change once per heartbeat.
        self.power_draw = ClusterDraw()
        self.power = PowerAdmission()
        self._draw = DrawTracker()
        # What update keeps of the snapshot: the up nodes' ids, and each node's address
        # (with how many nodes have it), so that a delta's changes cost what they touch.
        self._up: set[NodeId] = set()
        self._address: dict[NodeId, str] = {}
        self.addresses: Counter[str] = Counter()  # the snapshot's workers' addresses

    # ---- the view ----------------------------------------------------------------------
    def update(self, snapshot: ClusterSnapshot) -> None:
        """Takes `snapshot` as the view: the power draw and admission are judged again, and
        the calls of nodes that were up and are now down fail at once. A snapshot made
        from a delta on the one held (its memo names the changes, orchestrator.cluster
        .feed.Changes) costs what those changes cost; any other, a pass over its nodes
        (the same state either way)."""
        for _ in self._updating(snapshot):
            pass

    async def follow(self, snapshot: ClusterSnapshot) -> None:
        """update(snapshot) on the event loop that routes: other tasks run between pieces
        of UPDATE_CHUNK changed nodes (half of a 10,000-node fleet took 10-40 ms in one
        go). Routing reads the new snapshot from the start; the power admission changes
        at the end."""
        for _ in self._updating(snapshot):
            await asyncio.sleep(0)

    def _updating(self, snapshot: ClusterSnapshot) -> Iterator[None]:
        """update's steps: it yields between pieces of the changes."""
        changes: Changes | None = snapshot.memo.get(CHANGES)
        held = self.snapshot
        self.snapshot = snapshot
        self._snapshot_at = self._clock()
        if changes is not None and changes.base == held.version:
            was_up = {n for n in changes.removed if n in self._up}
            nodes, now = changes.nodes, self._wall_clock()
            self._changed((), changes.removed, was_up, now)
            for start in range(0, len(nodes), UPDATE_CHUNK):
                yield
                self._changed(nodes[start : start + UPDATE_CHUNK], (), was_up, now)
        else:
            self._recount(snapshot.nodes)
        if self.power_budget_w is not None:
            self.power_draw = self._draw.draw()
            self.power = power_admission(self.power_draw, self.power_budget_w, self.power.refusing)

    def _recount(self, nodes: tuple[Node, ...]) -> None:
        """update's state, from every node of the new snapshot."""
        was_up, self._up = self._up, {n.node_id for n in nodes if n.up}
        self._address = {n.node_id: n.address for n in nodes}
        self.addresses = Counter(self._address.values())
        if self.power_budget_w is not None:
            self._draw.reset(nodes, self._wall_clock())
        for node in nodes:
            if not node.up and node.node_id in was_up:
                self._fail_calls(node.node_id, f"worker {node.node_id} left: {node.down_reason}")

    def _changed(
        self,
        nodes: Sequence[Node],
        removed: Sequence[NodeId],
        was_up: set[NodeId],
        now: float,
    ) -> None:
        """update's state after some of a delta's changes: the nodes with ids `removed`
        left, then `nodes` changed (`was_up`: the removed ones that were up)."""
        up, address, addresses = self._up, self._address, self.addresses
        for node_id in removed:
            up.discard(node_id)
            _uncount(addresses, address.pop(node_id, None))
        for node in nodes:
            node_id, new = node.node_id, node.address
            old = address.get(node_id)
            if old != new:
                _uncount(addresses, old)
                address[node_id] = new
                addresses[new] += 1
            if node.up:
                up.add(node_id)
            elif node_id in up or node_id in was_up:
                up.discard(node_id)
                self._fail_calls(node_id, f"worker {node_id} left: {node.down_reason}")
        if self.power_budget_w is not None and not self._draw.changed(nodes, removed, now):
            self._draw.reset(self.snapshot.nodes, now)  # the wall clock went back

    def state_clock(self) -> float:
        """Now, on the registry's clock (the one the snapshot's report times use)."""
        return self.snapshot.taken_at + (self._clock() - self._snapshot_at)

    def inflight_to(self, node_id: NodeId) -> int:
        return sum(n for (node, _), n in self.inflight.items() if node == node_id)

    # ---- choosing ----------------------------------------------------------------------
    def choose(self, request: RouteRequest, exclude: set[NodeId]) -> Candidate:
        """The replica for `request` among the nodes not in `exclude`, avoiding nodes that
        failed a call moments ago unless no other can serve it."""
        alias = request.alias
        now = self._clock()
        suspects = {n for n, until in self._suspects.items() if until > now}
        if request.node is not None:
            # Pinned (measuring one node): every other node is out, and no admission cap
            # applies, or re-measuring a node could never exceed its last measurement.
            if self.snapshot.node(NodeId(request.node)) is None:
                known = ", ".join(n.node_id for n in self.snapshot.nodes) or "none"
                raise Unavailable(f"node {request.node!r} is not in the cluster (nodes: {known})")
            others = {n.node_id for n in self.snapshot.nodes if n.node_id != request.node}
            exclude = exclude | others
        else:
            exclude = exclude | self._admitted(request, exclude)
        try:
            try:
                return self._route(request, exclude | suspects)
            except NoCandidate:
                if not suspects - exclude:
                    raise
                return self._route(request, exclude)  # a suspect beats no one
        except UnknownModel as exc:
            problem = next((p for p in self.snapshot.problems if p.alias == alias), None)
            if problem is not None:
                raise Unavailable(f"model {alias!r} is not placed: {problem.reason}") from None
            raise ModelNotServed(alias, list(exc.available)) from None
        except NoCandidate as exc:
            if exc.overloaded:
                raise Overloaded(str(exc)) from None
            reasons = {r.reason for r in exc.rejections}
            if EMBEDDINGS_ONLY in reasons and reasons <= {EMBEDDINGS_ONLY, NOT_LOADED}:
                # Every replica there is refuses this kind of request: the client's mistake
                # (400), not a cluster that cannot serve now (503).
                raise FailedPrecondition(
                    f"model {alias!r} serves embeddings only (loaded with embedding: true): "
                    "send it to /v1/embeddings, or generate with another model"
                ) from None
            raise Unavailable(str(exc)) from None

    def _admit_power(self, request: RouteRequest) -> None:
        """Raises Overloaded while the cluster is over its power budget. Asked once per
        request, before its first attempt: a retry, a restart or a migration of a request
        already admitted is never refused for power. A pinned request (measuring one node)
        is exempt, as from the capacity cap."""
        if not self.power.admitted and request.node is None:
            raise Overloaded(self.power.reason, self.power.retry_after_s)

    def _admitted(self, request: RouteRequest, exclude: set[NodeId]) -> set[NodeId]:
        """The replicas at their measured capacity (orchestrator.routing.admission), to
        leave out; raises Overloaded when every replica that could serve is at it.

        Costs what this gateway's own in-flight requests cost, not a pass over the fleet:
        the caps and the replicas full on their reports are prepared once per snapshot
        (MeasuredCaps), and one replica that can serve and is not full admits. Only when
        there is none are all of them looked at, to say why (admit)."""
        snapshot = self.snapshot
        if not snapshot.capacities or request.alias not in snapshot.holders:
            return set()  # no cap at all; an unknown model is routing's to refuse
        now = self.state_clock()
        pool = CandidatePool(
            snapshot, request.alias, request.task, now=now, inflight=self.inflight,
            exclude=exclude,
        )  # fmt: skip
        key = (_CAPS_KEY, request.alias, request.task)
        caps: MeasuredCaps | None = snapshot.memo.get(key)
        if caps is None:
            caps = measured_caps(request.alias, pool.table.candidates, snapshot.capacities)
            snapshot.memo[key] = caps
        if not caps.records:
            return set()
        # Full replicas that cannot serve this request anyway may be among them: leaving
        # them out too changes nothing.
        full = caps.full(self.inflight) - exclude
        try:
            CandidatePool(
                snapshot, request.alias, request.task, now=now, inflight=self.inflight,
                exclude=exclude | full,
            ).following(None)  # fmt: skip
            return full  # one that is not full can take it
        except NoCandidate:
            pass
        try:
            candidates = pool.eligible()
        except NoCandidate:
            return set()  # none can serve at all: routing says why
        loads = [self._replica_load(c, caps) for c in candidates]
        decision = admit(request.alias, loads, self._clock())
        if not decision.admitted:
            raise Overloaded(decision.reason, decision.retry_after_s)
        return {NodeId(n) for n in decision.full}

    def _replica_load(self, candidate: Candidate, caps: MeasuredCaps) -> ReplicaLoad:
        record = caps.records.get(candidate.node_id)
        calls = self._calls.get(candidate.node_id, ())
        started = [self._call_started[c] for c in calls if c in self._call_started]
        return ReplicaLoad(candidate.node_id, candidate.load, record, min(started, default=None))

    def not_served(self, alias: str) -> LlamaherdError:
        """The error for a model no node serves, listing the ones that are served."""
        served = {r.alias for n in self.snapshot.up_nodes for r in n.replicas if r.ready}
        return ModelNotServed(alias, sorted(served))

    def _route(self, request: RouteRequest, exclude: set[NodeId]) -> Candidate:
        return route(
            self.snapshot, request, now=self.state_clock(), policy=self.policy,
            inflight=self.inflight, exclude=exclude,
        )  # fmt: skip

    @contextlib.contextmanager
    def _tracked(self, candidate: Candidate, call: WorkerStream[Any]) -> Iterator[None]:
        key = (candidate.node_id, candidate.replica.alias)
        self.inflight[key] += 1
        self._calls.setdefault(candidate.node_id, set()).add(call)
        self._call_started[call] = self._clock()
        try:
            yield
        finally:
            self.inflight[key] -= 1
            if self.inflight[key] <= 0:
                del self.inflight[key]
            self._calls[candidate.node_id].discard(call)
            self._call_started.pop(call, None)
            self._dropped.pop(call, None)

    def _fail_calls(self, node_id: NodeId, reason: str) -> None:
        for call in self._calls.get(node_id, ()):
            self._dropped[call] = reason
            call.cancel()

    def _suspect(self, node_id: NodeId) -> None:
        self._suspects[node_id] = self._clock() + SUSPECT_S

    # ---- relaying ----------------------------------------------------------------------
    async def stream(
        self,
        request: RouteRequest,
        open_call: OpenGeneration,
        *,
        resumable: bool = True,
    ) -> AsyncGenerator[tuple[NodeId, Chunk], None]:
        """Relays a generation from a worker chosen for `request`, yielding each chunk with
        the node that produced it.

        A retryable failure before the first chunk sends the request to another replica;
        after it, the stream continues on another replica from the text streamed so far
        (unless not `resumable`, e.g. under a grammar, whose state a continuation cannot
        restore): its chunks then carry the new node, and the final chunk's usage counts
        the whole reply. When no replica can take over, the stream ends with UpstreamFailed.
        """
        exclude: set[NodeId] = set()
        sent = Progress()
        last_error: LlamaherdError | None = None
        failed: NodeId | None = None
        with self._traced(request) as outcome:
            self._admit_power(request)
            for _ in range(self.retries + 1):
                candidate = self._next(request, exclude, last_error, sent)
                node = outcome.node = candidate.node_id
                if sent.started:
                    log.warning(
                        "stream migrated from worker %s to %s after %d tokens (%s)",
                        failed, node, sent.tokens, last_error.message if last_error else "",
                    )  # fmt: skip
                call = open_call(self.clients.client(candidate.address), sent)
                base = sent
                with self._tracked(candidate, call):
                    try:
                        async for chunk in self._read(call, node):
                            if base.started and chunk.finish_reason:
                                _add_earlier_usage(chunk, base)
                            sent = sent.after(chunk)
                            outcome.trace.chunk(node, len(chunk.token_ids))
                            if chunk.finish_reason:
                                # Complete: a client that closes the stream now (as the
                                # HTTP API does after the last chunk) has had it all.
                                outcome.name = OK
                            yield node, chunk
                        outcome.name = OK
                        return
                    except LlamaherdError as exc:
                        final = sent.started and (not resumable or exc.kind not in RETRYABLE)
                        last_error = self._failed(candidate, exc, final)
                    except asyncio.CancelledError:
                        reason = self._dropped.get(call)
                        if reason is None:
                            raise  # our own client went away
                        last_error = self._node_left(node, reason, sent.started and not resumable)
                    finally:
                        call.cancel()
                exclude.add(node)
                failed = node
            raise self._gave_up(last_error, sent)

    async def complete(self, request: RouteRequest, open_call: OpenGeneration) -> Completed:
        """A whole generation from a worker chosen for `request`. Its client receives
        nothing until it ends, so a retryable failure at any point restarts it from the
        beginning on another replica (the reply then comes from one node, as if nothing
        had failed)."""
        exclude: set[NodeId] = set()
        last_error: LlamaherdError | None = None
        with self._traced(request) as outcome:
            self._admit_power(request)
            for _ in range(self.retries + 1):
                candidate = self._choose_or_last(request, exclude, last_error)
                node = outcome.node = candidate.node_id
                if exclude:
                    log.warning("generation restarted on worker %s after %s", node, last_error)
                call = open_call(self.clients.client(candidate.address), Progress())
                with self._tracked(candidate, call):
                    try:
                        chunks = []
                        async for chunk in self._read(call, node):
                            outcome.trace.chunk(node, len(chunk.token_ids))
                            chunks.append(chunk)
                        outcome.name = OK
                        return Completed(chunks, node, sorted(exclude))
                    except LlamaherdError as exc:
                        last_error = self._failed(candidate, exc, final=False)
                    except asyncio.CancelledError:
                        reason = self._dropped.get(call)
                        if reason is None:
                            raise  # our own client went away
                        last_error = self._node_left(node, reason, final=False)
                    finally:
                        call.cancel()
                exclude.add(node)
            assert last_error is not None
            raise last_error

    async def unary(
        self,
        request: RouteRequest,
        call: Callable[[WorkerClient], Awaitable[T]],
    ) -> tuple[T, NodeId]:
        """A unary call to a worker chosen for `request`, retried elsewhere on retryable
        errors."""
        exclude: set[NodeId] = set()
        last_error: LlamaherdError | None = None
        with self._traced(request) as outcome:
            self._admit_power(request)
            for _ in range(self.retries + 1):
                candidate = self._choose_or_last(request, exclude, last_error)
                key = (candidate.node_id, candidate.replica.alias)
                outcome.node = candidate.node_id
                self.inflight[key] += 1
                try:
                    result = await call(self.clients.client(candidate.address))
                    outcome.name = OK
                    return result, candidate.node_id
                except LlamaherdError as exc:
                    last_error = self._failed(candidate, exc, final=False)
                finally:
                    self.inflight[key] -= 1
                    if self.inflight[key] <= 0:
                        del self.inflight[key]
                exclude.add(candidate.node_id)
            assert last_error is not None
            raise last_error

    @contextlib.contextmanager
    def _traced(self, request: RouteRequest) -> Iterator[_Outcome]:
        """One relayed request's trace: its outcome is recorded once, however it ends."""
        trace = _UNTRACED if self.traffic is None else self.traffic.begin(request.alias)
        outcome = _Outcome(trace)
        try:
            yield outcome
        except BaseException as exc:
            outcome.failed(exc)
            raise
        finally:
            outcome.record()

    async def _read(self, call: WorkerStream[Chunk], node: NodeId) -> AsyncIterator[Chunk]:
        """The call's chunks; after the first, a silence longer than stall_timeout_s is the
        node's failure. The first is not timed: it waits for the queue and the prefill,
        which grow with load and prompt size; a hung node is caught by its heartbeat."""
        timeout: float | None = None
        while True:
            try:
                chunk = await asyncio.wait_for(anext(call), timeout)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise Unavailable(
                    f"worker {node} sent nothing for {self.stall_timeout_s:g} s"
                ) from None
            timeout = self.stall_timeout_s or None
            yield chunk

    def _failed(self, candidate: Candidate, exc: LlamaherdError, final: bool) -> LlamaherdError:
        """The error to remember after a worker's failure; raises it instead when the
        request must not be sent again: a refusal of the request itself, or a `final`
        failure (a started stream that cannot continue), then as UpstreamFailed."""
        node = candidate.node_id
        if exc.kind in NODE_FAULTS:
            self._suspect(node)
        if exc.kind in PASSED_THROUGH:
            error = exc
        else:
            kind = Unavailable if exc.kind is ErrorKind.UNAVAILABLE else Internal
            error = kind(f"worker {node} failed: {exc.message}")
        if final or exc.kind not in RETRYABLE:
            log.warning("worker %s failed a request: %s", node, exc.message)
            if final:
                raise UpstreamFailed(f"{error.message}; the reply is incomplete") from None
            raise error from None
        log.info("worker %s failed a request, trying another replica: %s", node, exc.message)
        return error

    def _node_left(self, node: NodeId, reason: str, final: bool) -> Unavailable:
        """The error of a call cancelled because its node left the view; raised as
        UpstreamFailed when the request cannot go on elsewhere (`final`)."""
        self._suspect(node)
        if final:
            raise UpstreamFailed(f"{reason}; the reply is incomplete") from None
        return Unavailable(reason)

    def _next(
        self,
        request: RouteRequest,
        exclude: set[NodeId],
        last_error: LlamaherdError | None,
        sent: Progress,
    ) -> Candidate:
        """The next replica for a stream; once it has started, failing to find one ends it
        as incomplete."""
        if not sent.started:
            return self._choose_or_last(request, exclude, last_error)
        try:
            return self.choose(request, exclude)
        except LlamaherdError as exc:
            why = f"no other replica can continue it: {exc.message}"
            raise self._gave_up(last_error, sent, why) from None

    @staticmethod
    def _gave_up(
        last_error: LlamaherdError | None, sent: Progress, why: str = ""
    ) -> LlamaherdError:
        assert last_error is not None
        if not sent.started:
            return last_error
        detail = f"; {why}" if why else ""
        log.warning("stream ended incomplete: %s%s", last_error.message, detail)
        return UpstreamFailed(f"{last_error.message}{detail}; the reply is incomplete")

    def _choose_or_last(
        self, request: RouteRequest, exclude: set[NodeId], last_error: LlamaherdError | None
    ) -> Candidate:
        try:
            return self.choose(request, exclude)
        except LlamaherdError:
            # After a failed attempt, that failure explains more than "no other replica".
            if last_error is not None:
                raise last_error from None
            raise


class _Untraced:
    """The trace of a Router without a recorder: records nothing."""

    def chunk(self, node: str, tokens: int) -> None:
        pass

    def finish(self, outcome: str, node: str = "", model: str | None = None) -> None:
        pass


_UNTRACED = _Untraced()


class _Outcome:
    """How one relayed request ended, recorded once in a `finally`: a request that neither
    returned nor raised an error was left by its client (CancelledError, or GeneratorExit
    when a stream is closed early), which is `cancelled`."""

    __slots__ = ("model", "name", "node", "trace")

    def __init__(self, trace: RequestTrace | _Untraced) -> None:
        self.trace = trace
        self.name = CANCELLED
        self.node = ""  # the node chosen last, "" while none is
        self.model: str | None = None  # the recorded label, when not the request's alias

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, LlamaherdError):
            self.name = exc.kind.value
            if isinstance(exc, ModelNotServed):
                self.model = UNKNOWN_MODEL  # the alias is whatever the client sent
        elif not isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            self.name = ErrorKind.INTERNAL.value  # a fault of the gateway's own

    def record(self) -> None:
        self.trace.finish(self.name, self.node, self.model)


def _add_earlier_usage(final: Chunk, earlier: Progress) -> None:
    """Makes a continuation's usage count the whole reply: its prompt held the original
    prompt plus the `earlier.tokens` generated before (re-tokenized, so the split is close,
    not exact), and those tokens were completion tokens."""
    usage = final.usage
    usage.prompt_tokens = max(usage.prompt_tokens - earlier.tokens, 0)
    usage.completion_tokens += earlier.tokens
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens


def _uncount(addresses: Counter[str], address: str | None) -> None:
    """One node fewer at `address` (None: the node had none), forgotten at none."""
    if address is None:
        return
    addresses[address] -= 1
    if addresses[address] <= 0:
        del addresses[address]
