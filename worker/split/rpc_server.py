"""Child process that lends this node's device to one head: `python -m worker.split.rpc_server`.

Started and stopped by the worker (worker.split.lender), never by hand. Two guards admit
the head only, chosen by `--guard`:

- `bpf` (chosen by `auto` where it works): ggml's RPC server listens on the cluster address
  itself, and a kernel socket filter on its listener (worker.split.bpf_guard) passes only
  the head's packets; nothing in userspace sits on the data path.
- `forwarder` (the fallback, or forced): ggml listens on loopback and the peer filter
  (worker.split.peer_filter) on the cluster address forwards the head's bytes to it.

Either way the head's liveness probes are UDP datagrams to the same port number, echoed by
this process: they never reach ggml, which serves one connection at a time and would queue
a probe behind the head's own connection. When ready it writes one JSON line,
{"endpoint", "device", "guard", ...}, to the file descriptor given by --ready-fd.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from common.net import join_host_port
from worker.split import bpf_guard
from worker.split.lifetime import die_with_parent

if TYPE_CHECKING:
    from worker.llamacpp.rpc import Device

log = logging.getLogger("worker.split.rpc_server")

GUARDS = ("auto", "forwarder")
LISTEN_TIMEOUT_S = 30.0  # ggml initialises the device before it listens (CUDA: seconds)
PORT_TRIES = 3  # a free port can be taken by another process before ggml binds it
DROPS_LOG_INTERVAL_S = 60.0
PROBE_MAX_BYTES = 64


class StartError(Exception):
    """The server could not start safely; the message says why (the worker logs it)."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.split.rpc_server", description=__doc__)
    parser.add_argument("--listen", required=True, help="HOST:PORT for the head; port 0 = any")
    parser.add_argument("--allow", action="append", required=True, help="head IP; repeatable")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--guard", choices=GUARDS, default="auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="rpc-server: %(levelname)s %(message)s")
    # ggml prints a banner and a line per connection to C stdout (the head opens several
    # while loading); the worker's log gets the filters' refusals and ggml's errors instead.
    # The lines go to a pipe, not /dev/null: "Accepted client connection" before the
    # kernel filter is on means someone reached ggml unfiltered.
    ggml_out = _capture_stdout()
    from worker.llamacpp import ensure_backend, rpc

    ensure_backend()
    host, _, port = args.listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    allowed = frozenset(args.allow)
    device = rpc.lendable_device()
    why_not = "forced by the worker's rpc_guard setting"
    if args.guard == "auto":
        why_not = bpf_guard.usable(host, allowed)
    try:
        if not why_not:
            probes, serve = _behind_filter(host, int(port), allowed, device, args.threads, ggml_out)
            guard = "bpf"
        else:
            log.info("ggml RPC guard: the forwarder (no kernel filter: %s)", why_not)
            _start_draining(ggml_out)
            probes, serve = _behind_forwarder(host, int(port), allowed, device, args.threads)
            guard = "forwarder"
    except StartError as error:
        log.error("%s", error)
        return 1
    ready = {
        "endpoint": join_host_port(host, probes.getsockname()[1]),
        "device": device.name,
        "memory_free": device.memory_free,
        "memory_total": device.memory_total,
        "guard": guard,
    }
    with os.fdopen(args.ready_fd, "w") as out:
        out.write(json.dumps(ready) + "\n")
    serve()
    return 0


# ---- the kernel filter ---------------------------------------------------------------
def _behind_filter(
    host: str, port: int, allowed: frozenset[str], device: Device, threads: int, ggml_out: int
) -> tuple[socket.socket, Callable[[], None]]:
    """ggml on host:port with the filter on its listener; returns the probe socket and the
    loop to run (probe echoes, and a log line when the filter has refused packets)."""
    from worker.llamacpp import rpc

    listener: socket.socket | None = None
    for _ in range(PORT_TRIES):
        probes = _udp_socket(host, port)
        chosen = probes.getsockname()[1]
        ggml = threading.Thread(
            target=rpc.serve,
            args=(join_host_port(host, chosen), device, threads),
            name="ggml-rpc",
            daemon=True,
        )
        ggml.start()
        listener = bpf_guard.find_listener(host, chosen, LISTEN_TIMEOUT_S, ggml.is_alive)
        if listener is not None:
            break
        probes.close()
        if port or ggml.is_alive():  # a port given, or a server that is stuck: give up
            break
        # ggml could not bind the port (another process took it meanwhile): another one
    if listener is None:
        raise StartError(f"ggml's RPC server did not listen on {host}:{port or 'any port'}")
    bpf_guard.attach(listener, bpf_guard.program_for(allowed))
    _refuse_early_connections(chosen, ggml_out)
    _start_draining(ggml_out)
    head = ", ".join(sorted(allowed))

    def serve() -> None:
        dropped, logged_at = 0, -DROPS_LOG_INTERVAL_S
        for _ in _echo_probes(probes, allowed):
            now = time.monotonic()
            if now - logged_at < DROPS_LOG_INTERVAL_S:
                continue
            total = bpf_guard.dropped_packets(listener)
            if total > dropped:
                log.warning(
                    "the kernel filter refused %d packets at ggml's RPC port %d since the "
                    "last report: only %s may connect (the filter cannot name the senders)",
                    total - dropped, chosen, head,
                )  # fmt: skip
                dropped, logged_at = total, now

    log.info("ggml RPC guard: a kernel socket filter admitting %s only", head)
    return probes, serve


