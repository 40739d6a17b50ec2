"""A userspace TCP proxy that caps the bytes per second, cuts a transfer or flips a byte.

The kernel's `tc netem` is unavailable here, so the tests that need a slow, broken or lying
link put this proxy between a client and a server: it listens, connects to the upstream for
every client, and copies both ways. The server-to-client direction (a file download) is
what it shapes: all connections together get at most `rate` bytes per second (None: no
cap), and `cut_next` / `corrupt_next` arm a one-shot fault on the next connection whose
download reaches the given offset (the connection is reset, or one byte is inverted). It
counts what it relays per connection and notes each HTTP request head the client sent, so a
test can say how many bytes a download really moved and which ranges it asked for.

`redirect` makes a namespaced host's connections to one address go through the proxy
instead (an iptables DNAT rule in that host's namespace), so the code under test keeps the
URL it was given and never knows.

The proxy runs its own asyncio loop on a daemon thread; it is a context manager.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import pytest
from support.netns import Host

CHUNK = 256 * 1024


@dataclass
class Relayed:
    """One client connection and what went through it."""

    client: str  # the client's IP address
    bytes_down: int = 0  # upstream -> client
    bytes_up: int = 0  # client -> upstream
    requests: list[str] = field(default_factory=list)  # "GET /path range=bytes=N-"
    cut: bool = False
    corrupted: bool = False
    _head: bytes = b""


@dataclass
class _Fault:
    at: int  # offset in the connection's download stream
    kind: str  # "cut" or "corrupt"


class _Limiter:
    """A shared schedule: each chunk books len/rate seconds after the previous one."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._free_at = 0.0

    def set_rate(self, rate: float | None) -> None:
        self.rate = rate
        self._free_at = time.monotonic()  # the new rate applies from now, with no backlog

    async def take(self, n: int) -> None:
        rate = self.rate
        if rate is None:
            return
        now = time.monotonic()
        start = max(now, self._free_at)
        self._free_at = start + n / rate
        delay = self._free_at - now
        if delay > 0:
            await asyncio.sleep(delay)


class ThrottleProxy:
    """Listens on `listen` (host, port; port 0 = a free one) and relays to `upstream`."""

    def __init__(
        self, listen: tuple[str, int], upstream: tuple[str, int], rate: float | None = None
    ) -> None:
        self._listen = listen
        self._upstream = upstream
        self._limiter = _Limiter()
        self._limiter.set_rate(rate)
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._relayed: list[Relayed] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    # ---- lifetime ----------------------------------------------------------------------
    def start(self) -> ThrottleProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> ThrottleProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (self._listen[0], self.port)

    # ---- what a test controls ----------------------------------------------------------
    def set_rate(self, rate: float | None) -> None:
        """Bytes per second for all downloads together; None lifts the cap."""
        self._loop.call_soon_threadsafe(self._limiter.set_rate, rate)

    def cut_next(self, after_bytes: int) -> None:
        """The next connection whose download reaches `after_bytes` is reset there."""
        with self._lock:
            self._faults.append(_Fault(after_bytes, "cut"))

    def corrupt_next(self, at_byte: int) -> None:
        """The next connection whose download reaches `at_byte` gets that byte inverted."""
        with self._lock:
            self._faults.append(_Fault(at_byte, "corrupt"))

    def armed(self) -> int:
        """Faults not yet triggered."""
        with self._lock:
            return len(self._faults)

    # ---- what a test reads -------------------------------------------------------------
    def relayed(self) -> list[Relayed]:
        with self._lock:
            return [
                Relayed(r.client, r.bytes_down, r.bytes_up, list(r.requests), r.cut, r.corrupted)
                for r in self._relayed
            ]

    def bytes_down(self, client: str | None = None) -> int:
        return sum(r.bytes_down for r in self.relayed() if client in (None, r.client))

    def requests(self, client: str | None = None) -> list[str]:
        return [q for r in self.relayed() if client in (None, r.client) for q in r.requests]

    def reset_counts(self) -> None:
        with self._lock:
            self._relayed = []

    # ---- the relay ---------------------------------------------------------------------
    async def _serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._accept, self._listen[0], self._listen[1])

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        record = Relayed(client=str(peer[0]) if peer else "?")
        with self._lock:
            self._relayed.append(record)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._upload(reader, up_writer, record),
                self._download(up_reader, writer, up_writer, record),
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _upload(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: Relayed
    ) -> None:
        with suppress(ConnectionError):
            while data := await reader.read(CHUNK):
                with self._lock:
                    record.bytes_up += len(data)
                    _note_requests(record, data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    async def _download(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        record: Relayed,
    ) -> None:
        with suppress(ConnectionError):
            while data := await reader.read(CHUNK):
                await self._limiter.take(len(data))
                data, cut = self._apply_faults(record, data)
                writer.write(data)
                await writer.drain()
                with self._lock:
                    record.bytes_down += len(data)
                if cut:
                    # A dead link, not a clean end: both sides see a reset.
                    writer.transport.abort()
                    upstream.transport.abort()
                    return
            if writer.can_write_eof():
                writer.write_eof()

    def _apply_faults(self, record: Relayed, data: bytes) -> tuple[bytes, bool]:
        start = record.bytes_down
        end = start + len(data)
        with self._lock:
            for fault in list(self._faults):
                if not start <= fault.at < end:
                    continue
                self._faults.remove(fault)
                offset = fault.at - start
                if fault.kind == "cut":
                    record.cut = True
                    return data[:offset], True
                flipped = bytearray(data)
                flipped[offset] ^= 0xFF
                data = bytes(flipped)
                record.corrupted = True
        return data, False


def _note_requests(record: Relayed, data: bytes) -> None:
    """Notes the request heads in what a client sent (GET and HEAD carry no body)."""
    buffer = record._head + data
    while b"\r\n\r\n" in buffer:
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        ranges = [
            ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("range:")
        ]
        method_path = " ".join(lines[0].split(" ")[:2])
        record.requests.append(method_path + (f" range={ranges[0]}" if ranges else ""))
    record._head = buffer[-65536:]


@contextmanager
def redirect(host: Host, target: tuple[str, int], proxy: tuple[str, int]) -> Iterator[None]:
    """While inside: `host`'s TCP connections to `target` go to `proxy` instead (a DNAT rule
    in its namespace's nat OUTPUT chain). Connections already open are not moved."""
    rule = [
        "OUTPUT", "-p", "tcp", "-d", target[0], "--dport", str(target[1]),
        "-j", "DNAT", "--to-destination", f"{proxy[0]}:{proxy[1]}",
    ]  # fmt: skip
    _iptables(host, "-A", *rule)
    try:
        yield
    finally:
        _iptables(host, "-D", *rule, check=False)


def require_iptables() -> None:
    """Skips the test where iptables (for `redirect`) is missing."""
    if shutil.which("iptables") is None:
        pytest.skip("redirecting a host's connections through the proxy needs iptables")


def _iptables(host: Host, *args: str, check: bool = True) -> None:
    command = [*host.exec_prefix(), "iptables", "-w", "-t", "nat", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
