"""Session affinity: which node served a conversation last, and a stable tie-break for it.

Two pieces, both bounded and pure apart from the memory's own state:

- SessionMemory: the node that served each (model, session key) last, in a bounded LRU map
  (DEFAULT_CAPACITY sessions; the least recently routed one is forgotten first). It follows
  where a session's KV cache really is: when a node was overloaded and the session moved,
  the next turn goes to the new node, which now holds the conversation.
- rendezvous(): highest-random-weight hashing of a session key over node ids. Where the
  memory knows nothing (a new session, a restarted gateway, another gateway), it picks among
  equally good nodes the same one on every gateway and in every process, and when a node
  leaves only the sessions that hashed to it move.

Why a memory and not hashing alone: hashing sends a session back to its hashed node after
an overload moved it away, to a node that no longer holds its latest turns; the memory
returns it to the node that does. Hashing is kept for the first choice, where it costs
nothing (it only breaks ties) and lets gateways agree without sharing state.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable

DEFAULT_CAPACITY = 10_000  # sessions remembered per policy object (~1-2 MB at most)


class SessionMemory:
    """The node that served each (alias, session) last; at most `capacity` sessions."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"session memory capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._nodes: OrderedDict[tuple[str, str], str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._nodes)

    def last(self, alias: str, session: str) -> str | None:
        """The node that served `session` for `alias` last, or None when not remembered."""
        return self._nodes.get((alias, session))

    def remember(self, alias: str, session: str, node_id: str) -> None:
        """`node_id` served `session` for `alias` now: it becomes the most recent entry."""
        key = (alias, session)
        self._nodes[key] = node_id
        self._nodes.move_to_end(key)
        if len(self._nodes) > self._capacity:
            self._nodes.popitem(last=False)


def rendezvous(session: str, node_ids: Iterable[str]) -> str:
    """The node among `node_ids` (not empty) with the highest hash weight for `session`:
    the same answer in every process (blake2b, not Python's salted hash())."""
    return max(node_ids, key=lambda node_id: (_weight(session, node_id), node_id))


def _weight(session: str, node_id: str) -> bytes:
    # The separator keeps ("ab", "c") and ("a", "bc") apart.
    data = f"{session}\x1f{node_id}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=8).digest()


# How long a prefix this gateway routed to a node counts as held there without the node's
# own report: a heartbeat and a snapshot publication (about 1 s each at most) with room.
ROUTED_TTL_S = 5.0
# Chains remembered per (alias, node): a node's slots hold few conversations at a time.
ROUTED_PER_NODE = 8
DEFAULT_ROUTED_NODES = 65_536  # (alias, node) pairs remembered, least recently routed first out


class RoutedPrefixes:
    """The prefix chains this gateway sent to each node in the last `ttl_s` seconds.

    A request's next turn often arrives before the node's next heartbeat reports the slot
    that now holds the conversation; until then the gateway knows better than the report
    where that prefix is, because it sent it there. Bounded: ROUTED_PER_NODE chains per
    (alias, node), `capacity` pairs. Times come from the caller's clock (pure: no clock of
    its own)."""

    def __init__(self, ttl_s: float = ROUTED_TTL_S, capacity: int = DEFAULT_ROUTED_NODES) -> None:
        if capacity < 1:
            raise ValueError(f"routed prefix capacity must be at least 1, got {capacity}")
        self._ttl_s = ttl_s
        self._capacity = capacity
        self._routed: OrderedDict[tuple[str, str], list[tuple[float, frozenset[int]]]] = (
            OrderedDict()
        )

    def record(self, alias: str, node_id: str, chain: Iterable[int], now: float) -> None:
        """A request whose prefix chain is `chain` was sent to `node_id` at `now`."""
        hashes = frozenset(chain)
        if not hashes:
            return
        key = (alias, node_id)
        recent = [(at, held) for at, held in self._routed.get(key, ()) if now - at < self._ttl_s]
        recent.append((now, hashes))
        self._routed[key] = recent[-ROUTED_PER_NODE:]
        self._routed.move_to_end(key)
        if len(self._routed) > self._capacity:
            self._routed.popitem(last=False)

    def recent(self, alias: str, node_id: str, now: float) -> list[frozenset[int]]:
        """The hash sets of the chains sent to `node_id` for `alias` within the TTL."""
        return [
            held for at, held in self._routed.get((alias, node_id), ()) if now - at < self._ttl_s
        ]