def _refuse_early_connections(port: int, ggml_out: int) -> None:
    """Fails the start if anyone reached ggml's port before the filter was on: they would
    hold an unfiltered connection. The port is not announced yet, so it cannot be the head.

    Every connection that reached the port is either still in the kernel's table (a
    half-open handshake, queued, being served, or in TIME_WAIT) or has been accepted and
    closed already, and ggml prints "Accepted client connection" before it serves one:
    the table is read first, so a connection that closes in between has printed its line."""
    early = bpf_guard.early_connections(Path("/proc/net/tcp").read_text(), port)
    printed = b""
    with contextlib.suppress(BlockingIOError):
        printed = os.read(ggml_out, 1 << 16)
    if early or b"Accepted client connection" in printed:
        raise StartError(
            f"{', '.join(early) or 'a peer'} reached port {port} before its filter was on; "
            "not lending it (the head would share ggml with an unfiltered connection)"
        )


# ---- the forwarder -------------------------------------------------------------------
def _behind_forwarder(
    host: str, port: int, allowed: frozenset[str], device: Device, threads: int
) -> tuple[socket.socket, Callable[[], None]]:
    from worker.llamacpp import rpc
    from worker.split.peer_filter import PeerFilter

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, port))
    listener.listen(8)
    probes = _udp_socket(host, listener.getsockname()[1])
    inner = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    inner.bind(("127.0.0.1", 0))
    inner_port = inner.getsockname()[1]
    inner.close()  # ggml binds it itself; a port freed a moment ago is free in practice
    threading.Thread(
        target=rpc.serve,
        args=(f"127.0.0.1:{inner_port}", device, threads),
        name="ggml-rpc",
        daemon=True,
    ).start()
    threading.Thread(
        target=lambda: all(True for _ in _echo_probes(probes, allowed)),
        name="rpc-probes",
        daemon=True,
    ).start()
    forwarder = PeerFilter(listener, ("127.0.0.1", inner_port), allowed)
    return probes, forwarder.serve_forever


# ---- probes and plumbing -------------------------------------------------------------
def _udp_socket(host: str, port: int) -> socket.socket:
    """The probe socket: UDP on the port number the head connects to (any free one for 0;
    ggml then binds the same number for TCP)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise StartError(f"cannot listen for the head's probes on {host}:{port}: {error}") from None
    sock.settimeout(1.0)
    return sock


def _echo_probes(sock: socket.socket, allowed: frozenset[str]) -> Iterator[None]:
    """Echoes the head's probe datagrams (anyone else's are ignored); yields about once a
    second, idle or not, so the caller can do periodic work."""
    while True:
        try:
            data, peer = sock.recvfrom(PROBE_MAX_BYTES)
        except TimeoutError:
            yield None
            continue
        except OSError:
            return  # closed: shutting down
        if peer[0].removeprefix("::ffff:") in allowed:
            with contextlib.suppress(OSError):
                sock.sendto(data, peer)
        yield None


def _capture_stdout() -> int:
    """Points C stdout (fd 1) at a pipe; returns its non-blocking read end."""
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.close(write_end)
    os.set_blocking(read_end, False)
    return read_end


def _start_draining(fd: int) -> None:
    """Reads and discards ggml's stdout from now on, so its prints never block on a full
    pipe."""

    def drain() -> None:
        os.set_blocking(fd, True)
        while os.read(fd, 1 << 16):
            pass

    threading.Thread(target=drain, name="ggml-stdout", daemon=True).start()


if __name__ == "__main__":
    # ggml's server thread never returns: exit without waiting for it.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    sys.exit(main())
