"""A gateway's routing: its view of the cluster, its own in-flight counts, and the relay
that sends a request to a worker and retries it elsewhere while nothing has been streamed.

The view is a ClusterSnapshot pushed from the registry; routing a request reads it and
calls the routing policy, all in this process: no Ray call, no network hop before the
request reaches its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from common.errors import ErrorKind, Internal, LlamaherdError, Unavailable
from orchestrator.cluster.types import ClusterSnapshot, NodeId
from orchestrator.gateway.errors import ModelNotServed, UpstreamFailed
from orchestrator.routing.candidates import Candidate, NoCandidate, UnknownModel, route
from orchestrator.routing.policies import RoutingPolicy
from orchestrator.routing.request import RouteRequest
from orchestrator.worker_client import WorkerClient, WorkerClients, WorkerStream

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M")
Clock = Callable[[], float]

# Worker refusals that say nothing about the request itself: another replica may serve it.
RETRYABLE = {
    ErrorKind.UNAVAILABLE,  # worker gone, or the model is unloading there
    ErrorKind.RESOURCE_EXHAUSTED,  # that replica's queue is full
    ErrorKind.NOT_FOUND,  # unloaded since the view was taken
    ErrorKind.FAILED_PRECONDITION,  # failed there
}
# Refusals of the request itself, passed to the client as the worker worded them; any other
# failure (e.g. the worker refusing the gateway itself) is the worker's, named after it.
PASSED_THROUGH = {
    ErrorKind.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND,
    ErrorKind.FAILED_PRECONDITION,
    ErrorKind.RESOURCE_EXHAUSTED,
}
SUSPECT_S = 2.0  # how long a worker that just failed a call is avoided


class Router:
    def __init__(
        self,
        policy: RoutingPolicy,
        clients: WorkerClients,
        retries: int,
        clock: Clock = time.monotonic,
    ) -> None:
        self.policy = policy
        self.clients = clients
        self.retries = retries
        self._clock = clock
        self.snapshot = ClusterSnapshot()
        self._snapshot_at = clock()
        self.inflight: Counter[tuple[NodeId, str]] = Counter()
        self._suspects: dict[NodeId, float] = {}
        # Running calls per node, so a node that leaves the view fails its streams at once.
        self._calls: dict[NodeId, set[WorkerStream[Any]]] = {}
        self._dropped: dict[WorkerStream[Any], str] = {}

    # ---- the view ----------------------------------------------------------------------
    def update(self, snapshot: ClusterSnapshot) -> None:
        was_up = {n.node_id for n in self.snapshot.nodes if n.up}
        self.snapshot = snapshot
        self._snapshot_at = self._clock()
        for node in snapshot.nodes:
            if node.node_id in was_up and not node.up:
                self._fail_calls(node.node_id, f"worker {node.node_id} left: {node.down_reason}")

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
            raise Unavailable(str(exc)) from None

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
        try:
            yield
        finally:
            self.inflight[key] -= 1
            if self.inflight[key] <= 0:
                del self.inflight[key]
            self._calls[candidate.node_id].discard(call)
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
        open_call: Callable[[WorkerClient], WorkerStream[M]],
    ) -> AsyncGenerator[tuple[NodeId, M], None]:
        """Relays a server-streaming call from a worker chosen for `request`, yielding each
        message with the node that produced it.

        Until the first message arrives, a retryable failure moves the request to another
        replica (at most `retries` times); after it, a failure ends the stream with
        UpstreamFailed, since the client already holds part of an answer.
        """
        exclude: set[NodeId] = set()
        last_error: LlamaherdError | None = None
        for _ in range(self.retries + 1):
            candidate = self._choose_or_last(request, exclude, last_error)
            call = open_call(self.clients.client(candidate.address))
            streamed = False
            with self._tracked(candidate, call):
                try:
                    async for message in call:
                        streamed = True
                        yield candidate.node_id, message
                    return
                except LlamaherdError as exc:
                    error = self._upstream_error(candidate, exc, streamed)
                    if streamed or exc.kind not in RETRYABLE:
                        raise error from None
                    last_error = error
                except asyncio.CancelledError:
                    reason = self._dropped.get(call)
                    if reason is None:
                        raise  # our own client went away
                    if streamed:
                        raise UpstreamFailed(f"{reason}; the reply is incomplete") from None
                    last_error = Unavailable(reason)
                finally:
                    call.cancel()
            exclude.add(candidate.node_id)
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
        for _ in range(self.retries + 1):
            candidate = self._choose_or_last(request, exclude, last_error)
            key = (candidate.node_id, candidate.replica.alias)
            self.inflight[key] += 1
            try:
                return await call(self.clients.client(candidate.address)), candidate.node_id
            except LlamaherdError as exc:
                error = self._upstream_error(candidate, exc, streamed=False)
                if exc.kind not in RETRYABLE:
                    raise error from None
                last_error = error
            finally:
                self.inflight[key] -= 1
                if self.inflight[key] <= 0:
                    del self.inflight[key]
            exclude.add(candidate.node_id)
        assert last_error is not None
        raise last_error

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

    def _upstream_error(
        self, candidate: Candidate, exc: LlamaherdError, streamed: bool
    ) -> LlamaherdError:
        """A worker's error as the client's, attributed to the node when it is the node's."""
        node = candidate.node_id
        if exc.kind is ErrorKind.UNAVAILABLE:
            self._suspect(node)
        if streamed:
            log.warning("worker %s failed mid-stream: %s", node, exc.message)
            return UpstreamFailed(
                f"worker {node} failed while streaming ({exc.kind.name}: {exc.message}); "
                "the reply is incomplete"
            )
        if exc.kind in PASSED_THROUGH:
            return exc
        kind = Unavailable if exc.kind is ErrorKind.UNAVAILABLE else Internal
        return kind(f"worker {node} failed: {exc.message}")
