"""Admission: whether a gateway takes a request for a model now, given what each replica holds
and what `llamaherd capacity` measured it can sustain within its SLO.

A pure decision (the clock reading is passed in): when every replica that could serve the
request holds its measured `max_streams` or more, the request is refused at once with an
estimate of when a stream frees (the gateway answers 429 with Retry-After, gRPC
RESOURCE_EXHAUSTED), instead of queueing it and letting latency blow past the SLO. When some
replicas are full and others are not, the full ones are named so the router does not pick
them. A replica never measured has no cap (today's behaviour), so it always admits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.cluster.capacity import CapacityRecord

# Bounds of the Retry-After estimate: a client told 0 would come straight back, and an
# estimate beyond a minute is more likely a stale measurement than a real wait.
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 60


@dataclass(frozen=True)
class ReplicaLoad:
    """One replica that could serve the request: what it holds now, what it was measured to
    sustain (None: never measured) and when the oldest request this gateway relays to it
    started (None: it relays none), on the clock of `admit`'s `now`."""

    node: str
    inflight: int
    capacity: CapacityRecord | None = None
    oldest_started: float | None = None

    @property
    def cap(self) -> int | None:
        """The most streams admitted at once; None: no cap. A node measured at 0 streams
        (not even one met the SLO) still takes one: refusing it all traffic would serve
        no one better."""
        if self.capacity is None:
            return None
        return max(self.capacity.max_streams, 1)

    @property
    def full(self) -> bool:
        cap = self.cap
        return cap is not None and self.inflight >= cap

    def frees_in_s(self, now: float) -> float:
        """About when one of its streams ends: the oldest one's start plus the measured
        time of a request, or, when its start is unknown (other gateways' requests), the
        measured time spread over the streams it holds."""
        assert self.capacity is not None
        e2e = self.capacity.e2e_s
        if self.oldest_started is not None:
            return self.oldest_started + e2e - now
        return e2e / max(self.inflight, 1)


@dataclass(frozen=True)
class Admission:
    """The decision: `admitted`, and the nodes at their measured capacity (`full`), which
    must not be chosen. A refusal carries `retry_after_s` and a `reason` naming the model
    and each replica's capacity."""

    admitted: bool
    full: frozenset[str] = frozenset()
    retry_after_s: int = 0
    reason: str = ""


def admit(model: str, replicas: Sequence[ReplicaLoad], now: float) -> Admission:
    """Admits a request for `model` unless every replica in `replicas` is full. No replicas
    at all admits too: whatever explains that (not loaded, down) is routing's to say."""
    full = [r for r in replicas if r.full]
    names = frozenset(r.node for r in full)
    if not replicas or len(full) < len(replicas):
        return Admission(True, names)
    wait = min(r.frees_in_s(now) for r in full)
    retry = min(max(math.ceil(wait), MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)
    held = ", ".join(_held(r) for r in full)
    reason = f"model {model!r} is at its measured capacity: {held}; retry in about {retry} s"
    return Admission(False, names, retry, reason)


def _held(replica: ReplicaLoad) -> str:
    assert replica.capacity is not None
    return (
        f"{replica.node} holds {replica.inflight} of {replica.cap} streams "
        f"(measured at {replica.capacity.slo})"
    )
