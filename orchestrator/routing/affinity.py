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
