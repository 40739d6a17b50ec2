"""A TCP forwarder that admits only the planned head, in front of ggml's RPC server.

The fallback guard (worker.split.rpc_server), where the kernel socket filter cannot be
used: ggml's RPC server authenticates nobody and serves whoever connects, and it has had
memory safety advisories; it listens on loopback only and this forwarder, on the node's
cluster address, is the way in. A connection from any other address is closed at once,
unread. Every byte of the head's traffic crosses two threads here, hence the fallback.

A connection that closes before sending anything (the TCP liveness probe of heads before
the UDP one) is answered by the accept alone and never reaches ggml, which serves one
client at a time.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

CHUNK = 1 << 20
UPSTREAM_CONNECT_S = 10.0  # ggml's server may still be starting when the head arrives


class PeerFilter:
    def __init__(
        self,
        listener: socket.socket,
        upstream: tuple[str, int],
        allowed: frozenset[str],
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self._listener = listener
        self._upstream = upstream
        self._allowed = allowed
        self._on_refused = on_refused
        self._refused_logged: set[str] = set()

    def serve_forever(self) -> None:
        while True:
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return  # the listener was closed: shutting down
            host = _unmapped(peer[0])
            if host not in self._allowed:
                self._refuse(conn, host)
                continue
            threading.Thread(
                target=self._forward, args=(conn, host), name=f"rpc-from-{host}", daemon=True
            ).start()

    def _refuse(self, conn: socket.socket, host: str) -> None:
        # Reset rather than close: the peer learns at once that it is not welcome.
        with contextlib.suppress(OSError):
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        conn.close()
        if host not in self._refused_logged:
            self._refused_logged.add(host)
            log.warning(
                "refused a ggml RPC connection from %s: only %s may connect",
                host, ", ".join(sorted(self._allowed)),
            )  # fmt: skip
        if self._on_refused is not None:
            self._on_refused(host)

    def _forward(self, client: socket.socket, host: str) -> None:
        with client:
            first = _recv(client)
            if not first:
                return  # a probe
            upstream = _connect(self._upstream)
            if upstream is None:
                log.error("ggml RPC server at %s:%d is not answering", *self._upstream)
                return
            with upstream:
                _no_delay(client)
                _no_delay(upstream)
                upstream.sendall(first)
                back = threading.Thread(
                    target=_pump, args=(upstream, client), name=f"rpc-to-{host}", daemon=True
                )
                back.start()
                _pump(client, upstream)
                back.join()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copies until either side closes, then closes both ways so the other pump ends too."""
    try:
        while data := _recv(src):
            dst.sendall(data)
    except OSError:
        pass
    for sock in (src, dst):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(CHUNK)
    except OSError:
        return b""


def _connect(address: tuple[str, int]) -> socket.socket | None:
    deadline = time.monotonic() + UPSTREAM_CONNECT_S
    while True:
        try:
            return socket.create_connection(address, timeout=2.0)
        except OSError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


def _no_delay(sock: socket.socket) -> None:
    # ggml's protocol is many small request/response pairs: Nagle would add tens of
    # milliseconds to each, as ggml's own sockets know (they set TCP_NODELAY too).
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _unmapped(host: str) -> str:
    """'::ffff:10.0.0.1' as '10.0.0.1', so IPv4 allow entries match on dual-stack sockets."""
    return host.removeprefix("::ffff:")
