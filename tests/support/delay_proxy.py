"""A userspace TCP proxy that adds a fixed one-way delay to every byte, both ways.

The kernel's `tc netem` is unavailable here, so the benchmarks that ask how a split behaves
over a slower link (a switch, Wi-Fi) put this proxy between the head and its helpers. Each
chunk is stamped when it arrives and forwarded at arrival + delay, in order, so the proxy
adds latency without capping throughput (a bulk transfer is only shifted by the delay).
TCP_NODELAY is set on both sides so that small RPC messages leave at once instead of being
coalesced (Nagle would add its own, unrelated delay).

The relay uses blocking sockets and threads, not asyncio: a thread's `time.sleep` wakes
within tens of microseconds, while asyncio's selector rounds its timeouts to a millisecond,
which is the size of the delays being measured.

Two ways to use it:
- `DelayProxy(listen, upstream, delay_s)`: clients connect to `listen`, the proxy connects
  to `upstream`.
- `DelayProxy(listen, None, delay_s, netns=host.name)` with `intercept(host, target,
  proxy)`: transparent. The proxy runs inside `host`'s namespace, an iptables DNAT rule
  there sends `host`'s TCP connections to `target` (an address, optionally one port) to the
  proxy, and the proxy connects to each connection's original destination
  (SO_ORIGINAL_DST), marking its own sockets so the rule lets them pass. The peer sees the
  connection come from `host`'s own address, so a guard that admits only that host (the
  split helper's kernel socket filter) still admits it.

`set_delay` changes the delay of everything that arrives from then on; `rtt` measures a
round trip through the proxy against any echo server (`EchoServer` is one). `observe`, when
given, sees every chunk as it arrives (the connection, True for client -> upstream, the
bytes), on the connection's reader thread: a benchmark can parse a protocol with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from support.netns import Host
from support.throttle_proxy import _iptables

CHUNK = 256 * 1024
MARK = 0x4C48  # "LH": the proxy's own upstream sockets carry it; `intercept` lets them pass
_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
_CLONE_NEWNET = 0x40000000


@dataclass
class Relayed:
    """One client connection and what went through it."""

    client: str
    upstream: tuple[str, int]
    # Counted on arrival, so a side that has had its data back finds it counted.
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client
    # Replies: upstream data arriving after client data. A request/response protocol's
    # synchronous round trips; messages that need no reply add none.
    turns: int = 0
    _last_up: bool = False


class DelayProxy:
    """Listens on `listen` (host, port; port 0 = a free one) and relays to `upstream`
    (None: each connection's original destination, for `intercept`) with `delay_s` added
    each way. With `netns`, its sockets live in that network namespace."""

    def __init__(
        self,
        listen: tuple[str, int],
        upstream: tuple[str, int] | None,
        delay_s: float = 0.0,
        netns: str | None = None,
        observe: Callable[[Relayed, bool, bytes], None] | None = None,
    ) -> None:
        self._listen = listen
        self._observe = observe
        self._upstream = upstream
        self._netns = netns
        self._delay_s = delay_s
        self._lock = threading.Lock()
        self._relayed: list[Relayed] = []
        self._sockets: set[socket.socket] = set()
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.port = 0

    # ---- lifetime ----------------------------------------------------------------------
    def start(self) -> DelayProxy:
        ready: queue.SimpleQueue[socket.socket | BaseException] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        server = ready.get(timeout=10)
        if isinstance(server, BaseException):
            raise server
        self._server = server
        self.port = int(server.getsockname()[1])
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            # shutdown wakes the blocked accept(); close alone does not on Linux.
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        with self._lock:
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (self._listen[0], self.port)

    # ---- what a caller controls and reads ----------------------------------------------
    @property
    def delay_s(self) -> float:
        return self._delay_s

    def set_delay(self, delay_s: float) -> None:
        """The one-way delay for every chunk that arrives from now on."""
        if delay_s < 0:
            raise ValueError(f"delay must be >= 0, not {delay_s}")
        self._delay_s = delay_s

    def relayed(self) -> list[Relayed]:
        with self._lock:
            return [
                Relayed(r.client, r.upstream, r.bytes_up, r.bytes_down, r.turns)
                for r in self._relayed
            ]

    # ---- the relay ---------------------------------------------------------------------
    def _serve(self, ready: queue.SimpleQueue[socket.socket | BaseException]) -> None:
        try:
            if self._netns is not None:
                enter_netns(self._netns)  # this thread only; its sockets live there
            server = socket.create_server(self._listen, backlog=64)
        except BaseException as error:  # handed to start(), which raises it
            ready.put(error)
            return
        ready.put(server)
        while not self._stopping.is_set():
            try:
                client, peer = server.accept()
            except OSError:
                return  # stop() closed the listener
            try:
                upstream_address = self._upstream or original_destination(client)
                upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                upstream.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
                upstream.settimeout(10)
                upstream.connect(upstream_address)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            record = Relayed(str(peer[0]), upstream_address)
            with self._lock:
                self._relayed.append(record)
                self._sockets.update((client, upstream))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pipe(client, upstream, record, up=True)
            self._pipe(upstream, client, record, up=False)

    def _pipe(self, source: socket.socket, sink: socket.socket, record: Relayed, up: bool) -> None:
        """One direction: a reader stamps each chunk, a writer sends it when it is due."""
        chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
        count = "bytes_up" if up else "bytes_down"

        def read() -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(CHUNK):
                    arrived = time.monotonic()
                    # Noted before the chunk can be sent on, so its reply finds it noted.
                    with self._lock:
                        if not up and record._last_up:
                            record.turns += 1
                        record._last_up = up
                        setattr(record, count, getattr(record, count) + len(data))
                    if self._observe is not None:
                        self._observe(record, up, data)
                    chunks.put((arrived + self._delay_s, data))
            chunks.put((0.0, b""))  # the end, in order after every chunk

        def write() -> None:
            try:
                while True:
                    due, data = chunks.get()
                    if not data:
                        sink.shutdown(socket.SHUT_WR)  # the peer's end reaches the far side
                        return
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    sink.sendall(data)
            except OSError:
                # The far side is gone: tear the connection down both ways.
                for sock in (source, sink):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()


def original_destination(client: socket.socket) -> tuple[str, int]:
    """Where a DNATed connection was going before the rule sent it here."""
    raw = client.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), int(port)


def enter_netns(name: str) -> None:
    """Moves the calling thread (only it: network namespaces are per thread) into the
    namespace `ip netns add` made; the sockets it opens from then on live there."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


@contextmanager
def intercept(
    host: Host, target: str, proxy: tuple[str, int], port: int | None = None
) -> Iterator[None]:
    """While inside: `host`'s TCP connections to `target` (to `port` only, when given) go
    to `proxy`, a transparent DelayProxy running in `host`'s namespace, except the proxy's
    own (marked) connections. Connections already open are not moved."""
    rule = ["OUTPUT", "-p", "tcp", "-d", target]
    if port is not None:
        rule += ["--dport", str(port)]
    rule += ["-m", "mark", "!", "--mark", str(MARK),
             "-j", "DNAT", "--to-destination", f"{proxy[0]}:{proxy[1]}"]  # fmt: skip
    _iptables(host, "-A", *rule)
    try:
        yield
    finally:
        _iptables(host, "-D", *rule, check=False)


class EchoServer:
    """Sends back whatever it receives, per connection; for measuring round trips. With
    `netns`, it listens in that namespace."""

    def __init__(self, listen: tuple[str, int], netns: str | None = None) -> None:
        self._listen = listen
        self._netns = netns
        self._server: socket.socket | None = None
        self._clients: list[socket.socket] = []
        self.port = 0

    def __enter__(self) -> EchoServer:
        ready: queue.SimpleQueue[socket.socket | BaseException] = queue.SimpleQueue()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        server = ready.get(timeout=10)
        if isinstance(server, BaseException):
            raise server
        self._server = server
        self.port = int(server.getsockname()[1])
        return self

    def __exit__(self, *_: object) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        for client in self._clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

    @property
    def address(self) -> tuple[str, int]:
        return (self._listen[0], self.port)

    def _serve(self, ready: queue.SimpleQueue[socket.socket | BaseException]) -> None:
        try:
            if self._netns is not None:
                enter_netns(self._netns)
            server = socket.create_server(self._listen, backlog=64)
        except BaseException as error:
            ready.put(error)
            return
        ready.put(server)
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._clients.append(client)
            threading.Thread(target=_echo, args=(client,), daemon=True).start()


def _echo(client: socket.socket) -> None:
    with contextlib.suppress(OSError), client:
        while data := client.recv(CHUNK):
            client.sendall(data)


def rtt(address: tuple[str, int], n: int = 50, size: int = 64, netns: str | None = None) -> float:
    """The median round trip (seconds) of `size`-byte messages to an echo server at
    `address` over one TCP connection, like an RPC request and its reply. With `netns`,
    the measuring connection starts in that namespace."""
    result: queue.SimpleQueue[float | BaseException] = queue.SimpleQueue()

    def measure() -> None:
        try:
            if netns is not None:
                enter_netns(netns)
            times = []
            with socket.create_connection(address, timeout=10) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                message = b"x" * size
                for _ in range(n):
                    started = time.perf_counter()
                    sock.sendall(message)
                    got = 0
                    while got < size:
                        chunk = sock.recv(size - got)
                        if not chunk:
                            raise ConnectionError("the echo server closed the connection")
                        got += len(chunk)
                    times.append(time.perf_counter() - started)
            result.put(statistics.median(times))
        except BaseException as error:  # handed to the caller, which raises it
            result.put(error)

    # A thread of its own, so entering the namespace never moves the caller's thread.
    thread = threading.Thread(target=measure, daemon=True)
    thread.start()
    value = result.get(timeout=60 + n * 1.0)
    thread.join()
    if isinstance(value, BaseException):
        raise value
    return value
